"""Issue 5, results, read by a Celery 5.7 client: ``ignore_result`` (the task's option and
the client's ``ignore_result=True``), ``track_started`` (the task's option and the worker's
``--track-started``: STARTED seen by ``AsyncResult`` while the task runs),
``result_extended`` (``AsyncResult.name/args/kwargs/worker/retries/queue``) and
``result_expires`` (the Redis key's TTL).

The module's worker runs with ``--result-extended``.
"""

import time

import pytest

from conftest import RESULT_TIMEOUT, Client, connect_redis, wait_until

DB = 6
WORKER_OPTIONS = {"concurrency": 4, "result_extended": True}

# Celery's default result_expires: one day.
RESULT_EXPIRES = 86400


@pytest.fixture(scope="module")
def ext_client(transport):
    """A client with ``result_extended=True``, as Celery's docs ask of the reading side."""
    made = Client(transport, conf={"result_extended": True})
    yield made
    made.close()


def runs(client, task_id):
    return client.call("interop.semantics.runs", [task_id])


def meta_key(task_id):
    return f"celery-task-meta-{task_id}"


def assert_nothing_stored(client, transport, result):
    """``result``'s task ran (its run log says so) and left no state in the backend."""
    wait_until(lambda: runs(client, result.id), 30, f"{result.id} to run")
    # The outcome is stored right after the task returns: give a late store time to show.
    time.sleep(0.5)
    if transport.redis_backend:
        rdb = connect_redis(transport.db)
        try:
            assert not rdb.exists(meta_key(result.id)), rdb.get(meta_key(result.id))
        finally:
            rdb.close()
    assert result.state == "PENDING"


def test_ignore_result_task_option_stores_nothing(client, worker, transport):
    result = client.app.send_task("interop.semantics.ignored", ["x"])
    assert_nothing_stored(client, transport, result)


def test_client_ignore_result_stores_nothing(client, worker, transport):
    result = client.app.send_task("interop.semantics.record", ["y"], ignore_result=True)
    assert_nothing_stored(client, transport, result)
    # The same task without it stores its value.
    assert client.call("interop.semantics.record", ["z"]) == "z"


def watch_states(result, transport, timeout=RESULT_TIMEOUT):
    """The distinct states ``result`` showed until it was ready, with the info of the first
    STARTED.

    With a Redis backend ``AsyncResult.state`` is polled every 20 ms while the task runs.
    On ``rpc://`` the states are messages to the client's reply queue, which its result
    consumer takes in: polling ``state`` sees none of them there (Celery 5.7), so they are
    heard through ``get(on_message=...)``, one by one as they arrive.
    """
    seen, started = [], []

    def note(state, info):
        if state == "STARTED" and not started:
            started.append(info)
        if not seen or seen[-1] != state:
            seen.append(state)

    if not transport.redis_backend:
        def heard(meta):
            if meta.get("task_id") == result.id:
                note(meta["status"], meta["result"])
        result.get(timeout=timeout, propagate=False, on_message=heard)
        return seen, (started or [None])[0]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = result.state
        note(state, result.info if state == "STARTED" else None)
        if state in ("SUCCESS", "FAILURE"):
            return seen, (started or [None])[0]
        time.sleep(0.02)
    pytest.fail(f"{result.id} not ready after {timeout} s; states seen: {seen}")


def test_track_started_task_option_shows_started_while_running(client, worker, transport):
    result = client.app.send_task("interop.semantics.tracked", [2])
    seen, info = watch_states(result, transport)
    assert seen[-2:] == ["STARTED", "SUCCESS"], seen
    assert info["hostname"] == worker.hostname
    assert isinstance(info["pid"], int)
    assert result.get(timeout=RESULT_TIMEOUT) == 2


def test_untracked_task_never_shows_started(client, worker, transport):
    seen, _ = watch_states(client.app.send_task("interop.sleep", [1.5]), transport)
    assert "STARTED" not in seen, seen


def test_worker_track_started_flag(client, spawn_worker, transport):
    tracker = spawn_worker(queues="tracked", concurrency=1, track_started=True)
    tracker.wait_ready(client)
    result = client.app.send_task("interop.sleep", [2], queue="tracked")
    seen, info = watch_states(result, transport)
    assert seen[-2:] == ["STARTED", "SUCCESS"], seen
    assert info["hostname"] == tracker.hostname


def reread(client, transport, sent):
    """A fresh ``AsyncResult`` for ``sent`` on a Redis backend. ``rpc://`` stores nothing
    to read again: the reply was consumed by ``sent``, which keeps its meta."""
    return client.app.AsyncResult(sent.id) if transport.redis_backend else sent


def test_result_extended_names_the_call(ext_client, worker, transport):
    sent = ext_client.app.send_task("interop.add", [2, 3])
    assert sent.get(timeout=RESULT_TIMEOUT) == 5
    result = reread(ext_client, transport, sent)
    assert result.name == "interop.add"
    assert result.args == [2, 3]
    assert result.kwargs == {}
    assert result.worker == worker.hostname
    assert result.retries == 0
    assert result.queue == "celery"

    by_keyword = ext_client.app.send_task("interop.add", kwargs={"x": 4, "y": 5})
    assert by_keyword.get(timeout=RESULT_TIMEOUT) == 9
    by_keyword = reread(ext_client, transport, by_keyword)
    assert by_keyword.args == [] and by_keyword.kwargs == {"x": 4, "y": 5}


def test_result_extended_counts_retries(ext_client, worker, transport):
    sent = ext_client.app.send_task("interop.flaky", [2])
    assert sent.get(timeout=RESULT_TIMEOUT) == 2
    result = reread(ext_client, transport, sent)
    assert result.name == "interop.flaky"
    assert result.args == [2]
    assert result.retries == 2
    assert result.queue == "celery"


@pytest.mark.transports("redis", "amqp-redis")
def test_result_expires_is_the_redis_key_ttl(client, worker, transport):
    result = client.app.send_task("interop.add", [1, 1])
    assert result.get(timeout=RESULT_TIMEOUT) == 2
    rdb = connect_redis(transport.db)
    try:
        ttl = rdb.ttl(meta_key(result.id))
    finally:
        rdb.close()
    assert RESULT_EXPIRES - 120 < ttl <= RESULT_EXPIRES, ttl
