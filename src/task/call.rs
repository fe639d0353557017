//! Running a task: spawn (async) or spawn_blocking (plain fn), panics caught.
