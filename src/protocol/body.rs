//! The v2 body `[args, kwargs, embed]` and the v1 body dict.
