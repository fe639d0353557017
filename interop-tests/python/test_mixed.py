"""A Python Celery worker and the worker under test drain one queue together."""

from collections import Counter

from conftest import RESULT_TIMEOUT

DB = 13


def test_python_and_worker_under_test_share_one_queue(client, spawn_worker):
    # Prefetch 1 keeps either worker from hoarding the queue, so both get a share.
    under_test = spawn_worker(concurrency=2, prefetch_multiplier=1, hostname="under-test@interop")
    python = spawn_worker("python", concurrency=2, prefetch_multiplier=1, hostname="python@interop")
    under_test.wait_ready(client)
    python.wait_ready(client)

    calls = []
    for i in range(200):
        if i % 2:
            calls.append(("add", i, client.add.delay(i, 1000)))
        else:
            calls.append(("whoami", i, client.whoami.delay()))

    hosts = Counter()
    for kind, i, result in calls:
        value = result.get(timeout=RESULT_TIMEOUT)
        if kind == "add":
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
