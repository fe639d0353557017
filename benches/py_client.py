"""Round trips of Python Celery 5.7's client, for benches/run.py.

Calls ``add.apply_async((2, 3), queue=Q).get()`` in a row (``add`` is a body-less stub
named ``interop.add``; with one queue this is ``add.delay(2, 3).get()`` routed to it).
Given several queues (a worker on each), the calls go to them in turn, one call at a
time, so every worker is measured under the same conditions of a shared machine. Prints
one JSON object: ``{"latencies_us": {queue: [...]}, "ids": [...]}``, the timed calls'
latencies and the ids of every call (the harness deletes their results).

    python benches/py_client.py --broker URL --backend URL --queues Q1,Q2
        [--expects 5,none] [--calls 1000] [--warmup 50]
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
    p.add_argument("--queues", default="celeriac.bench", help="comma separated")
    p.add_argument("--expects", default=None,
                   help="the result of each queue's worker, JSON, comma separated "
                        "('none' for null; default 5 for all)")
    p.add_argument("--calls", type=int, default=1000, help="timed calls per queue")
    p.add_argument("--warmup", type=int, default=50, help="untimed calls per queue first")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--first-timeout", type=float, default=60.0,
                   help="the first call to each queue waits for its worker to start")
    a = p.parse_args()
    queues = a.queues.split(",")
    expects = ([None if e == "none" else json.loads(e) for e in a.expects.split(",")]
               if a.expects else [5] * len(queues))
    if len(expects) != len(queues):
        p.error("--expects needs one value per queue")

    app = Celery("benchclient", broker=a.broker, backend=a.backend)

    @app.task(name="interop.add")
    def add(x, y):  # the worker runs it; this process only sends
        raise NotImplementedError

    def call(q: int, timeout: float):
        started = time.perf_counter()
        result = add.apply_async((2, 3), queue=queues[q])
        value = result.get(timeout=timeout)
        elapsed = time.perf_counter() - started
        if value != expects[q]:
            raise SystemExit(f"{queues[q]}: interop.add(2, 3) returned {value!r}, "
                             f"expected {expects[q]!r}")
        ids.append(result.id)
        return elapsed

    ids = []
    for q in range(len(queues)):
        call(q, a.first_timeout)
    latencies = {q: [] for q in queues}
    for rnd in range(a.warmup + a.calls):
        for k in range(len(queues)):
            q = (rnd + k) % len(queues)  # a different worker goes first each round
            elapsed = call(q, a.timeout)
            if rnd >= a.warmup:
                latencies[queues[q]].append(elapsed * 1e6)
    print(json.dumps({"latencies_us": latencies, "ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
