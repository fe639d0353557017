"""Issue 5: a retry sent by one kind of worker is run by the other.

A task asks for a retry with a 3 s countdown; the worker that ran it is stopped (a warm
shutdown hands the retry it holds back to the queue); a worker of the other kind then takes
the retry message and runs it. Both directions: Celeriac's retry message is accepted by
Celery 5.7's own worker, and Celery's ``task.retry()`` message by Celeriac's. The task is
``interop.semantics.retry``, which both workers register with the same behaviour.

Redis and RabbitMQ brokers with the Redis backend: the test watches for RETRY by polling
``AsyncResult.state``, which the rpc:// backend does not offer across a worker change (its
state lives in the one client's reply queue); what is shown, the message crossing from one
worker kind to the other, does not depend on the backend.
"""

import pytest

from conftest import RESULT_TIMEOUT, wait_until

DB = 5
pytestmark = pytest.mark.transports("redis", "amqp-redis")

QUEUE = "handoff"


def retry_handed_over(client, spawn_worker, first_kind, second_kind):
    first = spawn_worker(first_kind, queues=QUEUE, concurrency=2, hostname=f"{first_kind}-first@interop")
    first.wait_ready(client, queue=QUEUE)
    # One failure, then success; the retry waits 3 s, long enough to stop the first worker.
    result = client.app.send_task("interop.semantics.retry", [1], {"countdown": 3}, queue=QUEUE)
    wait_until(lambda: result.state == "RETRY", RESULT_TIMEOUT,
               f"{first_kind} worker storing RETRY")
    first.stop(expect_code=0)
    assert result.state == "RETRY", "the retry must not have run before the first worker stopped"

    second = spawn_worker(second_kind, queues=QUEUE, concurrency=2, hostname=f"{second_kind}-second@interop")
    second.wait_ready(client, queue=QUEUE)
    log = result.get(timeout=RESULT_TIMEOUT)
    # The second worker ran it as the first retry: its own run log holds that one run.
    assert [run["retries"] for run in log] == [1], log
    assert log[0]["hostname"] == f"{second_kind}-second@interop", log
    assert result.state == "SUCCESS"


@pytest.mark.rust_only
def test_celery_worker_runs_a_retry_celeriac_sent(client, spawn_worker):
    """Celeriac's retry copy (retries + 1, eta, parent id, same id) on Celery's worker."""
    retry_handed_over(client, spawn_worker, "rust", "python")


@pytest.mark.rust_only
def test_celeriac_runs_a_retry_celery_sent(client, spawn_worker):
    """Celery's ``task.retry()`` message on Celeriac's worker."""
    retry_handed_over(client, spawn_worker, "python", "rust")
