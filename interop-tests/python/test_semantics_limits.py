"""Issue 5, time and rate limits, called by a Celery 5.7 client.

Time limits: the hard limit stops a task and stores FAILURE ``TimeLimitExceeded`` exactly as
Celery's prefork worker stores it (``billiard.exceptions``, the limit as its argument); the
soft limit reaches the task, which may clean up and return or let
``SoftTimeLimitExceeded`` fail it; the limit in force is the message's ``timelimit``
header, else the task's option, else the worker's ``--time-limit``/``--soft-time-limit``.
A blocking Rust task cannot be interrupted: it is abandoned at its hard limit and its
concurrency slot is freed (Celery kills and replaces the pool process).

Rate limits: ``rate_limit="5/s"`` spaces the starts, and every message still runs.

Against the Python stand-in (``INTEROP_WORKER=python``) the worker runs the prefork pool,
as Celery's time limits need.
"""

import json
import time

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from conftest import RESULT_TIMEOUT, connect_redis

DB = 6
WORKER_TIME_LIMIT = 3
WORKER_OPTIONS = {"concurrency": 2, "pool": "prefork", "time_limit": WORKER_TIME_LIMIT}
EARLY = 0.05


def stored_failure(result, transport):
    """The FAILURE as stored: the backend's JSON on Redis; on ``rpc://`` (the state travels
    in the reply message) the exception Celery rebuilt from it."""
    if transport.redis_backend:
        client = connect_redis(transport.db)
        try:
            meta = json.loads(client.get(f"celery-task-meta-{result.id}"))
        finally:
            client.close()
        assert meta["status"] == "FAILURE", meta
        return meta["result"]
    exc = result.info
    assert result.state == "FAILURE", (result.state, exc)
    return {"exc_type": type(exc).__name__, "exc_message": list(exc.args),
            "exc_module": type(exc).__module__}


def timed_get(result):
    """The outcome of ``result`` and how long after this call it came."""
    start = time.monotonic()
    try:
        value = result.get(timeout=RESULT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
        value = exc
    return value, time.monotonic() - start


def test_blocking_task_over_its_hard_limit_fails_and_frees_its_slot(client, worker, transport):
    """First in the module: the abandoned Rust threads sleep on while the rest runs."""
    sent = time.monotonic()
    blocked = [client.app.send_task("interop.semantics.limited_blocking_sleep", [15])
               for _ in range(2)]
    after = [client.app.send_task("interop.noop") for _ in range(2)]
    for result in after:
        assert result.get(timeout=RESULT_TIMEOUT) is None
    # Both slots were taken by 15 s sleeps; the noops ran once the 1 s limit freed them.
    assert time.monotonic() - sent < 12, "the slots were not freed at the hard time limit"
    for result in blocked:
        with pytest.raises(TimeLimitExceeded) as caught:
            result.get(timeout=RESULT_TIMEOUT)
        assert caught.value.args == (1,)
        assert stored_failure(result, transport) == {
            "exc_type": "TimeLimitExceeded", "exc_message": [1], "exc_module": "billiard.exceptions"}


def test_an_abandoned_blocking_task_does_not_hold_up_a_warm_shutdown(client, spawn_worker):
    """Past its hard limit a blocking Rust task's thread sleeps on; SIGTERM must not wait
    for it (Celery's prefork pool killed that process at the limit)."""
    extra = spawn_worker(queues="abandon", concurrency=1, pool="prefork")
    extra.wait_ready(client)
    result = client.app.send_task("interop.semantics.limited_blocking_sleep", [30], queue="abandon")
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=RESULT_TIMEOUT)
    start = time.monotonic()
    extra.stop()
    assert time.monotonic() - start < 20, "the warm shutdown waited for the abandoned thread"


def test_async_task_over_its_hard_limit_fails_with_time_limit_exceeded(client, worker, transport):
    result = client.app.send_task("interop.semantics.limited_sleep", [10])
    outcome, waited = timed_get(result)
    assert isinstance(outcome, TimeLimitExceeded), outcome
    assert outcome.args == (1,)
    assert waited >= 1 - EARLY
    assert stored_failure(result, transport) == {
        "exc_type": "TimeLimitExceeded", "exc_message": [1], "exc_module": "billiard.exceptions"}


def test_worker_default_hard_limit_applies_to_tasks_without_one(client, worker, transport):
    result = client.app.send_task("interop.sleep", [10])
    outcome, waited = timed_get(result)
    assert isinstance(outcome, TimeLimitExceeded), outcome
    assert outcome.args == (WORKER_TIME_LIMIT,)
    assert waited >= WORKER_TIME_LIMIT - EARLY
    stored = stored_failure(result, transport)
    assert stored["exc_type"] == "TimeLimitExceeded"
    assert stored["exc_module"] == "billiard.exceptions"
    # Celery's worker stores the limit as the pool got it: from `--time-limit 3` (a float
    # option) that is [3.0], a float even when whole; both workers write it so.
    assert stored["exc_message"] == [float(WORKER_TIME_LIMIT)]
    assert isinstance(stored["exc_message"][0], float)


def test_message_limit_wins_over_task_and_worker_limits(client, worker):
    # Longer than the task's own 1 s: the header's 5 s is the limit, the sleep completes.
    longer = client.app.send_task("interop.semantics.limited_sleep", [2], time_limit=5)
    # Shorter than the worker's 3 s, for a task with no limit of its own.
    shorter = client.app.send_task("interop.sleep", [10], time_limit=0.5)
    # Between the task's 1 s and the sleep: stopped at the header's 2 s.
    between = client.app.send_task("interop.semantics.limited_sleep", [10], time_limit=2)
    assert longer.get(timeout=RESULT_TIMEOUT) == 2
    for result, limit in ((shorter, 0.5), (between, 2)):
        with pytest.raises(TimeLimitExceeded) as caught:
            result.get(timeout=RESULT_TIMEOUT)
        assert caught.value.args == (limit,)


def test_soft_limit_reaches_the_task(client, worker, transport):
    """The task's own 1 s soft limit: caught, the task returns; uncaught, it fails with
    ``SoftTimeLimitExceeded()``; a message's ``soft_time_limit`` reaches a task with none."""
    caught = client.app.send_task("interop.semantics.soft_limited", [10], {"catch": True})
    uncaught = client.app.send_task("interop.semantics.soft_limited", [10])
    blocking = client.app.send_task("interop.semantics.soft_limited_blocking", [10], {"catch": True})
    by_header = client.app.send_task("interop.semantics.soft_sleep", [10], {"catch": True},
                                     soft_time_limit=0.5)
    unlimited = client.app.send_task("interop.semantics.soft_sleep", [0.2], {"catch": True})

    for result, limit in ((caught, 1), (blocking, 1), (by_header, 0.5)):
        value = result.get(timeout=RESULT_TIMEOUT)
        assert value["soft_limit"] is True, value
        assert value["elapsed"] >= limit - EARLY, value
    assert unlimited.get(timeout=RESULT_TIMEOUT)["soft_limit"] is False

    with pytest.raises(SoftTimeLimitExceeded) as failed:
        uncaught.get(timeout=RESULT_TIMEOUT)
    assert failed.value.args == ()
    assert stored_failure(uncaught, transport) == {
        "exc_type": "SoftTimeLimitExceeded", "exc_message": [], "exc_module": "billiard.exceptions"}


def test_worker_default_soft_limit(client, spawn_worker):
    extra = spawn_worker(queues="soft", concurrency=1, pool="prefork", soft_time_limit=1)
    extra.wait_ready(client)
    value = client.app.send_task("interop.semantics.soft_sleep", [10], {"catch": True},
                                 queue="soft").get(timeout=RESULT_TIMEOUT)
    assert value["soft_limit"] is True and value["elapsed"] >= 1 - EARLY, value


def test_rate_limit_spaces_starts_and_drops_nothing(client, worker):
    count, rate = 8, 5.0
    results = [client.app.send_task("interop.semantics.rated") for _ in range(count)]
    starts = sorted(result.get(timeout=RESULT_TIMEOUT) for result in results)
    assert len(starts) == count
    # Celery's token bucket holds one token: no burst, one start per 1/rate seconds.
    span = starts[-1] - starts[0]
    assert span >= (count - 1) / rate - 0.2, starts
