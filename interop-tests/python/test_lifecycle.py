"""Stopping a worker: SIGTERM finishes the work, SIGKILL loses none of it with acks_late."""

import signal
import time

from conftest import RESULT_TIMEOUT, wait_until

DB = 12


def test_sigterm_mid_task_finishes_the_task_and_exits_zero(client, rdb, spawn_worker):
    worker = spawn_worker(concurrency=2)
    worker.wait_ready(client)
    result = client.sleep.delay(3.0)
    wait_until(lambda: rdb.llen("celery") == 0, 30, "the worker to take the task off the queue")
    # Let the task get going; it still has about 2 s to run when the signal arrives.
    time.sleep(1.0)
    assert not result.ready(), "the task finished before the worker was signalled"
    worker.signal(signal.SIGTERM)
    assert result.get(timeout=RESULT_TIMEOUT) == 3.0
    assert result.state == "SUCCESS"
    assert worker.stop(expect_code=0, send_sigterm=False) == 0


def test_sigterm_loses_no_prefetched_message(client, rdb, spawn_worker):
    worker = spawn_worker(concurrency=1, prefetch_multiplier=4)
    worker.wait_ready(client)
    running = client.sleep.delay(2.0)
    waiting = [client.add.delay(i, 100) for i in range(3)]
    wait_until(lambda: rdb.llen("celery") == 0, 30, "the worker to prefetch the messages")
    time.sleep(0.5)
    worker.signal(signal.SIGTERM)
    assert worker.stop(expect_code=0, send_sigterm=False) == 0
    assert running.get(timeout=RESULT_TIMEOUT) == 2.0
    # Whatever the first worker prefetched but did not run, it handed back: a successor
    # runs it.
    successor = spawn_worker(concurrency=2)
    assert [r.get(timeout=RESULT_TIMEOUT) for r in waiting] == [100, 101, 102]
    successor.stop(expect_code=0)


def test_sigkill_mid_task_with_acks_late_is_redelivered(client, rdb, spawn_worker):
    options = dict(concurrency=1, prefetch_multiplier=1, acks_late=True, visibility_timeout=5)
    first = spawn_worker(**options)
    first.wait_ready(client)
    result = client.sleep.delay(2.0)
    wait_until(lambda: rdb.llen("celery") == 0, 30, "the worker to take the task off the queue")
    time.sleep(0.5)
    first.kill()
    # Killed mid-run: no result was stored, and the message is still unacknowledged.
    assert not result.ready(), "the task completed before the worker was killed"
    killed_at = time.monotonic()

    second = spawn_worker(**options)
    # The visibility timeout (5 s) must pass before the message comes back; then the
    # successor runs it for 2 s. 60 s more is a generous margin for a loaded machine.
    assert result.get(timeout=5 + 2 + 60) == 2.0
    assert result.state == "SUCCESS"
    assert time.monotonic() - killed_at >= 2.0
    second.stop(expect_code=0)
