"""Stopping a worker: SIGTERM finishes the work, SIGKILL loses none of it with acks_late."""

import signal
import time

from conftest import RESULT_TIMEOUT, wait_until

DB = 12

# Redis keeps a message a killed worker held in kombu's unacked hash until the visibility
# timeout has passed; AMQP has no such timeout: the broker requeues it as soon as the
# connection drops.
VISIBILITY_TIMEOUT = 5.0


def test_sigterm_mid_task_finishes_the_task_and_exits_zero(client, broker, spawn_worker):
    worker = spawn_worker(concurrency=2)
    worker.wait_ready(client)
    result = client.sleep.delay(3.0)
    wait_until(lambda: broker.queue_length("celery") == 0, 30, "the worker to take the task off the queue")
    # Let the task get going; it still has about 2 s to run when the signal arrives.
    time.sleep(1.0)
    assert not result.ready(), "the task finished before the worker was signalled"
    worker.signal(signal.SIGTERM)
    assert result.get(timeout=RESULT_TIMEOUT) == 3.0
    assert result.state == "SUCCESS"
    assert worker.stop(expect_code=0, send_sigterm=False) == 0


def test_sigterm_loses_no_prefetched_message(client, broker, spawn_worker):
    worker = spawn_worker(concurrency=1, prefetch_multiplier=4)
    worker.wait_ready(client)
    running = client.sleep.delay(2.0)
    waiting = [client.add.delay(i, 100) for i in range(3)]
    wait_until(lambda: broker.queue_length("celery") == 0, 30, "the worker to prefetch the messages")
    time.sleep(0.5)
    worker.signal(signal.SIGTERM)
    assert worker.stop(expect_code=0, send_sigterm=False) == 0
    assert running.get(timeout=RESULT_TIMEOUT) == 2.0
    # Whatever the first worker prefetched but did not run, it handed back: a successor
    # runs it.
    successor = spawn_worker(concurrency=2)
    assert [r.get(timeout=RESULT_TIMEOUT) for r in waiting] == [100, 101, 102]
    # The first worker may have run them all before it exited (Celery's warm shutdown over
    # AMQP does); the successor is signalled only once it is up, or its exit code would
    # tell about an interrupted start-up instead.
    successor.wait_ready(client)
    successor.stop(expect_code=0)


def test_sigkill_mid_task_with_acks_late_is_redelivered(client, broker, transport, spawn_worker):
    options = dict(concurrency=1, prefetch_multiplier=1, acks_late=True)
    if not transport.amqp:
        options["visibility_timeout"] = VISIBILITY_TIMEOUT
    first = spawn_worker(**options)
    first.wait_ready(client)
    result = client.sleep.delay(2.0)
    wait_until(lambda: broker.queue_length("celery") == 0, 30, "the worker to take the task off the queue")
    time.sleep(0.5)
    first.kill()
    # Killed mid-run: no result was stored, and the message is still unacknowledged.
    assert not result.ready(), "the task completed before the worker was killed"
    killed_at = time.monotonic()

    if transport.amqp:
        # No visibility timeout to wait for: the broker puts the message back in the queue
        # as soon as the dead worker's connection is gone, well before 5 s.
        wait_until(lambda: broker.queue_length("celery") == 1, VISIBILITY_TIMEOUT,
                   "RabbitMQ to requeue the killed worker's unacknowledged message at once")
        requeued_after = time.monotonic() - killed_at
        assert requeued_after < VISIBILITY_TIMEOUT, requeued_after

    second = spawn_worker(**options)
    # On Redis the visibility timeout (5 s) must pass before the message comes back; then
    # the successor runs it for 2 s. 60 s more is a generous margin for a loaded machine.
    assert result.get(timeout=VISIBILITY_TIMEOUT + 2 + 60) == 2.0
    assert result.state == "SUCCESS"
    assert time.monotonic() - killed_at >= 2.0
    second.stop(expect_code=0)
