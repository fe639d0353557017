"""Fixtures of the interop suite: a real worker process, a real Redis, a real Celery client.

The worker under test is chosen by ``INTEROP_WORKER``:

- ``rust`` (default): the ``interop-worker`` binary (``INTEROP_WORKER_BIN``, else
  ``target/release/interop-worker``, else ``target/debug/interop-worker``), driven with
  the flags of shared INTEROP.md;
- ``python``: the Celery stand-in ``python-fixtures/pyinterop.py`` run by
  ``celery -A pyinterop worker -P threads``, the same flags mapped to Celery's options.

Tests marked ``rust_only`` check behaviour only the Rust worker promises; they are
deselected automatically against the stand-in and run by default.

Each test module picks its own Redis database (module attribute ``DB``, 10-15), which
is flushed before use, so modules never see each other's queues or results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "python-fixtures"
REDIS_HOST = os.environ.get("INTEROP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("INTEROP_REDIS_PORT", "6379"))
WORKER_KIND = os.environ.get("INTEROP_WORKER", "rust").strip().lower()

# Generous on purpose: a loaded 2-core CI machine may be building Rust at the same time.
READY_DEADLINE = 90.0
RESULT_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

if WORKER_KIND not in ("rust", "python"):
    raise pytest.UsageError(f"INTEROP_WORKER must be 'rust' or 'python', not {WORKER_KIND!r}")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rust_only: behaviour only the Rust interop worker promises "
        "(deselected when INTEROP_WORKER=python)")


def pytest_collection_modifyitems(config, items):
    if WORKER_KIND != "python":
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("rust_only") else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config):
    return f"interop worker under test: {WORKER_KIND} ({' '.join(map(str, worker_base_command(WORKER_KIND)))})"


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def rust_worker_binary() -> Path:
    """Where the Rust worker is; a missing binary fails loudly, it is never skipped."""
    explicit = os.environ.get("INTEROP_WORKER_BIN")
    if explicit:
        return Path(explicit)
    for profile in ("release", "debug"):
        candidate = REPO / "target" / profile / "interop-worker"
        if candidate.exists():
            return candidate
    return REPO / "target" / "release" / "interop-worker"


def worker_base_command(kind: str) -> list:
    if kind == "rust":
        return [rust_worker_binary()]
    return [sys.executable, "-m", "celery", "-A", "pyinterop"]


def connect_redis(db: int) -> redis.Redis:
    """A client for ``db``; Redis being down is an error of the run, not a skip."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is required at {REDIS_HOST}:{REDIS_PORT} and is not reachable: {exc}",
                    pytrace=False)
    return client


class WorkerProcess:
    """One worker subprocess started with the INTEROP.md flags."""

    def __init__(self, kind: str, db: int, log_dir: Path, *, queues: str = "celery",
                 concurrency: int = 4, prefetch_multiplier: int = 4, hostname: str | None = None,
                 acks_late: bool = False, visibility_timeout: float | None = None):
        self.kind = kind
        self.db = db
        self.queues = queues
        self.hostname = hostname or f"{kind}-{uuid.uuid4().hex[:8]}@interop"
        self.log_path = log_dir / f"worker-{self.hostname.replace('@', '_')}-{time.monotonic_ns()}.log"
        url = redis_url(db)
        env = dict(os.environ)
        # The worker must take its settings from the flags, not from a stray environment.
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        if kind == "rust":
            binary = rust_worker_binary()
            if not binary.exists():
                pytest.fail(f"Rust interop worker not built: {binary} is missing "
                            "(cargo build --release -p interop-tests --bin interop-worker, "
                            "or set INTEROP_WORKER_BIN, or INTEROP_WORKER=python)", pytrace=False)
            cmd = [str(binary), "--broker", url, "--result-backend", url, "-Q", queues,
                   "-c", str(concurrency), "--prefetch-multiplier", str(prefetch_multiplier),
                   "-n", self.hostname]
            if acks_late:
                cmd.append("--acks-late")
            if visibility_timeout is not None:
                cmd += ["--visibility-timeout", str(visibility_timeout)]
            env.setdefault("RUST_LOG", "info")
            cwd = REPO
        else:
            cmd = [sys.executable, "-m", "celery", "-A", "pyinterop", "-b", url,
                   "--result-backend", url, "worker", "-Q", queues, "-P", "threads",
                   "-c", str(concurrency), "--prefetch-multiplier", str(prefetch_multiplier),
                   "-n", self.hostname, "-l", "info",
                   # Mingle and gossip would make stand-ins talk to each other; the Rust
                   # worker does neither.
                   "--without-mingle", "--without-gossip", "--without-heartbeat"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FIXTURES), env.get("PYTHONPATH")]))
            env.pop("PYINTEROP_ACKS_LATE", None)
            env.pop("PYINTEROP_VISIBILITY_TIMEOUT", None)
            if acks_late:
                env["PYINTEROP_ACKS_LATE"] = "1"
            if visibility_timeout is not None:
                env["PYINTEROP_VISIBILITY_TIMEOUT"] = str(visibility_timeout)
            cwd = FIXTURES
        self.cmd = cmd
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.stopped = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        return (f"worker {self.hostname} ({' '.join(self.cmd)}), exit code {self.proc.poll()}\n"
                f"--- last lines of {self.log_path} ---\n{self.log_tail()}")

    def wait_ready(self, client: "Client", queue: str | None = None,
                   deadline: float = READY_DEADLINE) -> None:
        """Call ``interop.noop`` until it answers; the worker dying or timing out fails."""
        end = time.monotonic() + deadline
        pending = []
        while time.monotonic() < end:
            if not self.alive():
                pytest.fail(f"worker exited during start-up\n{self.describe()}", pytrace=False)
            pending.append(client.app.send_task("interop.noop", queue=queue or self.queues.split(",")[0]))
            try:
                pending[-1].get(timeout=2.0)
                # Older probes were delivered too (or will be); drain them so tests start clean.
                for probe in pending[:-1]:
                    probe.get(timeout=RESULT_TIMEOUT)
                return
            except Exception as exc:  # noqa: BLE001 - only a timeout is expected here
                from celery.exceptions import TimeoutError as CeleryTimeout
                if not isinstance(exc, CeleryTimeout):
                    raise
        pytest.fail(f"worker not ready after {deadline:.0f} s\n{self.describe()}", pytrace=False)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, expect_code: int | None = 0, send_sigterm: bool = True) -> int:
        """SIGTERM, wait, and check the exit code (INTEROP.md: exits 0 on SIGTERM).

        ``send_sigterm=False`` only waits, for a test that signalled the worker itself: a
        second SIGTERM would turn Celery's warm shutdown into a cold one.
        """
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if send_sigterm and self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._log.close()
            pytest.fail(f"worker did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM\n{self.describe()}",
                        pytrace=False)
        self._log.close()
        if expect_code is not None and code != expect_code:
            pytest.fail(f"worker exited with {code}, expected {expect_code}\n{self.describe()}",
                        pytrace=False)
        return code

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to clean up."""
        self.stopped = True
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)
        self._log.close()


class Client:
    """A Celery 5.7 client app on one database, with ``interop.*`` stubs."""

    def __init__(self, db: int, serializer: str = "json"):
        url = redis_url(db)
        self.db = db
        self.serializer = serializer
        app = Celery(f"interop-client-{serializer}", broker=url, backend=url, set_as_current=False)
        app.conf.update(
            task_serializer=serializer,
            accept_content=["json", "msgpack"],
            result_accept_content=["json", "msgpack"],
            broker_connection_retry_on_startup=True,
        )
        self.app = app

        # Stubs: Python callers use the Rust tasks through these; the bodies never run here.
        @app.task(name="interop.noop")
        def noop():
            raise AssertionError("stub")

        @app.task(name="interop.add")
        def add(x, y):
            raise AssertionError("stub")

        @app.task(name="interop.mul")
        def mul(x, y):
            raise AssertionError("stub")

        @app.task(name="interop.echo")
        def echo(value):
            raise AssertionError("stub")

        @app.task(name="interop.concat")
        def concat(parts, sep=""):
            raise AssertionError("stub")

        @app.task(name="interop.xsum")
        def xsum(values):
            raise AssertionError("stub")

        @app.task(name="interop.fail")
        def fail(message):
            raise AssertionError("stub")

        @app.task(name="interop.panic")
        def panic():
            raise AssertionError("stub")

        @app.task(name="interop.sleep")
        def sleep(seconds):
            raise AssertionError("stub")

        @app.task(name="interop.blocking_sleep")
        def blocking_sleep(seconds):
            raise AssertionError("stub")

        @app.task(name="interop.flaky")
        def flaky(failures):
            raise AssertionError("stub")

        @app.task(name="interop.whoami")
        def whoami():
            raise AssertionError("stub")

        self.noop, self.add, self.mul, self.echo = noop, add, mul, echo
        self.concat, self.xsum, self.fail, self.panic = concat, xsum, fail, panic
        self.sleep, self.blocking_sleep, self.flaky, self.whoami = sleep, blocking_sleep, flaky, whoami

    def call(self, name: str, args=None, kwargs=None, timeout: float = RESULT_TIMEOUT, **options):
        """send_task by name and wait for the value (raises what the task raised)."""
        result = self.app.send_task(name, args=args, kwargs=kwargs, **options)
        return result.get(timeout=timeout)

    def close(self) -> None:
        self.app.close()


def _module_db(request) -> int:
    db = getattr(request.module, "DB", None)
    if not isinstance(db, int) or not 0 <= db <= 15:
        pytest.fail(f"{request.module.__name__} must set DB = <Redis database 0-15>", pytrace=False)
    return db


@pytest.fixture(scope="module")
def db(request) -> int:
    """The module's Redis database, flushed before the module runs."""
    number = _module_db(request)
    connect_redis(number).flushdb()
    return number


@pytest.fixture(scope="module")
def rdb(db) -> redis.Redis:
    client = connect_redis(db)
    yield client
    client.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def clients(db):
    """One JSON and one msgpack client on the module's database."""
    made = {"json": Client(db, "json"), "msgpack": Client(db, "msgpack")}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def client(clients) -> Client:
    return clients["json"]


@pytest.fixture(scope="module")
def worker(request, db, log_dir, client):
    """The module's worker under test (``WORKER_OPTIONS`` of the module tune it)."""
    options = dict(getattr(request.module, "WORKER_OPTIONS", {}))
    proc = WorkerProcess(WORKER_KIND, db, log_dir, **options)
    try:
        proc.wait_ready(client)
    except BaseException:
        proc.stop(expect_code=None)
        raise
    yield proc
    proc.stop(expect_code=0)


@pytest.fixture
def spawn_worker(db, log_dir):
    """Start extra workers inside one test; each is SIGTERMed at the end and must exit 0."""
    started = []

    def spawn(kind: str = WORKER_KIND, **options) -> WorkerProcess:
        proc = WorkerProcess(kind, db, log_dir, **options)
        started.append(proc)
        return proc

    yield spawn
    failures = []
    for proc in started:
        if proc.stopped:
            continue
        try:
            proc.stop(expect_code=0)
        except pytest.fail.Exception as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it is truthy; fail with ``what`` when it never is."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
