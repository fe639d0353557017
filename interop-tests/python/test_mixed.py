"""A Python Celery worker and the worker under test drain one queue together."""

from collections import Counter

from conftest import RESULT_TIMEOUT

DB = 13


def test_python_and_worker_under_test_share_one_queue(client, spawn_worker):
    # Prefetch 1 keeps either worker from hoarding the queue, so both get a share. Each
    # worker also consumes a queue of its own, and its readiness probe goes there: a probe
    # on the shared queue could be answered by the other worker while this one is still
    # starting (and then the calls below might all be over before it consumes).
    python = spawn_worker("python", queues="celery,python-only", concurrency=2, prefetch_multiplier=1,
                          hostname="python@interop")
    python.wait_ready(client, queue="python-only")
    under_test = spawn_worker(queues="celery,under-test-only", concurrency=2, prefetch_multiplier=1,
                              hostname="under-test@interop")
    under_test.wait_ready(client, queue="under-test-only")

    # Every third call sleeps 50 ms: a worker busy with one leaves the queue to the other,
    # so neither drains all 200 before the other's next poll, however fast it is.
    calls = []
    for i in range(200):
        if i % 3 == 0:
            calls.append(("sleep", i, client.sleep.delay(0.05)))
        elif i % 3 == 1:
            calls.append(("add", i, client.add.delay(i, 1000)))
        else:
            calls.append(("whoami", i, client.whoami.delay()))

    hosts = Counter()
    for kind, i, result in calls:
        value = result.get(timeout=RESULT_TIMEOUT)
        if kind == "sleep":
            assert value == 0.05
        elif kind == "add":
            assert value == i + 1000
        else:
            assert value["task_id"] == result.id
            assert value["retries"] == 0
            assert value["delivery_info"]["routing_key"] == "celery"
            hosts[value["hostname"]] += 1

    assert set(hosts) <= {"under-test@interop", "python@interop"}, hosts
    assert hosts["under-test@interop"] > 0, f"the worker under test ran no whoami: {hosts}"
    assert hosts["python@interop"] > 0, f"the Python worker ran no whoami: {hosts}"
    assert under_test.alive(), under_test.describe()
    assert python.alive(), python.describe()
