//! What the interop tests that run a real Python Celery worker share.

pub mod proxy;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

/// `python-fixtures/`: the Celery apps `pyinterop` and `pytasks`.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../python-fixtures");

/// The Python environment's `bin/`: `CELERIAC_PYTHON_BIN_DIR`, else `<repo>/.venv/bin`.
pub fn python_bin_dir() -> PathBuf {
    std::env::var_os("CELERIAC_PYTHON_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin")))
}

/// A `celery -A <app> worker -P threads` subprocess; killed (and reaped) when dropped, so a
/// failing or panicking test never leaves it running.
pub struct PythonWorker {
    child: Child,
    log_path: PathBuf,
    node: String,
}

impl PythonWorker {
    /// Start `app`'s worker on `queue` with `concurrency` threads; broker and backend are
    /// passed as `CELERY_BROKER_URL` / `CELERY_RESULT_BACKEND`. The venv missing fails.
    pub fn start(
        app: &str,
        queue: &str,
        broker: &str,
        backend: &str,
        concurrency: u32,
    ) -> PythonWorker {
        let celery = python_bin_dir().join("celery");
        assert!(
            celery.exists(),
            "the Python venv is required: {} is missing (scripts/test.sh makes <repo>/.venv, \
             or set CELERIAC_PYTHON_BIN_DIR)",
            celery.display()
        );
        let log_path = std::env::temp_dir().join(format!(
            "celeriac-{app}-worker-{}-{}.log",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let node = format!("{app}-{}@celeriac", uuid::Uuid::new_v4().simple());
        let log = File::create(&log_path).expect("create the worker log file");
        let log_err = log.try_clone().expect("clone the worker log handle");
        let child = Command::new(&celery)
            .args([
                "-A",
                app,
                "worker",
                "-P",
                "threads",
                "-c",
                &concurrency.to_string(),
                "-l",
                "info",
            ])
            // Mingle, gossip and heartbeats would only add traffic the tests do not need.
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["-Q", queue])
            .args(["-n", &node])
            .current_dir(FIXTURES)
            .env("PYTHONPATH", FIXTURES)
            .env("CELERY_BROKER_URL", broker)
            .env("CELERY_RESULT_BACKEND", backend)
            // Options of other suites must not leak in from the environment.
            .env_remove("PYINTEROP_ACKS_LATE")
            .env_remove("PYINTEROP_VISIBILITY_TIMEOUT")
            .env_remove("PYINTEROP_QUEUE_BINDINGS")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Celery worker {}: {e}", celery.display()));
        PythonWorker {
            child,
            log_path,
            node,
        }
    }

    /// The worker's node name (`-n`): `<app>-<uuid>@celeriac`, what it answers pings with.
    #[allow(dead_code)]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The exit status when the worker has stopped.
    #[allow(dead_code)]
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of the worker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("<no log: {e}>"));
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        format!(
            "--- last lines of {} ---\n{}",
            self.log_path.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        // SIGKILL: nothing of the worker's state matters after the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `celeriac` command-line program of this workspace, built on first use with the
/// cargo that runs the tests (`cargo build -p celeriac --bin celeriac`, same target
/// directory), so it is never stale. A failed build fails the test.
#[allow(dead_code)]
pub fn celeriac_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = Command::new(cargo)
            .args([
                "build",
                "-p",
                "celeriac",
                "--bin",
                "celeriac",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build for the celeriac binary");
        assert!(out.status.success(), "cargo build --bin celeriac failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "celeriac")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no celeriac executable")
    })
    .clone()
}
