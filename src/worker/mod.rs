//! The worker: consume, run the pipeline, shut down gracefully.
