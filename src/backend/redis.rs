//! Celery's Redis result backend.
