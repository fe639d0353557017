//! Binding Celery's `args` and `kwargs` to typed parameters.
