//! The in-process result backend.
