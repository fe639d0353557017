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
  as they should from the Rust worker. Redis only: AMQP has no visibility timeout.

The broker and backend come from ``celery -b URL --result-backend URL``: Redis or AMQP
(``amqp://``) for the broker, Redis or ``rpc://`` for the backend.
"""

import os
import time

from celery import Celery, bootsteps

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
