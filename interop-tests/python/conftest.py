"""Fixtures of the interop suite: a real worker process, real brokers, a real Celery client.

The worker under test is chosen by ``INTEROP_WORKER``:

- ``rust`` (default): the ``interop-worker`` binary (``INTEROP_WORKER_BIN``, else
  ``target/release/interop-worker``, else ``target/debug/interop-worker``), driven with
  the flags of shared INTEROP.md;
- ``python``: the Celery stand-in ``python-fixtures/pyinterop.py`` run by
  ``celery -A pyinterop worker -P threads``, the same flags mapped to Celery's options
  (a module or test may ask for another pool, ``pool="prefork"``: Celery's time limits
  need it; the Rust worker ignores the pool).

Tests marked ``rust_only`` check behaviour only the Rust worker promises; they are
deselected automatically against the stand-in and run by default.

Every test runs once per transport (the module-scoped ``transport`` fixture, shown in the
test id):

- ``redis``: broker and result backend ``redis://<host>:<port>/<DB>``;
- ``amqp-redis``: broker ``<CELERIAC_TEST_AMQP_URL>`` on a vhost of its own, backend Redis;
- ``amqp-rpc``: the same broker, backend ``rpc://`` (results on the caller's reply queue).

``INTEROP_TRANSPORTS`` (a comma list) narrows the run; the default is all three. A test or
module restricted with ``@pytest.mark.transports(...)`` (e.g. because it reads kombu's Redis
bookkeeping) runs only on those; where none of them is selected it is deselected.

Isolation: each test module picks its own Redis database (module attribute ``DB``, 10-15;
``test_routing`` uses 4, the ``test_semantics_*`` modules share 6: modules run one after
another, so modules may share a database), flushed before the module runs on a transport
that uses Redis; on AMQP each module and
transport gets its own vhost ``<base vhost>-<DB>-<transport>``, deleted and re-created with
``rabbitmqctl`` (``INTEROP_RABBITMQCTL`` overrides the command) before the module runs. A
broker that is not reachable fails the run; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import amqp
import pytest
import redis
from celery import Celery

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "python-fixtures"
REDIS_HOST = os.environ.get("INTEROP_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("INTEROP_REDIS_PORT", "6379"))
WORKER_KIND = os.environ.get("INTEROP_WORKER", "rust").strip().lower()
AMQP_BASE_URL = os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/celeriac-test")
RABBITMQCTL = shlex.split(os.environ.get("INTEROP_RABBITMQCTL", "rabbitmqctl"))

TRANSPORTS = ("redis", "amqp-redis", "amqp-rpc")

# Generous on purpose: a loaded 2-core CI machine may be building Rust at the same time.
READY_DEADLINE = 90.0
RESULT_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

if WORKER_KIND not in ("rust", "python"):
    raise pytest.UsageError(f"INTEROP_WORKER must be 'rust' or 'python', not {WORKER_KIND!r}")


def _selected_transports() -> tuple:
    raw = os.environ.get("INTEROP_TRANSPORTS", "")
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if not names:
        return TRANSPORTS
    unknown = [name for name in names if name not in TRANSPORTS]
    if unknown:
        raise pytest.UsageError(f"INTEROP_TRANSPORTS: unknown transport(s) {unknown}; "
                                f"choose from {', '.join(TRANSPORTS)}")
    return tuple(dict.fromkeys(names))


SELECTED_TRANSPORTS = _selected_transports()
# Parameter of a test none of whose transports is selected; such tests are deselected.
NO_TRANSPORT = "no-selected-transport"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "rust_only: behaviour only the Rust interop worker promises "
        "(deselected when INTEROP_WORKER=python)")
    config.addinivalue_line(
        "markers", "transports(*names): run only on these transports "
        f"(of {', '.join(TRANSPORTS)}); default all")


@pytest.hookimpl(tryfirst=True)  # so the transport comes first in test ids
def pytest_generate_tests(metafunc):
    """Parametrize every test over the selected transports it may run on."""
    if "transport" not in metafunc.fixturenames:
        return
    allowed = TRANSPORTS
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None:
        allowed = marker.args
        unknown = [name for name in allowed if name not in TRANSPORTS]
        if unknown or not allowed:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: bad transports marker {allowed}")
    chosen = [name for name in SELECTED_TRANSPORTS if name in allowed]
    if not chosen:
        chosen = [NO_TRANSPORT]
    metafunc.parametrize("transport", chosen, indirect=True, scope="module", ids=chosen)


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        unselected = callspec is not None and callspec.params.get("transport") == NO_TRANSPORT
        rust_only = WORKER_KIND == "python" and item.get_closest_marker("rust_only")
        (dropped if unselected or rust_only else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config):
    return [f"interop worker under test: {WORKER_KIND} "
            f"({' '.join(map(str, worker_base_command(WORKER_KIND)))})",
            f"interop transports: {', '.join(SELECTED_TRANSPORTS)} (AMQP base {redact(AMQP_BASE_URL)})"]


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


def redact(url: str) -> str:
    """``url`` without its password, for messages and headers."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def rabbitmqctl(*args: str, timeout: float = 120.0, check: bool = True,
                attempts: int = 6) -> subprocess.CompletedProcess:
    """Run ``rabbitmqctl``; failing to (RabbitMQ down, no rights) fails the test.

    A failed command is tried again (``attempts`` in all, 3 s apart): the shared node may
    be busy, or briefly restarting for someone else, and accept the call a moment later.
    """
    cmd = [*RABBITMQCTL, *args]
    for attempt in range(1, attempts + 1):
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"RabbitMQ is required: {' '.join(cmd)} failed: {exc}", pytrace=False)
        if done.returncode == 0 or not check:
            return done
        if attempt < attempts:
            time.sleep(3.0)
    pytest.fail(f"RabbitMQ is required: {' '.join(cmd)} exited {done.returncode} "
                f"({attempts} attempts)\n--- stderr ---\n{done.stderr}\n--- stdout ---\n{done.stdout}",
                pytrace=False)


class AmqpBroker:
    """A plain py-amqp connection to one vhost, for what the tests check on the broker.

    It reconnects on demand, so it survives a broker restart.
    """

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            pytest.fail(f"not an AMQP URL: {redact(url)}", pytrace=False)
        self.url = url
        self.host = f"{parts.hostname or '127.0.0.1'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
        self.userid = unquote(parts.username or "guest")
        self.password = unquote(parts.password or "guest")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        self.vhost = unquote(path) or "/"
        self.ssl = parts.scheme == "amqps"
        self._conn = None
        self._chan = None

    def channel(self):
        """An open channel (publisher confirms on); opens the connection if needed."""
        if self._chan is not None and self._chan.is_open and self._conn.connected:
            return self._chan
        self.close()
        conn = amqp.Connection(host=self.host, userid=self.userid, password=self.password,
                               virtual_host=self.vhost, ssl=self.ssl, connect_timeout=10)
        try:
            conn.connect()
        except Exception as exc:  # noqa: BLE001 - any failure to connect ends the test
            pytest.fail(f"RabbitMQ is required at {redact(self.url)} and is not reachable: {exc!r}",
                        pytrace=False)
        self._conn = conn
        # Bodies as the bytes on the wire: py-amqp would otherwise decode them by their
        # content_encoding, and tests compare bytes.
        self._chan = amqp.Channel(conn, auto_decode=False)
        self._chan.open()
        self._chan.confirm_select()
        return self._chan

    def queue_length(self, queue: str) -> int:
        """Messages ready in ``queue`` (not the unacknowledged ones), by a passive declare.

        A queue that does not exist is an error, not an empty queue.
        """
        _name, ready, _consumers = self.channel().queue_declare(queue, passive=True)
        return ready

    def publish(self, body: bytes, exchange: str, routing_key: str, headers: dict | None = None,
                **properties) -> None:
        """Publish one message and wait for the broker's confirm (``properties`` by their
        AMQP names: content_type, delivery_mode, correlation_id, ...)."""
        message = amqp.Message(body, application_headers=headers or {}, **properties)
        self.channel().basic_publish(message, exchange=exchange, routing_key=routing_key)

    def get(self, queue: str):
        """Take one message off ``queue`` (acknowledged at once), or None; its headers are
        ``message.headers``, its other properties ``message.properties``."""
        return self.channel().basic_get(queue, no_ack=True)

    def queue_info(self, queue: str) -> dict | None:
        """What ``rabbitmqctl list_queues`` says about ``queue`` (None when it does not exist):
        ``durable``, ``messages_ready``, ``messages_unacknowledged``, ``consumers``."""
        done = rabbitmqctl("list_queues", "-q", "-p", self.vhost, "--formatter", "json", "name", "durable",
                           "messages_ready", "messages_unacknowledged", "consumers")
        for row in json.loads(done.stdout or "[]"):
            if row["name"] == queue:
                return row
        return None

    def unacked(self, queue: str) -> int:
        """Messages of ``queue`` delivered to a consumer and not yet acknowledged."""
        info = self.queue_info(queue)
        if info is None:
            pytest.fail(f"queue {queue!r} does not exist on vhost {self.vhost!r}", pytrace=False)
        return int(info["messages_unacknowledged"])

    def close(self) -> None:
        conn, self._conn, self._chan = self._conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - a dead connection is dropped either way
                pass


def reset_vhost(base_url: str, vhost: str) -> str:
    """Delete and re-create ``vhost`` (with all rights for the URL's user); its URL."""
    parts = urlsplit(base_url)
    user = unquote(parts.username or "guest")
    rabbitmqctl("delete_vhost", vhost, check=False)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@dataclass
class Transport:
    """The broker and result backend one module runs on."""

    name: str
    db: int
    broker_url: str
    backend_url: str
    vhost: str | None = None

    @property
    def amqp(self) -> bool:
        return self.broker_url.startswith(("amqp://", "amqps://"))

    @property
    def redis_backend(self) -> bool:
        return self.backend_url.startswith("redis://")

    @property
    def uses_redis(self) -> bool:
        return not self.amqp or self.redis_backend

    def __str__(self) -> str:
        return f"{self.name} (broker {redact(self.broker_url)}, backend {redact(self.backend_url)})"


class Broker:
    """Broker-side checks that read the same on Redis and AMQP."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.amqp = AmqpBroker(transport.broker_url) if transport.amqp else None
        self.redis = None if transport.amqp else connect_redis(transport.db)

    def queue_length(self, queue: str) -> int:
        """Messages waiting in ``queue``, not yet delivered to a worker (kombu's Redis list
        length; the AMQP queue's ready count)."""
        if self.amqp is not None:
            return self.amqp.queue_length(queue)
        return self.redis.llen(queue)

    def close(self) -> None:
        if self.amqp is not None:
            self.amqp.close()
        if self.redis is not None:
            self.redis.close()


class WorkerProcess:
    """One worker subprocess started with the INTEROP.md flags."""

    def __init__(self, kind: str, transport: Transport, log_dir: Path, *, queues: str = "celery",
                 concurrency: int = 4, prefetch_multiplier: int = 4, hostname: str | None = None,
                 acks_late: bool = False, visibility_timeout: float | None = None,
                 queue_bindings: tuple = (), time_limit: float | None = None,
                 soft_time_limit: float | None = None, result_extended: bool = False,
                 statedb: Path | None = None, track_started: bool = False,
                 pool: str = "threads", threads: int | None = None):
        self.kind = kind
        self.transport = transport
        self.queues = queues
        self.hostname = hostname or f"{kind}-{uuid.uuid4().hex[:8]}@interop"
        self.log_path = (log_dir / f"worker-{transport.name}-{self.hostname.replace('@', '_')}-"
                         f"{time.monotonic_ns()}.log")
        if visibility_timeout is not None and transport.amqp:
            pytest.fail("visibility_timeout is a Redis transport setting; AMQP has none", pytrace=False)
        broker, backend = transport.broker_url, transport.backend_url
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
            cmd = [str(binary), "--broker", broker, "--result-backend", backend, "-Q", queues,
                   "-c", str(concurrency), "--prefetch-multiplier", str(prefetch_multiplier),
                   "-n", self.hostname]
            if acks_late:
                cmd.append("--acks-late")
            if visibility_timeout is not None:
                cmd += ["--visibility-timeout", str(visibility_timeout)]
            for binding in queue_bindings:
                cmd += ["--queue-binding", binding]
            cmd += self._semantics_flags(time_limit, soft_time_limit, statedb)
            if result_extended:
                cmd.append("--result-extended")
            if track_started:
                cmd.append("--track-started")
            if threads is not None:
                cmd += ["--threads", str(threads)]
            env.setdefault("RUST_LOG", "info")
            cwd = REPO
        else:
            if threads is not None:
                pytest.fail("threads (--threads) is a setting of the Rust worker's async runtime; "
                            "Celery has none", pytrace=False)
            cmd = [sys.executable, "-m", "celery", "-A", "pyinterop", "-b", broker,
                   "--result-backend", backend, "worker", "-Q", queues, "-P", pool,
                   "-c", str(concurrency), "--prefetch-multiplier", str(prefetch_multiplier),
                   "-n", self.hostname, "-l", "info",
                   # Mingle and gossip would make stand-ins talk to each other; the Rust
                   # worker does neither.
                   "--without-mingle", "--without-gossip", "--without-heartbeat"]
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FIXTURES), env.get("PYTHONPATH")]))
            env.pop("PYINTEROP_ACKS_LATE", None)
            env.pop("PYINTEROP_VISIBILITY_TIMEOUT", None)
            env.pop("PYINTEROP_QUEUE_BINDINGS", None)
            env.pop("PYINTEROP_RESULT_EXTENDED", None)
            env.pop("PYINTEROP_TRACK_STARTED", None)
            cmd += self._semantics_flags(time_limit, soft_time_limit, statedb)
            if result_extended:
                env["PYINTEROP_RESULT_EXTENDED"] = "1"
            if track_started:
                env["PYINTEROP_TRACK_STARTED"] = "1"
            if queue_bindings:
                env["PYINTEROP_QUEUE_BINDINGS"] = ";".join(queue_bindings)
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

    @staticmethod
    def _semantics_flags(time_limit, soft_time_limit, statedb) -> list:
        """``--time-limit``, ``--soft-time-limit`` and ``--statedb``: the same flags on
        the Rust worker and on ``celery worker``."""
        flags = []
        if time_limit is not None:
            flags += ["--time-limit", str(time_limit)]
        if soft_time_limit is not None:
            flags += ["--soft-time-limit", str(soft_time_limit)]
        if statedb is not None:
            flags += ["--statedb", str(statedb)]
        return flags

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self._log.closed:
            self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        return (f"worker {self.hostname} on {self.transport} ({' '.join(self.cmd)}), "
                f"exit code {self.proc.poll()}\n"
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
    """A Celery 5.7 client app on one transport, with ``interop.*`` stubs.

    ``conf`` adds Celery settings (e.g. a publish retry policy).
    """

    def __init__(self, transport: Transport, serializer: str = "json", conf: dict | None = None):
        self.transport = transport
        self.serializer = serializer
        app = Celery(f"interop-client-{serializer}", broker=transport.broker_url,
                     backend=transport.backend_url, set_as_current=False)
        app.conf.update(
            task_serializer=serializer,
            accept_content=["json", "msgpack"],
            result_accept_content=["json", "msgpack"],
            broker_connection_retry_on_startup=True,
        )
        app.conf.update(conf or {})
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
def transport(request) -> Transport:
    """The module's transport (parametrized by ``pytest_generate_tests``), from clean state:
    its Redis database flushed, its AMQP vhost deleted and re-created."""
    name = request.param
    number = _module_db(request)
    if name == "redis":
        chosen = Transport(name, number, redis_url(number), redis_url(number))
    elif name in ("amqp-redis", "amqp-rpc"):
        base_vhost = AmqpBroker(AMQP_BASE_URL).vhost.strip("/") or "celeriac-test"
        vhost = f"{base_vhost}-{number}-{name}"
        broker = reset_vhost(AMQP_BASE_URL, vhost)
        backend = redis_url(number) if name == "amqp-redis" else "rpc://"
        chosen = Transport(name, number, broker, backend, vhost)
    else:
        pytest.fail(f"unknown transport {name!r}", pytrace=False)
    if chosen.uses_redis:
        flusher = connect_redis(number)
        flusher.flushdb()
        flusher.close()
    if chosen.amqp:
        # Reachable with the test user, or the module fails here rather than in a worker.
        probe = AmqpBroker(chosen.broker_url)
        probe.channel()
        probe.close()
    return chosen


@pytest.fixture(scope="module")
def db(transport) -> int:
    """The module's Redis database (flushed by ``transport`` when the transport uses Redis)."""
    return transport.db


@pytest.fixture(scope="module")
def rdb(transport) -> redis.Redis:
    """The module's Redis database, for tests that read Redis directly."""
    if not transport.uses_redis:
        pytest.fail(f"transport {transport.name} uses no Redis; restrict the test with "
                    "@pytest.mark.transports", pytrace=False)
    client = connect_redis(transport.db)
    yield client
    client.close()


@pytest.fixture(scope="module")
def broker(transport):
    """Broker-side checks (queue lengths) on the module's transport."""
    made = Broker(transport)
    yield made
    made.close()


@pytest.fixture(scope="module")
def amqp_broker(transport) -> AmqpBroker:
    """A py-amqp connection to the module's vhost (AMQP transports only)."""
    if not transport.amqp:
        pytest.fail(f"transport {transport.name} is not AMQP; restrict the test with "
                    "@pytest.mark.transports", pytrace=False)
    made = AmqpBroker(transport.broker_url)
    yield made
    made.close()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def clients(transport):
    """One JSON and one msgpack client on the module's transport."""
    made = {"json": Client(transport, "json"), "msgpack": Client(transport, "msgpack")}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def client(clients) -> Client:
    return clients["json"]


@pytest.fixture(scope="module")
def worker(request, transport, log_dir, client):
    """The module's worker under test (``WORKER_OPTIONS`` of the module tune it)."""
    options = dict(getattr(request.module, "WORKER_OPTIONS", {}))
    proc = WorkerProcess(WORKER_KIND, transport, log_dir, **options)
    try:
        proc.wait_ready(client)
    except BaseException:
        proc.stop(expect_code=None)
        raise
    yield proc
    proc.stop(expect_code=0)


@pytest.fixture
def spawn_worker(transport, log_dir):
    """Start extra workers inside one test; each is SIGTERMed at the end and must exit 0."""
    started = []

    def spawn(kind: str = WORKER_KIND, **options) -> WorkerProcess:
        proc = WorkerProcess(kind, transport, log_dir, **options)
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
