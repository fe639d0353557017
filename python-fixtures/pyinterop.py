"""A Python stand-in for the Rust ``interop-worker`` (shared INTEROP.md).

It registers the same ``interop.*`` task names with the same behaviour, so the
pytest interop suite can be validated without the Rust worker
(``INTEROP_WORKER=python``) and so a Python and a Rust worker can drain one
queue together. Start it with::

    celery -A pyinterop worker -P threads -c 4

The interop worker's flags that ``celery worker`` has no option for are read
from the environment, set by the suite's conftest:

- ``PYINTEROP_ACKS_LATE=1``: Celery's ``task_acks_late`` (``--acks-late``);
- ``PYINTEROP_QUEUE_BINDINGS=queue=exchange:type:key;...``: Celery's
  ``task_queues`` (``--queue-binding``, one per binding);
- ``PYINTEROP_VISIBILITY_TIMEOUT=<seconds>``: the Redis transport's
  ``visibility_timeout`` (``--visibility-timeout``). Restore sweeps then run every
  second so that a killed worker's messages come back soon after the timeout,
  as they should from the Rust worker. Redis only: AMQP has no visibility timeout;
- ``PYINTEROP_RESULT_EXTENDED=1``: Celery's ``result_extended`` (``--result-extended``);
- ``PYINTEROP_TRACK_STARTED=1``: Celery's ``task_track_started`` (``--track-started``).

``--time-limit``, ``--soft-time-limit`` and ``--statedb`` are ``celery worker``'s own
options (time limits need the prefork pool: ``-P prefork``).

The ``interop.semantics.*`` tasks mirror the Rust worker's (interop-worker/semantics.rs),
with the same Celery options.

The broker and backend come from ``celery -b URL --result-backend URL``: Redis or AMQP
(``amqp://``) for the broker, Redis or ``rpc://`` for the backend.
"""

import os
import threading
import time
from datetime import datetime, timedelta, timezone

from celery import Celery, bootsteps
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.utils.time import maybe_iso8601

DEFAULT_URL = "redis://127.0.0.1:6379/0"

# The range of the Rust worker's i64 arguments and results.
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

app = Celery(
    "pyinterop",
    broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_URL),
    # The Rust worker stores no results unless given a backend; mirror that.
    backend=os.environ.get("CELERY_RESULT_BACKEND") or None,
)
app.conf.update(
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    # Lost connections at start-up should fail the fixture, not hang it.
    broker_connection_retry_on_startup=True,
)

if os.environ.get("PYINTEROP_ACKS_LATE") == "1":
    app.conf.task_acks_late = True
    # With acks_late a worker that dies mid-task must leave the message for a
    # successor, which is what the Rust worker does too.
    app.conf.task_reject_on_worker_lost = True

class WakeUp(bootsteps.StartStopStep):
    """Wake the worker's event loop twice a second.

    The loop notices a SIGTERM only between two polls. On Redis the transport's own 1 s
    poll wakes it; on AMQP nothing may for up to 10 s (the hub's longest sleep), so a
    warm shutdown would idle that long before it starts. The Rust worker stops at once.
    """

    requires = ("celery.worker.components:Hub",)

    def start(self, worker):
        if worker.hub is not None:
            worker.hub.call_repeatedly(0.5, _nothing)


def _nothing():
    pass


app.steps["worker"].add(WakeUp)

# AMQP heartbeats every 10 s (Celery's default is 120 s; Redis ignores this). After
# RabbitMQ restarts under it, Celery 5.7's worker with the thread pool can stall in a
# blocking read on its new connection until the broker drops that connection for missed
# heartbeats, then reconnects and carries on: 120 s heartbeats made that a 5-minute stall,
# 10 s ones make it about half a minute. The Rust worker has no such stall to mask; the
# broker-restart test holds either worker to the same outcome.
app.conf.broker_heartbeat = 10

if os.environ.get("PYINTEROP_RESULT_EXTENDED") == "1":
    app.conf.result_extended = True

if os.environ.get("PYINTEROP_TRACK_STARTED") == "1":
    app.conf.task_track_started = True

if os.environ.get("PYINTEROP_QUEUE_BINDINGS"):
    from kombu import Exchange, Queue

    _queues = []
    for spec in os.environ["PYINTEROP_QUEUE_BINDINGS"].split(";"):
        _queue, _rest = spec.split("=", 1)
        _exchange, _type, _key = _rest.split(":", 2)
        _queues.append(Queue(_queue, Exchange(_exchange, type=_type), routing_key=_key))
    app.conf.task_queues = _queues

if os.environ.get("PYINTEROP_VISIBILITY_TIMEOUT"):
    app.conf.broker_transport_options = {
        "visibility_timeout": float(os.environ["PYINTEROP_VISIBILITY_TIMEOUT"]),
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }


def _int(name, value):
    """Reject what the Rust worker's i64 parameters reject (bools, floats, text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not I64_MIN <= value <= I64_MAX:
        raise TypeError(f"{name}: {value} does not fit in a signed 64-bit integer")
    return value


def _i64_result(what, value):
    if not I64_MIN <= value <= I64_MAX:
        raise OverflowError(f"{what} overflows a signed 64-bit integer")
    return value


def _seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"seconds: expected a number, got {type(value).__name__}")
    return value


@app.task(name="interop.noop")
def noop():
    """Return None at once."""
    return None


@app.task(name="interop.add")
def add(x, y):
    """Return ``x + y``; fails with OverflowError outside the i64 range."""
    return _i64_result(f"{x} + {y}", _int("x", x) + _int("y", y))


@app.task(name="interop.mul")
def mul(x, y):
    """Return ``x * y``; fails with OverflowError outside the i64 range."""
    return _i64_result(f"{x} * {y}", _int("x", x) * _int("y", y))


@app.task(name="interop.echo")
def echo(value):
    """Return ``value`` unchanged."""
    return value


@app.task(name="interop.concat")
def concat(parts, sep=""):
    """Return ``sep.join(parts)``."""
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        raise TypeError("parts: expected a list of strings")
    if not isinstance(sep, str):
        raise TypeError("sep: expected a string")
    return sep.join(parts)


@app.task(name="interop.xsum")
def xsum(values):
    """Return the sum of ``values``."""
    if not isinstance(values, list):
        raise TypeError("values: expected a list of integers")
    return _i64_result("xsum", sum(_int("values[]", v) for v in values))


@app.task(name="interop.fail")
def fail(message):
    """Fail with ``ValueError(message)``."""
    if not isinstance(message, str):
        raise TypeError("message: expected a string")
    raise ValueError(message)


@app.task(name="interop.panic")
def panic():
    """The Rust task panics; the closest Python equivalent is an unexpected error."""
    raise RuntimeError("interop.panic: deliberate panic")


@app.task(name="interop.sleep")
def sleep(seconds):
    """Wait ``seconds`` (a thread of the pool here) and return them."""
    time.sleep(_seconds(seconds))
    return seconds


@app.task(name="interop.blocking_sleep")
def blocking_sleep(seconds):
    """Block the thread for ``seconds`` and return them."""
    time.sleep(_seconds(seconds))
    return seconds


@app.task(name="interop.flaky", bind=True, max_retries=None)
def flaky(self, failures):
    """Retry (0.1 s countdown) while ``retries < failures``, then return the retries made."""
    failures = _int("failures", failures)
    if self.request.retries < failures:
        raise self.retry(countdown=0.1)
    return self.request.retries


@app.task(name="interop.whoami", bind=True)
def whoami(self):
    """Return what the request context says about this call."""
    req = self.request
    return {
        "hostname": req.hostname,
        "task_id": req.id,
        "retries": req.retries,
        "root_id": req.root_id,
        "parent_id": req.parent_id,
        "delivery_info": dict(req.delivery_info or {}),
    }


# --- interop.semantics.*: Celery's execution options, one task each -------------------
#
# Each task notes its runs (task id -> one entry per run) in this process, returned by
# ``interop.semantics.runs``. With the prefork pool each child has its own log, so the
# tests that read it run on the thread pool.

_RUNS = {}
_RUNS_LOCK = threading.Lock()


def _epoch(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = maybe_iso8601(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _record(req):
    run = {
        "retries": req.retries,
        "started": time.time(),
        "eta": _epoch(req.eta),
        "redelivered": bool((req.delivery_info or {}).get("redelivered")),
        "hostname": req.hostname,
    }
    with _RUNS_LOCK:
        runs = _RUNS.setdefault(req.id, [])
        runs.append(run)
        return list(runs)


@app.task(name="interop.semantics.runs")
def semantics_runs(task_id):
    """The runs of ``task_id`` in this worker process so far."""
    with _RUNS_LOCK:
        return list(_RUNS.get(task_id, []))


@app.task(name="interop.semantics.record", bind=True)
def semantics_record(self, value=None):
    """Note the run and return ``value``."""
    _record(self.request)
    return value


@app.task(name="interop.semantics.context", bind=True)
def semantics_context(self, value=None, retry_times=None):
    """The whole request context (after ``retry_times`` retries, 0.1 s apart)."""
    req = self.request
    _record(req)
    if req.retries < (retry_times or 0):
        raise self.retry(countdown=0.1)
    timelimit = req.timelimit
    return {
        "id": req.id,
        "name": req.task,
        "args": list(req.args or []),
        "kwargs": dict(req.kwargs or {}),
        "retries": req.retries,
        "eta": req.eta,
        "expires": req.expires,
        "root_id": req.root_id,
        "parent_id": req.parent_id,
        "group": req.group,
        "group_index": req.group_index,
        "correlation_id": req.correlation_id,
        "reply_to": req.reply_to,
        "hostname": req.hostname,
        "delivery_info": dict(req.delivery_info or {}),
        "headers": dict(req.headers or {}),
        "timelimit": list(timelimit) if timelimit else [None, None],
        "ignore_result": req.ignore_result,
    }


@app.task(name="interop.semantics.retry", bind=True)
def semantics_retry(self, failures, countdown=None, eta_in=None, max_retries=None, exc=None):
    """Retry with these options while ``retries < failures``; then return the runs."""
    runs = _record(self.request)
    if self.request.retries >= failures:
        return runs
    cause = ValueError(f"{exc} {self.request.retries}") if exc is not None else None
    eta = datetime.now(timezone.utc) + timedelta(seconds=eta_in) if eta_in is not None else None
    raise self.retry(exc=cause, countdown=countdown, eta=eta, max_retries=max_retries)


def _attempt_failure(exc_type, req):
    kinds = {"ConnectionError": ConnectionError, "ValueError": ValueError, "KeyError": KeyError}
    return kinds[exc_type or "ConnectionError"](f"attempt {req.retries}")


@app.task(name="interop.semantics.autoretry", bind=True, autoretry_for=(ConnectionError,),
          max_retries=3, retry_backoff=1, retry_backoff_max=2, retry_jitter=False)
def semantics_autoretry(self, failures, exc_type=None):
    """Fail while ``retries < failures``; autoretry on ConnectionError with backoff."""
    runs = _record(self.request)
    if self.request.retries < failures:
        raise _attempt_failure(exc_type, self.request)
    return runs


@app.task(name="interop.semantics.autoretry_jitter", bind=True, autoretry_for=(Exception,),
          max_retries=5, retry_backoff=2, retry_backoff_max=2, retry_jitter=True)
def semantics_autoretry_jitter(self, failures, exc_type=None):
    """Fail while ``retries < failures``; autoretry on anything, with full jitter."""
    runs = _record(self.request)
    if self.request.retries < failures:
        raise _attempt_failure(exc_type, self.request)
    return runs


@app.task(name="interop.semantics.autoretry_plain", bind=True, autoretry_for=(ConnectionError,),
          max_retries=1, default_retry_delay=1)
def semantics_autoretry_plain(self, failures):
    """Fail while ``retries < failures``; autoretry after default_retry_delay."""
    runs = _record(self.request)
    if self.request.retries < failures:
        raise _attempt_failure(None, self.request)
    return runs


@app.task(name="interop.semantics.limited_sleep", time_limit=1)
def semantics_limited_sleep(seconds):
    """``interop.sleep`` with a 1 s hard time limit."""
    time.sleep(_seconds(seconds))
    return seconds


@app.task(name="interop.semantics.limited_blocking_sleep", time_limit=1)
def semantics_limited_blocking_sleep(seconds):
    """``interop.blocking_sleep`` with a 1 s hard time limit."""
    time.sleep(_seconds(seconds))
    return seconds


def _sleep_to_soft_limit(seconds, catch):
    start = time.monotonic()
    try:
        time.sleep(_seconds(seconds))
    except SoftTimeLimitExceeded:
        if catch:
            return {"soft_limit": True, "elapsed": time.monotonic() - start}
        raise
    return {"soft_limit": False, "elapsed": time.monotonic() - start}


@app.task(name="interop.semantics.soft_sleep")
def semantics_soft_sleep(seconds, catch=False):
    """Sleep unless the soft time limit in force (message's, else worker's) comes first."""
    return _sleep_to_soft_limit(seconds, catch)


@app.task(name="interop.semantics.soft_limited", soft_time_limit=1, time_limit=10)
def semantics_soft_limited(seconds, catch=False):
    """Sleep unless the task's own 1 s soft time limit comes first."""
    return _sleep_to_soft_limit(seconds, catch)


@app.task(name="interop.semantics.soft_limited_blocking", soft_time_limit=1, time_limit=10)
def semantics_soft_limited_blocking(seconds, catch=False):
    """The same in Python (the Rust twin is a blocking function polling its limit)."""
    return _sleep_to_soft_limit(seconds, catch)


@app.task(name="interop.semantics.rated", bind=True, rate_limit="5/s")
def semantics_rated(self):
    """At most 5 starts a second; return the start time."""
    _record(self.request)
    return time.time()


@app.task(name="interop.semantics.ignored", bind=True, ignore_result=True)
def semantics_ignored(self, value=None):
    """Note the run and return ``value``; the result is never stored."""
    _record(self.request)
    return value


@app.task(name="interop.semantics.tracked", track_started=True)
def semantics_tracked(seconds):
    """Sleep; STARTED is stored when it begins."""
    time.sleep(_seconds(seconds))
    return seconds


@app.task(name="interop.semantics.late_sleep", acks_late=True)
def semantics_late_sleep(seconds):
    """Sleep; the message is acknowledged when it ends."""
    time.sleep(_seconds(seconds))
    return seconds


@app.task(name="interop.semantics.reject", bind=True, acks_late=True)
def semantics_reject(self, requeue):
    """Reject the message on the first run; a requeued one returns runs and redelivered."""
    runs = _record(self.request)
    if len(runs) == 1:
        raise Reject(f"rejected on run 1 (requeue={requeue})", requeue=requeue)
    return {"runs": len(runs), "redelivered": bool(self.request.delivery_info.get("redelivered"))}


@app.task(name="interop.semantics.revoke")
def semantics_revoke(task_ids):
    """Add ids to the worker's revoked set (what the ``revoke`` control command does)."""
    from celery.worker import state as worker_state
    for task_id in task_ids:
        worker_state.revoked.add(task_id)
    return len(worker_state.revoked)
