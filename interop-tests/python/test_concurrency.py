"""Many calls at once, and tasks that wait (async) or block (threads) running side by side."""

import re
import time

import pytest

from conftest import RESULT_TIMEOUT, wait_until

DB = 11
WORKER_OPTIONS = {"concurrency": 4, "prefetch_multiplier": 4}


def test_one_thousand_concurrent_calls(client, worker):
    results = [client.add.delay(i, 2 * i) for i in range(1000)]
    assert len({r.id for r in results}) == 1000
    values = [r.get(timeout=180) for r in results]
    assert values == [3 * i for i in range(1000)]
    assert worker.alive(), worker.describe()


def test_async_sleeps_overlap_with_concurrency_four(client, worker):
    start = time.monotonic()
    results = [client.sleep.delay(1.0) for _ in range(4)]
    values = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    elapsed = time.monotonic() - start
    assert values == [1.0] * 4
    # One after the other they would take 4 s; side by side about 1 s.
    assert elapsed < 3.5, f"four 1 s sleeps took {elapsed:.2f} s: they did not run concurrently"


def test_blocking_sleeps_run_in_parallel_and_do_not_block_async_tasks(client, worker):
    start = time.monotonic()
    blocking = [client.blocking_sleep.delay(4.0) for _ in range(2)]
    # Give the worker time to start both blocking calls before the probe goes out.
    time.sleep(0.5)
    assert client.noop.delay().get(timeout=RESULT_TIMEOUT) is None
    noop_done = time.monotonic() - start
    # The probe came back while both blocking calls were still running, so they did not
    # hold up the async side of the worker.
    still_running = [not r.ready() for r in blocking]
    assert all(still_running), (
        f"noop answered only after {noop_done:.2f} s, when a blocking sleep had already "
        f"finished ({still_running}): blocking tasks held up the worker")
    values = [r.get(timeout=RESULT_TIMEOUT) for r in blocking]
    elapsed = time.monotonic() - start
    assert values == [4.0, 4.0]
    # In sequence they would take 8 s; in parallel about 4 s.
    assert elapsed < 7.0, f"two 4 s blocking sleeps took {elapsed:.2f} s: they did not run in parallel"


@pytest.mark.rust_only
def test_one_runtime_thread_still_runs_async_and_blocking_tasks_side_by_side(client, spawn_worker):
    """``--threads 1``: the whole async side (consume loop, pipelines, async tasks) on one
    thread of its own; async sleeps still overlap, and plain functions still run on the
    blocking pool without holding up the async side."""
    queue = "threads-one"
    worker = spawn_worker("rust", queues=queue, concurrency=6, threads=1)
    worker.wait_ready(client, queue=queue)
    # Its first log line, read from the start of the log (the tail moves on with every task).
    wait_until(lambda: re.search(r"\bthreads=1\b", worker.log_path.read_text(errors="replace")), 10.0,
               "the worker's log line of its async runtime (threads=1)")

    def send(name, *args):
        return client.app.send_task(name, args=args, queue=queue)

    start = time.monotonic()
    blocking = [send("interop.blocking_sleep", 4.0) for _ in range(2)]
    sleeps = [send("interop.sleep", 1.0) for _ in range(3)]
    time.sleep(0.5)
    assert send("interop.noop").get(timeout=RESULT_TIMEOUT) is None
    still_running = [not r.ready() for r in blocking]
    assert all(still_running), (
        f"noop answered only after a blocking sleep had finished ({still_running}): "
        f"blocking tasks held up the single async thread\n{worker.describe()}")
    assert [r.get(timeout=RESULT_TIMEOUT) for r in sleeps] == [1.0] * 3
    assert [r.get(timeout=RESULT_TIMEOUT) for r in blocking] == [4.0, 4.0]
    elapsed = time.monotonic() - start
    # In sequence: 4 + 4 + 3 × 1 = 11 s; side by side about 4 s.
    assert elapsed < 9.0, f"took {elapsed:.2f} s: the tasks did not run side by side"
    assert worker.alive(), worker.describe()
