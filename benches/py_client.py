"""Round trips of Python Celery 5.7's client, for benches/run.py.

Calls ``add.delay(2, 3).get()`` in a row (``add`` is a body-less stub named
``interop.add``, routed to the benchmark queue) and prints one JSON object:
``{"latencies_us": [...], "ids": [...]}``, the timed calls' latencies and the ids
of every call (the harness deletes their results).

    python benches/py_client.py --broker URL --backend URL [--queue Q]
        [--calls 1000] [--warmup 50] [--expect 5|none]
"""

import argparse
import json
import sys
import time

from celery import Celery


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--queue", default="celeriac.bench")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--first-timeout", type=float, default=60.0,
                   help="the first call waits for the worker to start")
    p.add_argument("--expect", default="5",
                   help="the result every call must return (JSON; 'none' for a null result)")
    a = p.parse_args()
    expect = None if a.expect == "none" else json.loads(a.expect)

    app = Celery("benchclient", broker=a.broker, backend=a.backend)
    app.conf.task_default_queue = a.queue

    @app.task(name="interop.add")
    def add(x, y):  # the worker runs it; this process only sends
        raise NotImplementedError

    ids = []
    first = add.delay(2, 3)
    first.get(timeout=a.first_timeout)
    ids.append(first.id)
    latencies = []
    for i in range(a.warmup + a.calls):
        started = time.perf_counter()
        result = add.delay(2, 3)
        value = result.get(timeout=a.timeout)
        elapsed = time.perf_counter() - started
        if value != expect:
            print(f"call {i}: interop.add(2, 3) returned {value!r}, expected {expect!r}",
                  file=sys.stderr)
            return 1
        ids.append(result.id)
        if i >= a.warmup:
            latencies.append(elapsed * 1e6)
    print(json.dumps({"latencies_us": latencies, "ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
