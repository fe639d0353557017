#!/usr/bin/env python3
"""RabbitMQ drains only, interleaved A/B (issue 6, second round): run.py's own drain
measurement (pre-filled durable queue, persistent messages from ``celeriac-bench publish``,
the steady state timed) for a chosen set of consumers, each repeated in turn so that noise
from the shared machine spreads over all of them. No Celery sweep, no round trips.

    .venv/bin/python benches/amqp_ab.py --repeats 3 \
        --worker A=target/release/interop-worker --worker B=/tmp/other-worker \
        --raw lapin-each,lapin-multi,java-each,java-multi [--hold] [--n 60000]

Consumers: ``A``/``B``... Celeriac interop workers (``-c 16 --prefetch-multiplier 16``, or
``--celeriac-args``); ``lapin-each``/``lapin-multi``: ``celeriac-bench raw``; ``java-each``
/ ``java-multi``: benches/java/RawConsumer.java on the official Java client (prefetch 200,
ack each / multiple per 100), compiled on first use into /tmp/celeriac-rawjava.
``--hold`` also measures the RSS of each Celeriac worker holding 10,000 eta messages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (re-executes with the venv's python when needed)

M2 = Path.home() / ".m2" / "repository"
JARS = [M2 / "com/rabbitmq/amqp-client/5.21.0/amqp-client-5.21.0.jar",
        M2 / "org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar",
        M2 / "org/slf4j/slf4j-nop/1.7.36/slf4j-nop-1.7.36.jar"]
JAVA_OUT = Path("/tmp/celeriac-rawjava")


def build_java() -> str:
    src = run.BENCHES / "java" / "RawConsumer.java"
    cp = ":".join(str(j) for j in JARS)
    cls = JAVA_OUT / "RawConsumer.class"
    if not cls.exists() or cls.stat().st_mtime < src.stat().st_mtime:
        JAVA_OUT.mkdir(exist_ok=True)
        subprocess.run(["javac", "-d", str(JAVA_OUT), "-cp", cp, str(src)], check=True)
    return f"{JAVA_OUT}:{cp}"


class JavaWorker(run.Worker):
    def start(self, broker, backend, logs, queue=run.QUEUE):
        argv = ["java", "-XX:+UseSerialGC", "-Xmx256m", "-cp", self.opts["cp"], "RawConsumer",
                "--broker", broker.url, "--queue", queue, "--mode", self.opts["mode"]]
        return run.Process(argv, logs / "java.log", env=dict(os.environ))


def celeriac_workers(args) -> list:
    """The Celeriac workers of ``--worker NAME=PATH[,K=V...]`` with ``--celeriac-args``."""
    cargs = args.celeriac_args.split()
    c = int(cargs[cargs.index("-c") + 1]) if "-c" in cargs else 2
    pm = int(cargs[cargs.index("--prefetch-multiplier") + 1]) \
        if "--prefetch-multiplier" in cargs else 4
    workers = []
    for spec in args.worker:
        name, _, rest = spec.partition("=")
        path, *envs = rest.split(",")
        env = dict(kv.split("=", 1) for kv in envs)
        workers.append(run.Worker("celeriac", name, {"bin": path, "env": env, "args": cargs,
                                                      "window": c * pm, "c": c}))
    return workers


def redis_hold(args, logs: Path) -> int:
    """RSS of each Celeriac worker holding 10,000 eta messages on Redis (run.py's hold)."""
    server = run.start_redis(None, logs)
    args.redis_url = server.url
    try:
        broker = run.RedisBroker(server.url)
        bench = run.Bench(args, logs)
        workers = celeriac_workers(args)
        holds: dict[str, list[float]] = {}
        for rep in range(args.repeats):
            for w in workers:
                h = bench.hold(broker, w.holding(10_000), 10_000)
                holds.setdefault(w.label, []).append(h["rss_kb"] / 1024)
                run.log(f"#{rep + 1} Redis hold {w.label}: RSS {h['rss_kb'] / 1024:.1f} MB "
                        f"(peak {h['hwm_kb'] / 1024:.1f}), took {h['taken']}")
        for label, v in holds.items():
            print(f"| {label} | Redis hold RSS MB | {run.fmt_num(v, 1)} |")
    finally:
        server.stop()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--worker", action="append", default=[], metavar="NAME=PATH[,K=V...]")
    p.add_argument("--celeriac-args", default="-c 16 --prefetch-multiplier 16")
    p.add_argument("--raw", default="", help="lapin-each,lapin-multi,java-each,java-multi")
    p.add_argument("--hold", action="store_true")
    p.add_argument("--hold-only", action="store_true", help="--hold without the drains")
    p.add_argument("--redis-hold", action="store_true",
                   help="only the hold RSS, on a redis-server of the harness's own")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672")
    p.add_argument("--vhost", default="amqp2-bench")
    args = p.parse_args()
    args.redis_url = "redis://127.0.0.1:6379/15"  # unused: no results stored here
    logs = Path(tempfile.mkdtemp(prefix="celeriac-amqp-ab-"))
    if args.redis_hold:
        return redis_hold(args, logs)
    run.ensure_vhost(args.vhost)
    broker = run.AmqpBroker(args.amqp_url, args.vhost)
    bench = run.Bench(args, logs)
    workers = celeriac_workers(args)
    for r in filter(None, args.raw.split(",")):
        impl, mode = r.split("-")
        if impl == "lapin":
            workers.append(run.Worker("raw", r, {"mode": mode, "window": 200}))
        else:
            workers.append(JavaWorker("java", r, {"mode": mode, "window": 200,
                                                  "cp": build_java()}))
    rates: dict[str, list[float]] = {w.label: [] for w in workers}
    cpu: dict[str, list[float]] = {w.label: [] for w in workers}
    holds: dict[str, list[float]] = {}
    try:
        for rep in range(args.repeats):
            for w in [] if args.hold_only else workers:
                d = bench.drain(broker, w, args.n, results=False)
                rates[w.label].append(d.rate)
                cpu[w.label].append(d.cpu_per_10k)
                run.log(f"#{rep + 1} {w.label}: {d.rate:,.0f}/s, {d.cpu_per_10k:.2f} CPU s/10k, "
                        f"peak RSS {d.hwm_kb / 1024:.1f} MB")
            if args.hold or args.hold_only:
                for w in workers:
                    if w.kind != "celeriac":
                        continue
                    h = bench.hold(broker, w.holding(10_000), 10_000)
                    holds.setdefault(w.label, []).append(h["rss_kb"] / 1024)
                    run.log(f"#{rep + 1} hold {w.label}: RSS {h['rss_kb'] / 1024:.1f} MB "
                            f"(peak {h['hwm_kb'] / 1024:.1f}), took {h['taken']}")
    finally:
        broker.reset()
        broker.close()
    print(f"| consumer | tasks/s median (min–max) | CPU s/10k | hold RSS MB |")
    print("| --- | --- | --- | --- |")
    for w in workers:
        hold = run.fmt_num(holds[w.label], 1) if w.label in holds else "–"
        if rates[w.label]:
            print(f"| {w.label} | {run.fmt_rate(rates[w.label])} | "
                  f"{run.fmt_num(cpu[w.label])} | {hold} |")
        else:
            print(f"| {w.label} | – | – | {hold} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
