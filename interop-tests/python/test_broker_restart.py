"""RabbitMQ restarts in the middle of a run: the worker reconnects by itself, no task is lost.

AMQP only, and only with the Redis result backend: with ``rpc://`` every result travels to
the caller's reply queue, which Celery declares auto-delete and fills with transient
(non-persistent) messages, so a broker restart may drop the queue and the results in it.
That is a property of Celery's RPC backend, not of the worker, and it would make the
count below meaningless. With Redis every result survives and can be read back.

This is the one test of the suite that stops RabbitMQ (``rabbitmqctl stop_app`` /
``start_app``); it always starts it again, whatever happens.
"""

import json
import time

import pytest

from conftest import AmqpBroker, Client, rabbitmqctl, wait_until

DB = 15
pytestmark = pytest.mark.transports("amqp-redis")

# Half the tasks sleep 0.1 s, so with 8 in flight the run lasts at least 12.5 s however fast
# the worker is: the restart, begun after the first 100 results, falls in its middle.
TASKS_BEFORE = 2000  # published while the worker runs, before the restart
TASKS_AFTER = 300    # published once RabbitMQ is back
CONCURRENCY = 8
OUTAGE = 5.0         # seconds RabbitMQ stays down
DEADLINE = 600.0     # for all results; generous for a loaded 2-core machine


def call(client: Client, i: int):
    """Task ``i`` of the run: every other one sleeps 0.1 s, the rest add."""
    if i % 2 == 0:
        return client.sleep.delay(0.1)
    return client.add.delay(i, i)


def expected(i: int):
    return 0.1 if i % 2 == 0 else 2 * i


def meta_key(task_id: str) -> str:
    return f"celery-task-meta-{task_id}"


def test_worker_reconnects_after_rabbitmq_restart_and_loses_no_task(transport, rdb, spawn_worker):
    # Celery publishes persistent messages (delivery_mode 2) to the durable queue "celery"
    # by default; say so, since the restart must keep every message not yet acknowledged.
    client = Client(transport, conf={
        "task_default_delivery_mode": "persistent",
        # After the restart the client's pooled connection is dead; let it reconnect
        # patiently instead of failing the publish.
        "task_publish_retry_policy": {"max_retries": 30, "interval_start": 0,
                                      "interval_step": 1, "interval_max": 2},
    })
    stopped = False
    try:
        worker = spawn_worker(concurrency=CONCURRENCY, acks_late=True)
        worker.wait_ready(client)

        ids = [call(client, i).id for i in range(TASKS_BEFORE)]

        def done() -> int:
            return rdb.exists(*(meta_key(task_id) for task_id in ids))

        wait_until(lambda: done() >= 100, 120, "the worker to finish its first 100 tasks")
        rabbitmqctl("stop_app")
        stopped = True
        done_at_stop = done()
        assert done_at_stop < TASKS_BEFORE, (
            f"all {TASKS_BEFORE} tasks were done before RabbitMQ stopped: the restart "
            "would prove nothing")
        time.sleep(OUTAGE)
        assert worker.alive(), f"the worker exited while RabbitMQ was down\n{worker.describe()}"
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        stopped = False

        # The client reconnects too, and the worker takes new work after the restart.
        ids += [call(client, i).id for i in range(TASKS_BEFORE, TASKS_BEFORE + TASKS_AFTER)]
        total = TASKS_BEFORE + TASKS_AFTER
        wait_until(lambda: done() == total, DEADLINE,
                   f"all {total} results ({done_at_stop} were stored when RabbitMQ stopped)",
                   interval=0.5)

        # Every task has its own, correct result.
        wrong = []
        for i, (task_id, raw) in enumerate(zip(ids, rdb.mget([meta_key(t) for t in ids]))):
            meta = json.loads(raw)
            if (meta["status"], meta["result"], meta["task_id"]) != ("SUCCESS", expected(i), task_id):
                wrong.append((i, meta))
        assert not wrong, f"{len(wrong)} of {total} results are wrong, e.g. {wrong[:3]}"
        assert worker.alive(), worker.describe()

        # Nothing left behind on the broker: the queue is drained and all is acknowledged.
        check = AmqpBroker(transport.broker_url)
        try:
            assert check.queue_length("celery") == 0
            wait_until(lambda: check.unacked("celery") == 0, 60, "every message to be acknowledged")
        finally:
            check.close()
        assert worker.stop(expect_code=0) == 0
    finally:
        if stopped:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        client.close()
