#!/usr/bin/env python3
"""What RabbitMQ itself allows on this machine (issue 6, second round): a consumer that
only takes and acks, not built on lapin (benches/java/RawConsumer.java, the official Java
client, prefetch 200), drains copies of one real Celery task message (published by
``celeriac-bench publish``) from queues that differ in durability, message persistence and
classic queue version; RabbitMQ's CPU (beam.smp) and the consumer's per message are read
from /proc over the timed steady state (as run.py times RabbitMQ drains).

    .venv/bin/python benches/amqp_limits.py --repeats 2 --n 60000
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import amqp_ab  # noqa: E402
import run  # noqa: E402

VARIANTS = {
    # name: (durable queue, persistent messages, classic queue version)
    "durable+persistent (Celery)": (True, True, None),
    "durable+persistent CQv2": (True, True, "2"),
    "durable+transient": (True, False, None),
    "non-durable+transient": (False, False, None),
}


def beam_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--modes", default="multi,each")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672")
    p.add_argument("--vhost", default="amqp2-bench")
    args = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="celeriac-amqp-limits-"))
    run.ensure_vhost(args.vhost)
    broker = run.AmqpBroker(args.amqp_url, args.vhost)
    broker.reset()
    run.run_tool([str(run.BENCH_BIN), "publish", "--broker", broker.url, "--queue", run.QUEUE,
                  "--count", "1", "--id-prefix", "0badcafe", "--ignore-result"])
    cp = amqp_ab.build_java()
    beam = beam_pids()
    n = args.n
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    try:
        for rep in range(args.repeats):
            for vname in args.variants.split(","):
                durable, persistent, qv = VARIANTS[vname]
                q = "celeriac.limits." + str(abs(hash(vname)) % 10_000)
                for mode in args.modes.split(","):
                    broker.ch.queue_delete(q)
                    argv = ["java", "-cp", cp, "RawConsumer", "--broker", broker.url,
                            "--mode", "clone", "--from", run.QUEUE, "--queue", q,
                            "--count", str(n), "--persistent", str(persistent).lower(),
                            "--durable", str(durable).lower()]
                    if qv:
                        argv += ["--queue-version", qv]
                    pub = run.run_tool(argv)
                    proc = run.Process(["java", "-XX:+UseSerialGC", "-Xmx256m", "-cp", cp,
                                        "RawConsumer", "--broker", broker.url, "--queue", q,
                                        "--mode", mode], logs / "java.log", env=dict(os.environ))
                    level = n - 200 - n // 10
                    try:
                        t0 = None
                        deadline = time.monotonic() + 300
                        while True:
                            ready = broker._declare_passive(q).message_count
                            if t0 is None and ready <= level:
                                t0, timed = time.monotonic(), ready
                                b0, c0 = run.cpu_seconds(beam), run.cpu_seconds(proc.tree())
                            if ready == 0:
                                break
                            proc.check_alive("java")
                            if time.monotonic() > deadline:
                                raise run.BenchError(f"{ready} left")
                            time.sleep(0.01)
                        t1 = time.monotonic()
                        b1, c1 = run.cpu_seconds(beam), run.cpu_seconds(proc.tree())
                    finally:
                        proc.stop()
                    rate = timed / (t1 - t0)
                    beam_us = (b1 - b0) / timed * 1e6
                    cons_us = (c1 - c0) / timed * 1e6
                    rows.setdefault((vname, mode), []).append((rate, beam_us, cons_us))
                    run.log(f"#{rep + 1} {vname} / {mode}: {rate:,.0f}/s, RabbitMQ "
                            f"{beam_us:.0f} µs CPU/msg, consumer {cons_us:.0f} µs/msg "
                            f"(published at {n / pub['seconds']:,.0f}/s)")
                broker.ch.queue_delete(q)
    finally:
        broker.reset()
        broker.close()
    print("| queue / messages | ack | tasks/s | RabbitMQ CPU µs/msg | consumer CPU µs/msg |")
    print("| --- | --- | --- | --- | --- |")
    for (vname, mode), vals in rows.items():
        r = [v[0] for v in vals]
        print(f"| {vname} | {mode} | {run.fmt_rate(r)} | "
              f"{statistics.median(v[1] for v in vals):.0f} | "
              f"{statistics.median(v[2] for v in vals):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
