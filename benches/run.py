#!/usr/bin/env python3
"""Celeriac's worker side by side with Python Celery 5.7 on the same brokers (issue 6).

    python3 benches/run.py            # full run (~20 min on 2 cores), writes benches/RESULTS.md
    python3 benches/run.py --quick    # 1 run per measurement, small N (~5 min), prints only
    python3 benches/run.py --smoke    # CI check: Redis only, tiny N, asserts, ~1 min
    python3 benches/run.py --rtt-only # only the round trips (A/B: --compare-worker PATH)

For each broker (the harness's own Redis, RabbitMQ vhost ``celeriac-bench``), in one run:

* drain: a queue is pre-filled with N ``interop.noop`` tasks by one fast publisher
  (``celeriac-bench publish``), then a worker is started and timed from the moment it
  takes its first message until the queue is empty and acknowledged (and, with results,
  until every ``celery-task-meta-<id>`` is in the Redis backend), with ``ignore_result``
  and again with results stored. Workers: Celeriac's interop worker, Python Celery
  (``python-fixtures/pyinterop.py``; the best of several pools and prefetch settings, swept
  first), and the raw broker limit (``celeriac-bench raw``: take + ack only, kombu's
  bookkeeping on Redis);
* round trip: ``add.delay(2, 3).get()`` from Python's client, 1,000 calls in a row, against
  Celeriac, Celery and the raw responder (the client's own floor), and Celeriac's Rust client
  (``send_task`` + ``get``) against Celeriac;
* resources: CPU seconds (utime + stime of the worker's process tree) per 10,000 tasks and
  peak RSS (VmHWM, summed over the tree) during the drains, and RSS while holding 10,000
  prefetched messages (tasks with an eta an hour away, which every worker keeps reserved).

Each measurement is repeated (``--repeats``, default 3, interleaving the workers so that
noise from other users of the machine spreads over all of them); medians are reported
with min–max. The Markdown report goes to stdout and, for a full run, to
benches/RESULTS.md.

Redis is the harness's own: it starts ``redis-server`` on 127.0.0.1:6390 (``--redis-port``;
the next free port when that one is taken) without persistence, uses its database 0 for
broker and backend, and stops it at the end, also when the run fails or is interrupted.
(The shared server on 6379 is no place for it: every database there belongs to a test
suite that flushes it.) ``--redis-url`` uses a running server instead.

Needs: ``redis-server`` (Debian's package), RabbitMQ running (never started or stopped
here), ``rabbitmqctl`` (to create the vhost), cargo (builds the release binaries first
unless ``--no-build``; a no-op when they are up to date), and the project's venv
(``.venv``, or ``CELERIAC_PYTHON``) with celery, redis and amqp; run with any python3, it
re-executes itself with the venv's interpreter.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHES = REPO / "benches"


def _python_with_celery() -> None:
    """Re-execute with the project's venv when this interpreter lacks celery/redis/amqp."""
    try:
        import amqp  # noqa: F401
        import celery  # noqa: F401
        import redis  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("CELERIAC_BENCH_REEXEC"):
        sys.exit("benches/run.py: celery, redis and amqp are not importable, even in the venv")
    candidates = [os.environ.get("CELERIAC_PYTHON"), str(REPO / ".venv" / "bin" / "python")]
    for python in candidates:
        if python and Path(python).exists():
            os.environ["CELERIAC_BENCH_REEXEC"] = "1"
            os.execv(python, [python, str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit("benches/run.py needs the project's venv: run `bash scripts/test.sh` once "
             "(it builds .venv), or set CELERIAC_PYTHON to a python with celery 5.7")


_python_with_celery()

import amqp  # noqa: E402
import redis  # noqa: E402

QUEUE = "celeriac.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WORKER_BIN = REPO / "target" / "release" / "interop-worker"
BENCH_BIN = REPO / "target" / "release" / "celeriac-bench"
PYTHON = sys.executable


class BenchError(Exception):
    """A measurement that could not be made or did not check out."""


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (prefork pool children)."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, and of their reaped children."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
        total += sum(int(f) for f in fields[11:15])
    return total / CLK_TCK


def memory_kb(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) in kB."""
    rss = hwm = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1])
    return rss, hwm


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the harness dies, even by SIGKILL
    (``prctl(PR_SET_PDEATHSIG)``), so that no worker or server of its outlives it."""
    if _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


class Process:
    """A process this harness started (its own session, so its pool children go with it;
    signalled when the harness dies)."""

    def __init__(self, argv: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self._log.write(("\n$ " + " ".join(argv) + "\n").encode())
        self._log.flush()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise BenchError(f"{what}: the process exited with {self.proc.returncode} "
                             f"(log: {self.log_path})")

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a warm shutdown for every worker here), SIGKILL after ``timeout``."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"  pid {self.pid} ignored SIGTERM for {timeout:.0f} s; killing its group")
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        # Pool children of a Celery worker that did not wait for them.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        return self.proc.returncode


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (bound as redis-server binds, with
    SO_REUSEADDR, so that connections of an earlier run in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisServer:
    """The harness's own ``redis-server``: a child process on a private port of 127.0.0.1,
    without persistence (``--save '' --appendonly no``), stopped at the end of the run. The
    shared server's databases all belong to test suites, which flush them; nothing but the
    harness uses this one."""

    def __init__(self, port: int, logs: Path):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise BenchError("redis-server is not installed (Debian: apt-get install "
                             "redis-server), or pass --redis-url to use a running server")
        workdir = logs / "redis"
        workdir.mkdir(exist_ok=True)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = Process([binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--daemonize", "no",
                             "--dir", str(workdir), "--logfile", ""],
                            logs / "redis.log", cwd=workdir)
        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + 20
            while True:
                if not self.proc.alive():
                    raise BenchError(f"redis-server on port {port} exited with "
                                     f"{self.proc.proc.returncode}: {self.log_tail()}")
                try:
                    info = client.info("server")
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise BenchError(f"redis-server on port {port} did not answer in "
                                         f"20 s (log: {self.proc.log_path})") from None
                    time.sleep(0.05)
        finally:
            client.close()
        if info["process_id"] != self.proc.pid:
            self.stop()
            raise BenchError(f"port {port} is answered by another Redis (pid "
                             f"{info['process_id']}), not the one started here")
        self.version = info["redis_version"]

    def log_tail(self) -> str:
        try:
            lines = self.proc.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:])

    def stop(self) -> None:
        self.proc.stop(timeout=10)


def start_redis(port: int | None, logs: Path) -> RedisServer:
    """Start the harness's own Redis on ``port``; by default on 6390, or the next free port
    up to 6409 when that one is taken (another run of the harness, say)."""
    ports = [port] if port is not None else list(range(6390, 6410))
    for p in ports:
        if not port_free(p):
            if port is not None:
                raise BenchError(f"127.0.0.1:{p} is in use; choose another --redis-port")
            log(f"port {p} is in use; trying {p + 1}")
            continue
        try:
            return RedisServer(p, logs)
        except BenchError as e:
            # Taken between the check and redis-server's bind: try the next one.
            if port is None and "Address already in use" in str(e):
                log(f"port {p} was taken meanwhile; trying {p + 1}")
                continue
            raise
    raise BenchError(f"no free port for redis-server in {ports[0]}-{ports[-1]}")


def run_tool(argv: list[str], timeout: float = 600.0) -> dict:
    """Run one of the harness's tools and read the JSON object it prints."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n"
                         f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- brokers and results

def priority_keys(queue: str) -> list[str]:
    """kombu's Redis priority sub-queues of ``queue`` (steps 3, 6, 9)."""
    return [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]


class RedisBroker:
    name = "Redis"

    def __init__(self, url: str):
        self.url = url
        self.r = redis.Redis.from_url(url)

    def reset(self, queues=(QUEUE,)) -> None:
        keys = [k for q in queues for k in (q, *priority_keys(q))]
        self.r.delete(*keys, "unacked", "unacked_index", "unacked_mutex")

    def ready(self) -> int:
        return self.r.llen(QUEUE)

    def drained(self) -> bool:
        """Nothing left in the queue and nothing taken but unacknowledged."""
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(QUEUE).hlen("unacked")
        ready, unacked = pipe.execute()
        return ready == 0 and unacked == 0

    def held(self) -> int:
        """Messages taken and not acknowledged (kombu's ``unacked`` hash)."""
        return self.r.hlen("unacked")

    def close(self) -> None:
        self.r.close()


class AmqpBroker:
    name = "RabbitMQ"

    def __init__(self, base: str, vhost: str):
        self.vhost = vhost
        self.url = f"{base.rstrip('/')}/{vhost}"
        rest = base.split("://", 1)[1]
        creds, hostport = rest.rsplit("@", 1) if "@" in rest else ("guest:guest", rest)
        user, _, password = creds.partition(":")
        self.conn = amqp.Connection(host=hostport, userid=user, password=password,
                                    virtual_host=vhost)
        self.conn.connect()
        self.ch = self.conn.channel()

    def _declare_passive(self, queue: str = QUEUE):
        try:
            return self.ch.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            self.ch = self.conn.channel()  # the failed declare closed the channel
            return None

    def reset(self, queues=(QUEUE,)) -> None:
        for q in queues:
            if self._declare_passive(q) is not None:
                self.ch.queue_purge(q)

    def ready(self) -> int:
        ok = self._declare_passive()
        return 0 if ok is None else ok.message_count

    def drained(self) -> bool:
        """No message ready. RabbitMQ does not say what a consumer holds unacknowledged
        (the passive declare counts ready messages only), so what the worker prefetched is
        not waited for here; each trial checks afterwards that nothing came back."""
        return self.ready() == 0

    def held(self) -> int:
        return 0

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a connection the broker may have dropped
            pass


class Results:
    """The Redis result backend (the same database as the Redis broker)."""

    def __init__(self, url: str):
        self.url = url
        self.r = redis.Redis.from_url(url)

    @staticmethod
    def keys(ids) -> list[str]:
        return [f"celery-task-meta-{i}" for i in ids]

    def missing_chunks(self, chunks: list[list[str]]) -> list[list[str]]:
        """The chunks of keys not all present yet (one EXISTS per chunk, pipelined)."""
        pipe = self.r.pipeline(transaction=False)
        for chunk in chunks:
            pipe.exists(*chunk)
        return [c for c, n in zip(chunks, pipe.execute()) if n != len(c)]

    def count_present(self, keys: list[str]) -> int:
        pipe = self.r.pipeline(transaction=False)
        for i in range(0, len(keys), 1000):
            pipe.exists(*keys[i:i + 1000])
        return sum(pipe.execute())

    def check_success(self, keys: list[str]) -> None:
        """Every stored value is a SUCCESS of its own task, as Celery writes it."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            for key, raw in zip(chunk, self.r.mget(chunk)):
                meta = json.loads(raw) if raw is not None else None
                if (not meta or meta.get("status") != "SUCCESS"
                        or f"celery-task-meta-{meta.get('task_id')}" != key):
                    raise BenchError(f"{key} holds {meta}")

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self.r.unlink(*keys[i:i + 1000])


def task_id(prefix: str, i: int) -> str:
    """The ids ``celeriac-bench publish --id-prefix`` gives (src/main.rs ``task_id``)."""
    return f"{prefix}-0000-4000-8000-{i:012x}"


# ---------------------------------------------------------------- workers

@dataclass
class Worker:
    """One worker configuration: ``kind`` is celeriac, celery or raw."""

    kind: str
    label: str
    opts: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.label}"

    @property
    def window(self) -> int:
        """Messages the worker may hold unacknowledged (its AMQP prefetch count)."""
        return self.opts.get("window", 8)

    def holding(self, n: int) -> Worker:
        """The same worker with a prefetch multiplier that lets it reserve ``n`` messages at
        once (``--prefetch-multiplier`` replaced), for the memory-while-holding measurement:
        what it holds then costs memory, not time."""
        c = self.opts.get("c", 1)
        pm = -(-n // c)
        args = list(self.opts.get("args", []))
        if "--prefetch-multiplier" in args:
            i = args.index("--prefetch-multiplier")
            del args[i:i + 2]
        args += ["--prefetch-multiplier", str(pm)]
        base = self.label.split(" --prefetch-multiplier")[0].split(", prefetch")[0]
        return Worker(self.kind, f"{base} --prefetch-multiplier {pm}",
                      {**self.opts, "args": args, "window": c * pm})

    def start(self, broker, backend: str | None, logs: Path, queue: str = QUEUE) -> Process:
        env = dict(os.environ)
        if self.kind == "celeriac":
            argv = [str(self.opts.get("bin", WORKER_BIN)), "--broker", broker.url, "-Q", queue,
                    *self.opts.get("args", [])]
            if backend:
                argv += ["--result-backend", backend]
            # Celery's worker logs at WARNING unless told otherwise; so does this one here
            # (its default, info, logs a line per task).
            env["RUST_LOG"] = "warn"
            env.update(self.opts.get("env", {}))
            return Process(argv, logs / f"celeriac{'-b' if 'bin' in self.opts else ''}.log",
                           env=env)
        if self.kind == "celery":
            argv = [PYTHON, "-m", "celery", "-A", "pyinterop", "-b", broker.url]
            if backend:
                argv += ["--result-backend", backend]
            argv += ["worker", "-Q", queue, "-l", "WARNING", "-n", f"bench-{queue}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat",
                     *self.opts["args"]]
            env.pop("CELERY_RESULT_BACKEND", None)
            env["PYTHONPATH"] = str(REPO / "python-fixtures")
            return Process(argv, logs / "celery.log", env=env, cwd=REPO / "python-fixtures")
        if self.kind == "raw":
            argv = [str(BENCH_BIN), "raw", "--broker", broker.url, "--queue", queue,
                    "--mode", self.opts["mode"], *self.opts.get("args", [])]
            if backend:
                argv += ["--result-backend", backend]
            return Process(argv, logs / "raw.log", env=env)
        raise ValueError(self.kind)


def celeriac_configs() -> list[Worker]:
    """Celeriac's sweep: the defaults, wider windows, and the same on one runtime thread
    (``--threads 1``, the async side on a single thread: no hand-offs between threads, and
    the broker keeps the other core), as Celery's sweep tries its pools. The last one is
    the ``--soak-only`` default."""
    cpus = os.cpu_count() or 1

    def w(c: int, pm: int, threads: int | None = None) -> Worker:
        args = ["-c", str(c), "--prefetch-multiplier", str(pm)]
        if threads is not None:
            args += ["--threads", str(threads)]
        return Worker("celeriac", " ".join(args), {"args": args, "window": c * pm, "c": c})
    return [
        Worker("celeriac", f"-c {cpus} (CPUs), prefetch ×4 (defaults)",
               {"window": cpus * 4, "c": cpus}),
        w(16, 16), w(64, 16), w(16, 16, threads=1), w(64, 16, threads=1),
    ]


def celery_configs() -> list[Worker]:
    def w(pool: str, c: int | None, pm: int) -> Worker:
        args = ["-P", pool, "--prefetch-multiplier", str(pm)]
        label = f"-P {pool}"
        if c is not None:
            args += ["-c", str(c)]
            label += f" -c {c}"
        return Worker("celery", f"{label} --prefetch-multiplier {pm}",
                      {"args": args, "window": (c or 1) * pm, "c": c or 1})
    return [
        w("prefork", 2, 4), w("prefork", 2, 64), w("prefork", 4, 16),
        w("threads", 4, 16), w("threads", 16, 64),
        w("solo", None, 4), w("solo", None, 64),
    ]


def raw_configs(broker) -> list[Worker]:
    if isinstance(broker, RedisBroker):
        return [
            Worker("raw", "kombu bookkeeping, 1 message per round trip",
                   {"mode": "kombu", "window": 1}),
            Worker("raw", "kombu bookkeeping, 100 messages per round trip",
                   {"mode": "batch", "window": 100}),
        ]
    return [
        Worker("raw", "prefetch 200, basic.ack each", {"mode": "each", "window": 200}),
        Worker("raw", "prefetch 200, basic.ack multiple per ≤100",
               {"mode": "multi", "window": 200}),
        # A wider window and bigger batches: fewer wake-ups and ack frames per message on
        # both sides, as Celeriac's own sweep tries windows of 256 and 1,024.
        Worker("raw", "prefetch 1000, basic.ack multiple per ≤500",
               {"mode": "multi", "window": 1000,
                "args": ["--prefetch", "1000", "--batch", "500"]}),
    ]


# ---------------------------------------------------------------- measurements

@dataclass
class Drain:
    n: int            # tasks published and drained
    timed: int        # tasks processed within the timed interval
    seconds: float
    cpu: float        # CPU seconds of the worker within the timed interval
    hwm_kb: int
    publish_rate: float

    @property
    def rate(self) -> float:
        return self.timed / self.seconds

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu * 10_000 / self.timed


class Bench:
    def __init__(self, args, logs: Path):
        self.args = args
        self.logs = logs
        self.results = Results(args.redis_url)
        self.poll = 0.01

    def publish(self, broker, n: int, prefix: str, *, ignore_result: bool,
                eta_secs: int | None = None, check: bool = True) -> float:
        argv = [str(BENCH_BIN), "publish", "--broker", broker.url, "--queue", QUEUE,
                "--count", str(n), "--id-prefix", prefix]
        if ignore_result:
            argv.append("--ignore-result")
        if eta_secs:
            argv += ["--eta-secs", str(eta_secs)]
        out = run_tool(argv)
        if check and (ready := broker.ready()) != n:
            raise BenchError(f"published {n} but the queue holds {ready}")
        return n / out["seconds"]

    def drain(self, broker, worker: Worker, n: int, results: bool) -> Drain:
        """Pre-fill ``n`` no-op tasks, start ``worker``, time the drain, check, clean up."""
        broker.reset()
        prefix = f"{random.getrandbits(32):08x}"
        keys = self.results.keys(task_id(prefix, i) for i in range(n)) if results else []
        publish_rate = self.publish(broker, n, prefix, ignore_result=not results)
        # Where the end of a drain cannot be seen (RabbitMQ without results: what the worker
        # holds unacknowledged is not reported), the steady state is timed instead: from
        # when the queue is below `level` (the worker's window long since full) until it is
        # empty. Then every message taken was let through by an ack of an earlier one, so
        # the queue falls exactly as fast as the worker acknowledges.
        steady = isinstance(broker, AmqpBroker) and not results
        level = n - worker.window - n // 10
        if steady and level < n // 4:
            raise BenchError(f"N={n} is too small for {worker.label} (window {worker.window})")
        proc = worker.start(broker, self.args.redis_url if results else None, self.logs)
        try:
            deadline = time.monotonic() + 60
            while broker.ready() >= n:  # started, not yet taking
                proc.check_alive(worker.label)
                if time.monotonic() > deadline:
                    raise BenchError(f"{worker.label} took nothing in 60 s")
                time.sleep(0.002)
            t0 = time.monotonic()
            cpu0 = cpu_seconds(proc.tree())
            timed = n
            # A worker slower than 1/20 of the planned rate is stuck, not slow.
            deadline = t0 + max(120.0, n / 50)
            while True:
                if steady:
                    ready = broker.ready()
                    if timed == n and ready <= level:
                        t0, cpu0, timed = time.monotonic(), cpu_seconds(proc.tree()), ready
                    if ready == 0:
                        break
                elif broker.drained():
                    break
                proc.check_alive(worker.label)
                if time.monotonic() > deadline:
                    raise BenchError(f"{worker.label}: {broker.ready()} of {n} still queued "
                                     f"after {deadline - t0:.0f} s")
                time.sleep(self.poll)
            if results:
                chunks = [keys[i:i + 500] for i in range(0, n, 500)]
                while chunks := self.results.missing_chunks(chunks):
                    proc.check_alive(worker.label)
                    if time.monotonic() > deadline:
                        missing = len(keys) - self.results.count_present(keys)
                        raise BenchError(f"{worker.label}: {missing} of {n} results missing")
                    time.sleep(self.poll)
            t1 = time.monotonic()
            tree = proc.tree()
            cpu1 = cpu_seconds(tree)
            _, hwm = memory_kb(tree)
            # RabbitMQ: whatever the worker still held is settled before it stops.
            time.sleep(0.5 if isinstance(broker, AmqpBroker) else 0.0)
        finally:
            proc.stop()
        # Checked after the worker stopped: anything taken but not acknowledged is back in
        # the queue by now (RabbitMQ requeues a closed channel's; workers hand theirs back).
        left, held = broker.ready(), broker.held()
        if left or held:
            raise BenchError(f"{worker.label}: {left} messages back in the queue and {held} "
                             f"unacknowledged after the drain")
        if results:
            present = self.results.count_present(keys)
            if present != n:
                raise BenchError(f"{worker.label}: {n - present} of {n} results missing")
            self.results.check_success(keys)
            self.results.delete(keys)
        return Drain(n, timed, t1 - t0, cpu1 - cpu0, hwm, publish_rate)

    def round_trips(self, broker, targets: list[tuple[str, Worker, str]]) -> dict:
        """Round trips to every worker of ``targets`` (name, worker, expected result; one
        queue each, all running at once), the calls of each client going to them in turn:
        {(client, name): latencies in µs}. Python's client calls them all, Celeriac's
        client those whose name is celeriac or raw."""
        queues = {name: f"{QUEUE}.rtt.{name}" for name, _, _ in targets}
        broker.reset(list(queues.values()))
        calls, warmup = self.args.calls, self.args.warmup
        backend = self.args.redis_url
        procs = [w.start(broker, backend, self.logs, queue=queues[name])
                 for name, w, _ in targets]
        latencies, ids = {}, []
        try:
            py = [(queues[n], e) for n, _, e in targets]
            rust = [(queues[n], e) for n, _, e in targets
                    if n in ("celeriac", "celeriac-b", "raw")]
            for client, chosen in (("python", py), ("rust", rust)):
                if client == "python":
                    argv = [PYTHON, str(BENCHES / "py_client.py"), "--broker", broker.url,
                            "--backend", backend,
                            "--expects", ",".join("none" if e is None else json.dumps(e)
                                                  for _, e in chosen)]
                else:
                    argv = [str(BENCH_BIN), "rtt", "--broker", broker.url,
                            "--result-backend", backend,
                            "--expects", ",".join(json.dumps(e) for _, e in chosen)]
                argv += ["--queues", ",".join(q for q, _ in chosen), "--calls", str(calls),
                         "--warmup", str(warmup)]
                out = run_tool(argv)
                ids += out["ids"]
                for name, q in queues.items():
                    if q in out["latencies_us"]:
                        lat = out["latencies_us"][q]
                        if len(lat) != calls:
                            raise BenchError(f"{client} client made {len(lat)} calls to {q}")
                        latencies[(client, name)] = lat
            for p, (name, w, _) in zip(procs, targets):
                p.check_alive(w.label)
        finally:
            for p in procs:
                p.stop()
        self.results.delete(self.results.keys(ids))
        broker.reset(list(queues.values()))
        return latencies

    def hold(self, broker, worker: Worker, n: int) -> dict:
        """RSS while ``worker`` holds ``n`` prefetched messages (eta an hour away)."""
        broker.reset()
        prefix = f"{random.getrandbits(32):08x}"
        self.publish(broker, n, prefix, ignore_result=True, eta_secs=3600)
        proc = worker.start(broker, None, self.logs)
        try:
            deadline = time.monotonic() + 120
            while broker.ready() > 0:
                proc.check_alive(worker.label)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # let it settle: every message decoded and parked
            taken = n - broker.ready()
            rss, hwm = memory_kb(proc.tree())
            if isinstance(broker, RedisBroker) and broker.held() != taken:
                raise BenchError(f"{worker.label}: took {taken} but {broker.held()} unacked")
        except BaseException:
            proc.stop(timeout=60)
            broker.reset()
            raise
        # Workers hand held messages back on a warm shutdown (nothing is measured then):
        # every message is back in the queue, none left unacknowledged. (RabbitMQ takes its
        # time requeueing what a closed channel held: ~20 s for 10,000 on 2 busy cores.
        # Waited for, also so that none turns up in the next measurement's queue.)
        proc.stop(timeout=60)
        deadline = time.monotonic() + 120
        while (back := broker.ready()) != n and time.monotonic() < deadline:
            time.sleep(0.05)
        held = broker.held()
        broker.reset()
        if back != n or held:
            raise BenchError(f"{worker.label}: after it stopped, {back} of {n} messages were "
                             f"back in the queue and {held} unacknowledged")
        if taken < n:
            log(f"  {worker.label} held only {taken:,} of {n:,} messages after 120 s")
        return {"taken": taken, "rss_kb": rss, "hwm_kb": hwm, "label": worker.label}


    def soak(self, broker, worker: Worker, total: int, chunk: int = 50_000) -> list:
        """Feed ``total`` no-op tasks through ``worker`` (the queue topped up by ``chunk``
        whenever it falls below half of that) and sample its RSS every second: a list of
        (tasks done, seconds, RSS kB)."""
        broker.reset()
        proc = worker.start(broker, None, self.logs)
        published, samples = 0, []
        started = time.monotonic()
        next_sample = started
        try:
            while True:
                proc.check_alive(worker.label)
                ready, held = broker.ready(), broker.held()
                # Sampled before any top-up: where the publisher is slower than the worker
                # (a busy machine), the queue is topped up on every turn.
                now = time.monotonic()
                if now >= next_sample:
                    samples.append((published - ready - held, now - started,
                                    memory_kb(proc.tree())[0]))
                    next_sample += 1.0
                if published < total and ready < chunk // 2:
                    k = min(chunk, total - published)
                    self.publish(broker, k, f"{random.getrandbits(32):08x}",
                                 ignore_result=True, check=False)
                    published += k
                    continue
                if published == total and broker.drained():
                    break
                if now - started > total / 100 + 120:
                    raise BenchError(f"soak: {published - ready} of {total} done after "
                                     f"{now - started:.0f} s")
                time.sleep(0.05)
            samples.append((total, time.monotonic() - started, memory_kb(proc.tree())[0]))
        finally:
            proc.stop()
            broker.reset()
        return samples


# ---------------------------------------------------------------- statistics and report

def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def fmt_rate(values: list[float]) -> str:
    med, lo, hi = median_range(values)
    if len(values) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} ({lo:,.0f}–{hi:,.0f})"


def fmt_num(values: list[float], digits: int = 2, unit: str = "") -> str:
    med, lo, hi = median_range(values)
    if len(values) == 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def ratio(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "–"
    return f"{statistics.median(a) / statistics.median(b):.2f}×"


def machine(redis_url: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    redis_version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    rabbit = version(["rabbitmqctl", "-q", "version"])
    import celery
    import kombu
    return {
        "cores": os.cpu_count(), "memory_gb": mem_kb / 1024 / 1024, "cpu": cpu,
        "kernel": platform.release(), "python": platform.python_version(),
        "celery": celery.__version__, "kombu": kombu.__version__,
        "redis": redis_version, "rabbitmq": rabbit,
        "rustc": version(["rustc", "--version"]),
    }


# ---------------------------------------------------------------- the run

@dataclass
class Plan:
    repeats: int
    duration: float        # seconds a drain should last
    n_min: int
    n_max: int
    sweep_n: int
    hold_n: int


def plan_for(args) -> Plan:
    if args.smoke:
        return Plan(1, 0.5, 200, 400, 200, 200)
    if args.quick:
        return Plan(1, 1.5, 1000, 20_000, 1500, 10_000)
    return Plan(args.repeats, args.duration, 5000, 400_000, 4000, 10_000)


def size_for(rate: float, plan: Plan, worker: Worker) -> int:
    n = int(rate * plan.duration)
    n = -(-n // 1000) * 1000 if n > 5000 else -(-n // 100) * 100
    # Room for the steady-state timing (RabbitMQ): well over four windows.
    return max(plan.n_min, 5 * worker.window, min(plan.n_max, n))


def best_of(bench: Bench, broker, workers: list[Worker], plan: Plan,
            sweep_log: list) -> tuple[Worker, float]:
    """One drain (ignore_result) per configuration; the fastest wins."""
    best, best_rate = None, 0.0
    for w in workers:
        # Celeriac drains 10-40 times faster: more tasks, so that its drain too lasts a
        # couple of seconds (at 20,000 tasks, half a second, the start-up weighed in enough
        # to pick a configuration that longer drains then showed slower).
        n = plan.sweep_n * (20 if w.kind == "celeriac" else 1)
        try:
            d = bench.drain(broker, w, max(n, 5 * w.window), results=False)
        except BenchError as e:
            log(f"  {w.label}: failed: {e}")
            sweep_log.append((broker.name, w, None))
            continue
        log(f"  {w.label}: {d.rate:,.0f}/s")
        sweep_log.append((broker.name, w, d.rate))
        if d.rate > best_rate:
            best, best_rate = w, d.rate
    if best is None:
        raise BenchError(f"no {workers[0].kind} configuration drained the queue on {broker.name}")
    return best, best_rate


def threads_variant(w: Worker) -> Worker:
    """The same Celeriac configuration with the other runtime threading: one thread
    (``--threads 1``) if it has the default (a thread per CPU), the default if it has one."""
    args = list(w.opts.get("args", []))
    if "--threads" in args:
        i = args.index("--threads")
        del args[i:i + 2]
        label = w.label.replace(" --threads 1", "")
    else:
        args += ["--threads", "1"]
        label = f"{w.label} --threads 1"
    return Worker("celeriac", label, {**w.opts, "args": args})


def choose_for_round_trips(bench: Bench, broker, celeriac: Worker, report: dict) -> Worker:
    """Celeriac's configuration for the round trips: the drains' choice or the same with the
    other runtime threading, whichever gives Python's client the lower p50 in one round of
    calls to both in turn. Throughput and latency want different things from the runtime:
    a second thread helps a drain keep both cores busy, but every hand-off between the
    threads is a wake-up on the path of a single call."""
    other = threads_variant(celeriac)
    log(f"round-trip sweep: Python's client to Celeriac ({celeriac.label}) and "
        f"({other.label}) in turn")
    lat = bench.round_trips(broker, [("celeriac", celeriac, 5), ("celeriac-b", other, 5)])
    p50 = {name: percentile(lat[("python", name)], 50) / 1000
           for name in ("celeriac", "celeriac-b")}
    chosen = celeriac if p50["celeriac"] <= p50["celeriac-b"] else other
    for name, w in (("celeriac", celeriac), ("celeriac-b", other)):
        log(f"  {w.label}: p50 {p50[name]:.3f} ms")
        report["rtt_sweep"].append((broker.name, w, p50[name], w is chosen))
    return chosen


def run_broker(bench: Bench, broker, plan: Plan, args, report: dict) -> None:
    name = broker.name
    sweep_log = report["sweep"]
    log(f"== {name} ({broker.url})")
    if args.rtt_only:
        run_round_trips(bench, broker, plan, args, report, *rtt_only_workers(broker, args))
        return
    if args.soak_only:
        run_soak(bench, broker, args, report, soak_only_worker(args))
        return
    if args.smoke:
        celeriac = celeriac_configs()[0]
        celery = Worker("celery", "-P threads -c 4 --prefetch-multiplier 4",
                        {"args": ["-P", "threads", "-c", "4", "--prefetch-multiplier", "4"],
                         "c": 4})
        estimates = {celeriac.key: 1.0, celery.key: 1.0}
    else:
        log("sweep: Celeriac configurations")
        celeriac, rate = best_of(bench, broker, celeriac_configs(), plan, sweep_log)
        estimates = {celeriac.key: rate}
        log("sweep: Celery pools and prefetch")
        celery, rate = best_of(bench, broker, celery_configs(), plan, sweep_log)
        estimates[celery.key] = rate
    raws = raw_configs(broker)
    for w in raws:
        if args.smoke:
            estimates[w.key] = 1.0
            continue
        d = bench.drain(broker, w, 20_000 if not args.quick else 3000, results=False)
        log(f"  calibrate {w.label}: {d.rate:,.0f}/s")
        estimates[w.key] = d.rate
    report["chosen"][name] = {"celeriac": celeriac.label, "celery": celery.label}

    workers = [celeriac, celery, *raws]
    for results in (False, True):
        mode = "results" if results else "ignore_result"
        # Storing results slows every worker; start from half the rate, then size each
        # repeat on the previous one.
        est = {w.key: estimates[w.key] * (0.5 if results else 1.0) for w in workers}
        for rep in range(plan.repeats):
            for w in workers:
                n = size_for(est[w.key], plan, w)
                log(f"drain {mode} #{rep + 1}: {w.label}, N={n:,}")
                d = bench.drain(broker, w, n, results)
                est[w.key] = d.rate
                log(f"  {d.rate:,.0f}/s in {d.seconds:.2f} s, {d.cpu_per_10k:.2f} CPU s/10k, "
                    f"peak RSS {d.hwm_kb / 1024:.1f} MB (publisher {d.publish_rate:,.0f}/s)")
                report["drain"].setdefault((name, mode, w.kind, w.label), []).append(d)

    run_round_trips(bench, broker, plan, args, report,
                    choose_for_round_trips(bench, broker, celeriac, report), celery, raws)

    if args.soak:
        run_soak(bench, broker, args, report, celeriac)

    for rep in range(plan.repeats):
        for w in (celeriac.holding(plan.hold_n), celery.holding(plan.hold_n)):
            log(f"hold #{rep + 1}: {w.kind} ({w.label}) with {plan.hold_n:,} eta messages")
            h = bench.hold(broker, w, plan.hold_n)
            log(f"  RSS {h['rss_kb'] / 1024:.1f} MB (peak {h['hwm_kb'] / 1024:.1f} MB)")
            report["hold"].setdefault((name, w.kind), []).append(h)


def run_soak(bench: Bench, broker, args, report: dict, celeriac: Worker) -> None:
    """``--soak N``: N no-op tasks through Celeriac on Redis, its RSS sampled every second."""
    if not isinstance(broker, RedisBroker):
        return
    log(f"soak: {args.soak:,} tasks through Celeriac ({celeriac.label}), RSS every second")
    samples = bench.soak(broker, celeriac, args.soak)
    report["soak"] = {"broker": broker.name, "label": celeriac.label, "samples": samples}
    log("  RSS " + ", ".join(f"{rss / 1024:.1f} MB after {done:,}"
                             for done, _, rss in soak_points(samples)))


def soak_only_worker(args) -> Worker:
    """The Celeriac of a ``--soak-only`` run (no sweep): ``--celeriac-args``, by default the
    configuration the sweep chooses on Redis."""
    w = celeriac_configs()[-1]
    if args.celeriac_args:
        w = Worker("celeriac", args.celeriac_args, {"args": args.celeriac_args.split()})
    if args.celeriac_env:
        env = dict(kv.split("=", 1) for kv in args.celeriac_env.split(",") if kv)
        w = Worker("celeriac", f"{w.label} {args.celeriac_env}", {**w.opts, "env": env})
    return w


def rtt_only_workers(broker, args) -> tuple[Worker, Worker, list[Worker]]:
    """The workers of a ``--rtt-only`` run (no sweep): Celeriac with ``--celeriac-args``
    (default: its defaults), Celery ``-P solo``, and the raw responder."""
    if args.celeriac_args:
        extra = args.celeriac_args.split()
        celeriac = Worker("celeriac", args.celeriac_args, {"args": extra})
    else:
        celeriac = celeriac_configs()[0]
    celery = Worker("celery", "-P solo --prefetch-multiplier 4",
                    {"args": ["-P", "solo", "--prefetch-multiplier", "4"], "c": 1})
    return celeriac, celery, raw_configs(broker)


def run_round_trips(bench: Bench, broker, plan: Plan, args, report: dict, celeriac: Worker,
                    celery: Worker, raws: list[Worker]) -> None:
    """Round trips from both clients to Celeriac, Celery and the raw responder, repeated."""
    name = broker.name
    report["chosen"].setdefault(name, {"celeriac": celeriac.label, "celery": celery.label})
    report["rtt_chosen"][name] = celeriac.label
    responder = next(w for w in raws if w.opts["mode"] in ("kombu", "each"))
    targets = [("celeriac", celeriac, 5), ("celery", celery, 5), ("raw", responder, None)]
    if args.compare_worker:
        # A/B: another build of the interop worker (e.g. main's), measured in the same rounds.
        env = dict(kv.split("=", 1) for kv in args.compare_env.split(",") if kv)
        other = Worker("celeriac", f"{args.compare_worker} {args.compare_env}".strip(),
                       {**celeriac.opts, "bin": args.compare_worker, "env": env})
        targets.append(("celeriac-b", other, 5))
    for rep in range(plan.repeats):
        log(f"round trips #{rep + 1}: Python's client to Celeriac ({celeriac.label}), Celery "
            f"and the raw responder, Celeriac's client to Celeriac and the raw responder, "
            f"in turn")
        for (client, kind), lat in bench.round_trips(broker, targets).items():
            p50, p99 = percentile(lat, 50) / 1000, percentile(lat, 99) / 1000
            log(f"  {client} -> {kind}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
            report["rtt"].setdefault((name, client, kind), []).append((p50, p99))


def soak_trend(samples: list) -> tuple[float, float]:
    """The least-squares growth of RSS (kB) from 10 % of the tasks to the end, and the mean
    RSS over that stretch: flat memory fluctuates around a level, a leak climbs."""
    total = samples[-1][0]
    tail = [(done, rss) for done, _, rss in samples if done >= total / 10] or \
        [(done, rss) for done, _, rss in samples]
    mean = statistics.fmean(r for _, r in tail)
    if len(tail) < 3:
        return float(tail[-1][1] - tail[0][1]), mean
    slope, _ = statistics.linear_regression([d for d, _ in tail], [r for _, r in tail])
    return slope * (tail[-1][0] - tail[0][0]), mean


def soak_points(samples: list) -> list:
    """The samples nearest to 1 %, 10 %, 25 %, 50 %, 75 % and 100 % of the tasks done."""
    total = samples[-1][0]
    points = []
    for frac in (0.01, 0.1, 0.25, 0.5, 0.75, 1.0):
        best = min(samples, key=lambda s: abs(s[0] - frac * total))
        if best not in points:
            points.append(best)
    return points


def render(report: dict, args, plan: Plan, started: datetime.datetime, elapsed: float) -> str:
    m = report["machine"]
    out = []
    w = out.append
    kind_name = {"celeriac": "Celeriac", "celery": "Celery 5.7", "raw": "raw limit",
                 "celeriac-b": f"Celeriac B (`{args.compare_worker} {args.compare_env}`)"}
    w("# Celeriac vs Celery 5.7: benchmark results")
    w("")
    flags = "".join(f" {f}" for f, on in (("--quick", args.quick), ("--smoke", args.smoke),
                                           ("--rtt-only", args.rtt_only),
                                           ("--soak-only", args.soak_only),
                                           (f"--celeriac-args '{args.celeriac_args}'",
                                            (args.rtt_only or args.soak_only)
                                            and args.celeriac_args),
                                           (f"--soak {args.soak}", args.soak)) if on)
    w(f"Run {started:%Y-%m-%d %H:%M} UTC with `python3 benches/run.py{flags}` "
      f"({elapsed / 60:.1f} min, {plan.repeats} run(s) per measurement; medians, min–max in "
      f"brackets).")
    w("")
    w(f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']:.1f} GB RAM, Linux "
      f"{m['kernel']}; Redis {m['redis']}, RabbitMQ {m['rabbitmq']} on the same machine; "
      f"Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}; {m['rustc']}. "
      f"Load average {report['load_before']} before, {report['load_after']} after. "
      "The machine is shared: other builds and test runs may have run at the same time, so "
      "single numbers are noisy; compare within one run.")
    w("")
    if report["drain"]:
        w("## Throughput: draining a pre-filled queue of `interop.noop` tasks (tasks/s)")
        w("")
        w("| broker | results | Celeriac | Celery 5.7 (best) | raw limit (best) | "
          "Celeriac / Celery | Celeriac / raw |")
        w("| --- | --- | --- | --- | --- | --- | --- |")
        drains = report["drain"]
        for broker in report["brokers"]:
            for mode in ("ignore_result", "results"):
                def rates(kind):
                    cells = [(label, [d.rate for d in ds]) for (b, md, k, label), ds in drains.items()
                             if b == broker and md == mode and k == kind]
                    return max(cells, key=lambda c: statistics.median(c[1]), default=(None, []))
                _, ce = rates("celeriac")
                _, cy = rates("celery")
                raw_label, rw = rates("raw")
                mode_text = "ignored" if mode == "ignore_result" else "stored in Redis"
                w(f"| {broker} | {mode_text} | {fmt_rate(ce) if ce else '–'} | "
                  f"{fmt_rate(cy) if cy else '–'} | {fmt_rate(rw) if rw else '–'} | "
                  f"{ratio(ce, cy)} | {ratio(ce, rw)} |")
        w("")
        w("Every configuration measured (N = tasks per run, CPU = utime+stime of the worker's "
          "process tree per 10,000 tasks, peak RSS = VmHWM summed over the tree):")
        w("")
        w("| broker | results | worker | configuration | N | tasks/s | CPU s / 10k | "
          "peak RSS MB |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for (broker, mode, kind, label), ds in drains.items():
            ns = sorted({d.n for d in ds})
            n_text = f"{ns[0]:,}" if len(ns) == 1 else f"{ns[0]:,}–{ns[-1]:,}"
            w(f"| {broker} | {'ignored' if mode == 'ignore_result' else 'stored'} | "
              f"{kind_name[kind]} | {label} | {n_text} | {fmt_rate([d.rate for d in ds])} | "
              f"{fmt_num([d.cpu_per_10k for d in ds])} | "
              f"{fmt_num([d.hwm_kb / 1024 for d in ds], 1)} |")
        w("")
        if report["sweep"]:
            w("Configurations swept (one run each, `ignore_result`, N = "
              f"{plan.sweep_n:,} for Celery, {plan.sweep_n * 20:,} for Celeriac, at least five "
              "prefetch windows); the best per broker is used above:")
            w("")
            w("| broker | worker | configuration | tasks/s |")
            w("| --- | --- | --- | --- |")
            for broker, wk, rate in report["sweep"]:
                chosen = report["chosen"].get(broker, {}).get(wk.kind) == wk.label
                w(f"| {broker} | {kind_name[wk.kind]} | {wk.label}{' **(chosen)**' if chosen else ''}"
                  f" | {'failed' if rate is None else f'{rate:,.0f}'} |")
            w("")
    w(f"## Round trip: {args.calls:,} calls in a row (ms)")
    w("")
    w("Python's client calls `add.apply_async((2, 3), queue=Q).get()` (`add.delay(2, 3)` "
      "routed to the worker's queue); Celeriac's client `send_task` + `get`. The raw responder "
      "answers every task with a SUCCESS in the Redis backend as fast as it can, so against it "
      "the time is the client's own floor. The workers run at once, each on its own queue, and "
      "each client calls them in turn, one call at a time, so all of them see the same load "
      "of the machine. The result backend is Redis in every case.")
    w("")
    if report["rtt_chosen"]:
        w("Celeriac runs " + "; ".join(f"on {b}: `{label}`"
                                        for b, label in report["rtt_chosen"].items()) + ".")
        w("")
    if report["rtt_sweep"]:
        w("Celeriac's runtime threading for the round trips is measured, as its configuration "
          "for the drains is: its drains' choice and the same with the other threading (one "
          f"runtime thread, or one per CPU) take one round of {args.calls:,} calls from Python's "
          "client in turn, and the one with the lower p50 runs the round trips above. Celery "
          "runs its drains' choice.")
        w("")
        w("| broker | configuration | Python client p50 (ms) |")
        w("| --- | --- | --- |")
        for broker, wk, p50, chosen in report["rtt_sweep"]:
            w(f"| {broker} | {wk.label}{' **(chosen)**' if chosen else ''} | {p50:.3f} |")
        w("")
    w("| broker | client | worker | p50 | p99 | p50 / the client's floor |")
    w("| --- | --- | --- | --- | --- | --- |")
    rtt = report["rtt"]
    for broker in report["brokers"]:
        for client in ("python", "rust"):
            floor = [p50 for p50, _ in rtt.get((broker, client, "raw"), [])]
            for kind in ("celeriac", "celeriac-b", "celery", "raw"):
                vals = rtt.get((broker, client, kind))
                if not vals:
                    continue
                p50s = [v[0] for v in vals]
                p99s = [v[1] for v in vals]
                worker = {"raw": "raw responder (floor)"}.get(kind, kind_name[kind])
                rel = ratio(p50s, floor) if kind != "raw" else "–"
                w(f"| {broker} | {'Python' if client == 'python' else 'Celeriac (Rust)'} | "
                  f"{worker} | {fmt_num(p50s, 3)} | {fmt_num(p99s, 3)} | {rel} |")
    w("")
    if report["hold"]:
        w(f"## Memory while holding {plan.hold_n:,} prefetched messages")
        w("")
        w("Tasks with an eta an hour away, which every worker takes and keeps; each worker runs "
          "its chosen pool and concurrency with a prefetch multiplier that lets it reserve them all "
          "at once. RSS is summed over the worker's processes once the queue is empty (and 1 s "
          "more).")
        w("")
        w("| broker | worker | configuration | held | RSS MB | peak RSS MB |")
        w("| --- | --- | --- | --- | --- | --- |")
        for (broker, kind), hs in report["hold"].items():
            held = min(h["taken"] for h in hs)
            w(f"| {broker} | {kind_name[kind]} | {hs[0]['label']} | "
              f"{held:,}{'' if held == plan.hold_n else ' (not all in 120 s)'} | "
              f"{fmt_num([h['rss_kb'] / 1024 for h in hs], 1)} | "
              f"{fmt_num([h['hwm_kb'] / 1024 for h in hs], 1)} |")
        w("")
    soak = report.get("soak")
    if soak:
        samples = soak["samples"]
        rss = [r for _, _, r in samples]
        w(f"## Memory over a long run: {samples[-1][0]:,} tasks through Celeriac "
          f"({soak['broker']}, {soak['label']}, no results)")
        w("")
        growth, mean = soak_trend(samples)
        w("The queue is topped up by 50,000 whenever it falls below 25,000; RSS sampled every "
          f"second ({len(samples)} samples, min {min(rss) / 1024:.1f} MB, max "
          f"{max(rss) / 1024:.1f} MB; least-squares trend from 10 % of the tasks to the end: "
          f"{growth / 1024:+.1f} MB over the run, {growth / mean:+.0%} of the mean).")
        w("")
        w("| tasks done | seconds | RSS MB |")
        w("| --- | --- | --- |")
        for done, secs, r in soak_points(samples):
            w(f"| {done:,} | {secs:.0f} | {r / 1024:.1f} |")
        w("")
    w("## Issue 6's targets")
    w("")
    w("| target | measured | met |")
    w("| --- | --- | --- |")
    for target, measured, met in targets(report):
        w(f"| {target} | {measured} | {met} |")
    w("")
    w("## How it is measured")
    w("")
    w("- One publisher fills the queue before each worker starts (`celeriac-bench publish`: "
      "the messages Celery 5.7's `send_task` writes, pipelined `LPUSH`es on Redis, publisher "
      "confirms awaited per 1,000 on RabbitMQ, persistent as kombu sends them). The clock "
      "starts when the worker takes its first message (start-up is not counted) and stops "
      "when the queue is empty and nothing is unacknowledged (Redis: kombu's `unacked` hash "
      "is empty; RabbitMQ: no message ready; with results: when every "
      "`celery-task-meta-<id>` exists). After the worker stops, nothing may be back in the "
      "queue and every result must be present, or the run fails.")
    w("- RabbitMQ does not report what a consumer holds unacknowledged (a passive "
      "`queue.declare` counts ready messages only), so on RabbitMQ without results the "
      "steady state is timed: from when the queue has fallen below N − window − N/10 (the "
      "worker's prefetch window, concurrency × multiplier, long since full) until it is "
      "empty; in that interval each delivery was let through by an ack, so the queue falls "
      "as fast as the worker acknowledges. Rate and CPU are per message of that interval. "
      "Every message is checked to be acknowledged after the worker stops.")
    w("- Workers log at WARNING (Celery's default; `RUST_LOG=warn` for Celeriac). Celery runs "
      "`python-fixtures/pyinterop.py` with `--without-gossip --without-mingle "
      "--without-heartbeat`; without results it has no backend, and messages carry "
      "`ignore_result: true`. Redis (broker and backend): "
      f"{report['redis']}; RabbitMQ: vhost `celeriac-bench`, queue `celeriac.bench`.")
    w("- The raw limit (`celeriac-bench raw`) only takes and acknowledges. Redis, kombu's "
      "bookkeeping: `BRPOP`, `MULTI ZADD unacked_index + HSET unacked EXEC`, ack `MULTI ZREM "
      "+ HDEL EXEC`, one message per round trip, or `RPOP <n>` and the same bookkeeping for "
      "up to 100 messages per round trip. RabbitMQ: prefetch 200, a `basic.ack` per message, "
      "or one `multiple=true` ack per batch at hand (≤ 100); or prefetch 1,000 and "
      "batches of ≤ 500. With results it stores Celery's "
      "SUCCESS value (`SETEX` + `PUBLISH`), pipelined per batch.")
    w("- Celeriac's interop worker and the raw limit run on jemalloc, with the same options "
      "(`narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0`, "
      "`interop-tests/src/bin/interop-worker/allocator.rs`); Celery on CPython's allocator.")
    w("- CPU seconds are counted from the first message taken to the end of the drain; peak "
      "RSS (VmHWM) includes start-up. For a prefork pool, RSS is summed over the parent and "
      "its children, so shared pages count more than once.")
    w(f"- The Python client's first call waits for the worker, then {args.warmup} untimed "
      f"warm-up calls, then {args.calls:,} timed ones; Celeriac's client likewise.")
    w("")
    return "\n".join(out)


def targets(report: dict) -> list[tuple[str, str, str]]:
    """Issue 6's targets against this run's medians."""
    def med(vals):
        return statistics.median(vals) if vals else None

    def drain_rate(broker, mode, kind="celeriac"):
        cells = [[d.rate for d in ds] for (b, md, k, _), ds in report["drain"].items()
                 if b == broker and md == mode and k == kind]
        return max((med(c) for c in cells), default=None)

    rows = []

    def row(text, value, goal, unit, higher=True, fmt="{:,.0f}"):
        if value is None:
            rows.append((text, "not measured", "–"))
            return
        met = value >= goal if higher else value <= goal
        if met:
            verdict = "yes"
        # Rounded away from the target (to 0.1 %), so that a miss never reads as 100 %.
        elif higher:
            verdict = f"no: {math.floor(value / goal * 1000) / 10:.1f} % of the target"
        else:
            verdict = f"no: {math.ceil((value / goal - 1) * 1000) / 10:.1f} % over"
        rows.append((text, fmt.format(value) + unit, verdict))

    row("Redis, ignore_result: ≥ 20,000 tasks/s", drain_rate("Redis", "ignore_result"),
        20_000, "/s")
    row("RabbitMQ, with acks: ≥ 25,000 tasks/s", drain_rate("RabbitMQ", "ignore_result"),
        25_000, "/s")
    for broker in ("Redis", "RabbitMQ"):
        row(f"{broker}, results stored in Redis: ≥ 10,000 tasks/s",
            drain_rate(broker, "results"), 10_000, "/s")
    for broker in ("Redis", "RabbitMQ"):
        ce = med([v[0] for v in report["rtt"].get((broker, "python", "celeriac"), [])])
        floor = med([v[0] for v in report["rtt"].get((broker, "python", "raw"), [])])
        if ce is not None and floor:
            row(f"{broker}, Python client p50 within 10 % of its floor ({floor:.3f} ms)",
                ce / floor, 1.10, "× the floor", higher=False, fmt="{:.2f}")
    rust = med([v[0] for v in report["rtt"].get(("Redis", "rust", "celeriac"), [])])
    rust_floor = med([v[0] for v in report["rtt"].get(("Redis", "rust", "raw"), [])])
    floor_text = f" (its floor: {rust_floor:.3f} ms)" if rust_floor else ""
    row(f"Redis, Celeriac's client p50 ≤ 0.5 ms{floor_text}", rust, 0.5, " ms", higher=False,
        fmt="{:.3f}")
    for broker in ("Redis", "RabbitMQ"):
        rss = med([h["rss_kb"] / 1024 for h in report["hold"].get((broker, "celeriac"), [])])
        row(f"{broker}, ≤ 20 MB RSS holding 10,000 prefetched messages", rss, 20, " MB",
            higher=False, fmt="{:.1f}")
    soak = report.get("soak")
    if soak:
        samples = soak["samples"]
        growth, mean = soak_trend(samples)
        rss = [r for _, _, r in samples]
        rows.append((f"memory flat over a {samples[-1][0]:,}-task run ({soak['broker']})",
                     f"{min(rss) / 1024:.1f}–{max(rss) / 1024:.1f} MB; trend after the first "
                     f"10 %: {growth / 1024:+.1f} MB over the run ({growth / mean:+.0%})",
                     "yes" if abs(growth) <= 0.10 * mean else "no"))
    else:
        rows.append(("memory flat over a 1,000,000-task run", "not run (`--soak 1000000`)", "–"))
    return rows


def build(args) -> None:
    if args.no_build:
        for path in (WORKER_BIN, BENCH_BIN):
            if not path.exists():
                raise BenchError(f"{path} is missing (build it, or drop --no-build)")
        return
    # Both in one invocation: the two binaries then share one build of the celeriac crate
    # (the features unified), and interop-worker comes out exactly as `scripts/test.sh`'s
    # `cargo build --release -p interop-tests --bin interop-worker` made it, so this is a
    # no-op after that when celeriac-bench is up to date. (celeriac-bench built alone
    # would need a second build of celeriac with other features.)
    log("cargo build --release (interop-worker, celeriac-bench)")
    t0 = time.monotonic()
    subprocess.run(["cargo", "build", "--release", "-p", "interop-tests", "--bin",
                    "interop-worker", "-p", "celeriac-benches", "--bin", "celeriac-bench"],
                   cwd=REPO, check=True)
    log(f"  built in {time.monotonic() - t0:.1f} s")


def ensure_vhost(vhost: str) -> None:
    """Create the benchmark's own vhost (never touching anyone else's)."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    listed = subprocess.run([ctl, "-q", "list_vhosts"], capture_output=True, text=True,
                            timeout=60)
    if listed.returncode != 0:
        raise BenchError(f"rabbitmqctl list_vhosts failed: {listed.stderr.strip()}")
    if vhost not in listed.stdout.split():
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, timeout=60)
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, timeout=60)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def smoke_checks(report: dict, plan: Plan) -> None:
    """What --smoke asserts beyond what every measurement checks itself (each drain
    finished, nothing back in the queue or unacknowledged, every result present and
    SUCCESS): that every measurement was made."""
    for (broker, mode, kind, label), ds in report["drain"].items():
        for d in ds:
            if not d.n or d.seconds <= 0:
                raise BenchError(f"{broker} {mode} {label}: empty measurement")
    expected_cells = {(b, m, k) for b in report["brokers"]
                      for m in ("ignore_result", "results") for k in ("celeriac", "celery", "raw")}
    got = {(b, m, k) for (b, m, k, _) in report["drain"]}
    if expected_cells - got:
        raise BenchError(f"missing drains: {sorted(expected_cells - got)}")
    for b in report["brokers"]:
        for key in ((b, "python", "celeriac"), (b, "python", "celery"), (b, "python", "raw"),
                    (b, "rust", "celeriac"), (b, "rust", "raw")):
            if key not in report["rtt"]:
                raise BenchError(f"missing round trips {key}")
        for kind in ("celeriac", "celery"):
            holds = report["hold"].get((b, kind))
            if not holds:
                raise BenchError(f"missing memory while holding: {b} {kind}")
            for h in holds:
                if h["taken"] != plan.hold_n or h["rss_kb"] <= 0:
                    raise BenchError(f"{b} {kind} held {h['taken']} of {plan.hold_n} "
                                     f"messages (RSS {h['rss_kb']} kB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="one run per measurement, small N, no RESULTS.md")
    p.add_argument("--smoke", action="store_true",
                   help="CI smoke test: Redis only, tiny N, asserts; no RESULTS.md")
    p.add_argument("--brokers", default=None, help="comma list: redis,amqp (default both; "
                   "--smoke: redis)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0,
                   help="seconds each drain should last (N is sized from the sweep)")
    p.add_argument("--calls", type=int, default=None, help="round trips per run (1,000)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--redis-port", type=int, default=None,
                   help="port of the harness's own redis-server on 127.0.0.1 (default 6390, "
                   "or the next free one)")
    p.add_argument("--redis-url", default=os.environ.get("CELERIAC_BENCH_REDIS"),
                   help="use this running Redis (broker and backend) instead of starting "
                   "one; the harness deletes only its own keys there")
    p.add_argument("--amqp-url", default=os.environ.get("CELERIAC_BENCH_AMQP",
                                                        "amqp://guest:guest@127.0.0.1:5672"),
                   help="without the vhost")
    p.add_argument("--vhost", default="celeriac-bench")
    p.add_argument("--out", default=None,
                   help="Markdown report path (default benches/RESULTS.md for a full run)")
    p.add_argument("--no-build", action="store_true", help="use the release binaries as built")
    p.add_argument("--rtt-only", action="store_true",
                   help="only the round trips (no sweep, drains or memory); Celeriac runs "
                   "with --celeriac-args")
    p.add_argument("--celeriac-args", default=None,
                   help="with --rtt-only: the interop worker's options (default: its "
                   "defaults), e.g. '-c 64 --prefetch-multiplier 16'")
    p.add_argument("--compare-worker", default=None, metavar="PATH",
                   help="round trips: also measure this interop-worker binary (another "
                   "build, e.g. main's) as 'Celeriac B', in the same interleaved rounds")
    p.add_argument("--compare-env", default="", metavar="K=V,...",
                   help="environment for --compare-worker (e.g. TOKIO_WORKER_THREADS=1)")
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="also feed N tasks through Celeriac on Redis, sampling its RSS "
                   "(issue 6's 1,000,000-task memory check; ~4 min per million)")
    p.add_argument("--soak-only", action="store_true",
                   help="only the --soak run (default 1,000,000 tasks), on Redis; Celeriac "
                   "runs with --celeriac-args (default: -c 64 --prefetch-multiplier 16 --threads 1)")
    p.add_argument("--celeriac-env", default="", metavar="K=V,...",
                   help="with --soak-only: environment for Celeriac's worker (e.g. "
                   "GLIBC_TUNABLES=glibc.malloc.arena_max=1, to see the allocator's share)")
    args = p.parse_args()
    if args.soak_only:
        args.soak = args.soak or 1_000_000
    if args.calls is None:
        args.calls = 20 if args.smoke else 1000
    if args.smoke:
        args.warmup = min(args.warmup, 5)
    brokers = (args.brokers or ("redis" if args.smoke else "redis,amqp")).split(",")
    plan = plan_for(args)
    out_path = Path(args.out) if args.out else (
        None if (args.quick or args.smoke or args.rtt_only or args.soak_only)
        else BENCHES / "RESULTS.md")

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    # A CI timeout or a closed terminal stops the run like Ctrl-C: through the `finally`s
    # below, which stop the workers and the harness's own Redis.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    logs = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    log(f"logs in {logs}")
    server = None
    try:
        build(args)
        t_built = time.monotonic()
        if args.redis_url:
            try:
                redis.Redis.from_url(args.redis_url).ping()
            except redis.RedisError as e:
                raise BenchError(f"Redis does not answer at {args.redis_url}: {e}") from None
            redis_desc = f"the running server `{args.redis_url}` (`--redis-url`)"
        else:
            server = start_redis(args.redis_port, logs)
            args.redis_url = server.url
            log(f"redis-server {server.version} (pid {server.proc.pid}) on 127.0.0.1:"
                f"{server.port}, the harness's own")
            redis_desc = (f"the harness's own `redis-server` on 127.0.0.1:{server.port}, "
                          "started for the run without persistence (`--save '' "
                          "--appendonly no`), database 0")
        report = {"machine": machine(args.redis_url), "brokers": [], "drain": {}, "rtt": {},
                  "hold": {}, "sweep": [], "chosen": {}, "rtt_sweep": [], "rtt_chosen": {},
                  "load_before": load_average(),
                  "redis": redis_desc}
        bench = Bench(args, logs)
        for b in brokers:
            if b == "redis":
                broker = RedisBroker(args.redis_url)
            elif b == "amqp":
                ensure_vhost(args.vhost)
                broker = AmqpBroker(args.amqp_url, args.vhost)
            else:
                raise BenchError(f"unknown broker {b!r} (redis, amqp)")
            report["brokers"].append(broker.name)
            try:
                run_broker(bench, broker, plan, args, report)
            finally:
                broker.reset()
                broker.close()
        report["load_after"] = load_average()
        if args.smoke:
            smoke_checks(report, plan)
    except BenchError as e:
        log(f"FAILED: {e} (logs kept in {logs})")
        return 1
    except subprocess.CalledProcessError as e:
        log(f"FAILED: {' '.join(e.cmd)} exited with {e.returncode}")
        return 1
    except KeyboardInterrupt:
        log(f"interrupted (logs kept in {logs})")
        return 130
    finally:
        if server is not None:
            server.stop()
    text = render(report, args, plan, started, time.monotonic() - t_start)
    print(text)
    if out_path:
        out_path.write_text(text)
        log(f"wrote {out_path}")
    if args.smoke:
        log(f"smoke test passed in {time.monotonic() - t_built:.0f} s after the build: "
            "every drain finished "
            "with nothing left unacknowledged, every result present and SUCCESS, every "
            "measurement made")
    shutil.rmtree(logs, ignore_errors=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
