//! Helpers for the interop tests.
