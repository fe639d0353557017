//! Broker URLs.
