#!/usr/bin/env python3
"""Capture what Celery 5.7's remote control client (kombu's pidbox) does on the wire.

For each broker (Redis, RabbitMQ) this script starts a real ``pytasks`` worker, then, in
this process, runs the Celery client calls and records every broker operation the client
makes, with its exact arguments:

* Redis: every command the client's redis-py connections send (``pack_command`` /
  ``pack_commands`` are wrapped), and every raw envelope kombu decodes (``loads`` is wrapped:
  the worker's replies as popped from the reply list). The broadcast itself is also read
  from a ``PSUBSCRIBE`` of this script's own, exactly as a worker receives it.
* RabbitMQ: every ``exchange_declare``, ``queue_declare``, ``queue_bind``,
  ``basic_consume``, ``basic_publish`` and ``queue_delete`` py-amqp sends (its ``Channel``
  methods are wrapped), with message bodies and properties, and every delivery it receives.

The calls: ``app.control.ping(timeout=1.0)``, ``app.control.revoke(ID)``,
``app.AsyncResult(ID2).revoke()`` and ``app.control.inspect(timeout=1.0).ping()``.

Then the command line: ``celery -A pytasks status``, ``celery -A pytasks inspect ping`` and
``celery -A pytasks control revoke ID`` with the worker running and after it stopped
(stdout, stderr, exit code; the worker's name replaced by ``<NODE>``).

Usage (Redis db 7 and the RabbitMQ vhost of ``CELERIAC_TEST_AMQP_URL``; nothing is flushed)::

    /work/main/.venv/bin/python interop-tests/vectors/control/capture_control.py

Output: ``redis.json``, ``amqp.json``, ``cli.json`` beside this script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
FIXTURES = REPO / "python-fixtures"
sys.path.insert(0, str(FIXTURES))

REDIS_URL = os.environ.get("CAPTURE_REDIS_URL", "redis://127.0.0.1:6379/7")
AMQP_URL = os.environ.get(
    "CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/celeriac-test"
)
CELERY = str(Path(sys.executable).parent / "celery")
REVOKE_ID = "00000000-0000-4000-8000-00000000c001"
REVOKE_ID2 = "00000000-0000-4000-8000-00000000c002"


def text(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        try:
            return b.decode()
        except UnicodeDecodeError:
            return repr(b)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def start_worker(broker: str, queue: str, node: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), CELERY_BROKER_URL=broker,
               CELERY_RESULT_BACKEND=REDIS_URL)
    return subprocess.Popen(
        [CELERY, "-A", "pytasks", "worker", "-P", "threads", "-c", "2", "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queue, "-n", node],
        cwd=FIXTURES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_app(broker: str):
    """A new client app configured as ``pytasks`` is (fresh mailbox, oid and declare caches)."""
    from celery import Celery
    app = Celery("pytasks", broker=broker, backend=REDIS_URL)
    app.conf.update(accept_content=["json", "msgpack"], result_accept_content=["json", "msgpack"],
                    task_default_queue="py")
    return app


def wait_ready(broker: str, node: str) -> None:
    """Until the worker answers a ping from another process (this one's state stays new)."""
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), CELERY_BROKER_URL=broker)
    deadline = time.time() + 90
    while time.time() < deadline:
        p = subprocess.run([CELERY, "-A", "pytasks", "inspect", "ping", "-d", node], cwd=FIXTURES,
                           env=env, capture_output=True, timeout=60)
        if p.returncode == 0:
            return
    raise SystemExit(f"worker {node} did not answer")


def calls(app, record) -> list:
    out = []
    for name, fn in [
        ("app.control.ping(timeout=1.0)", lambda: app.control.ping(timeout=1.0)),
        (f"app.control.revoke({REVOKE_ID!r})", lambda: app.control.revoke(REVOKE_ID)),
        (f"app.AsyncResult({REVOKE_ID2!r}).revoke()", lambda: app.AsyncResult(REVOKE_ID2).revoke()),
        ("app.control.inspect(timeout=1.0).ping()", lambda: app.control.inspect(timeout=1.0).ping()),
    ]:
        record.clear()
        result = fn()
        time.sleep(0.3)
        out.append({"call": name, "returned": json.loads(json.dumps(result, default=repr)),
                    "operations": list(record)})
    return out


def capture_redis() -> dict:
    import kombu.transport.redis as kredis
    import redis
    import redis.connection as rc

    record: list = []
    lock = threading.Lock()
    orig_send, orig_packs = rc.AbstractConnection.send_command, rc.AbstractConnection.pack_commands

    def send_command(self, *args, **kwargs):
        with lock:
            record.append({"command": [text(a) for a in args]})
        return orig_send(self, *args, **kwargs)

    def pack_commands(self, commands):
        with lock:
            record.append({"pipeline": [[text(a) for a in c] for c in commands]})
        return orig_packs(self, commands)

    orig_loads = kredis.loads

    def loads(s):
        with lock:
            record.append({"decoded_envelope": text(s)})
        return orig_loads(s)

    db = int(REDIS_URL.rsplit("/", 1)[1])
    sub = redis.Redis.from_url(REDIS_URL).pubsub()
    sub.psubscribe(f"/{db}.*")
    published: list = []

    def listen():
        for m in sub.listen():
            if m["type"] == "pmessage":
                published.append({"channel": text(m["channel"]), "data": text(m["data"])})

    threading.Thread(target=listen, daemon=True).start()

    node = f"capture-{uuid.uuid4().hex[:8]}@celeriac"
    worker = start_worker(REDIS_URL, f"capture-{uuid.uuid4().hex[:8]}", node)
    try:
        wait_ready(REDIS_URL, node)
        app = make_app(REDIS_URL)
        rc.AbstractConnection.send_command = send_command
        rc.AbstractConnection.pack_commands = pack_commands
        kredis.loads = loads
        published.clear()
        result = calls(app, record)
    finally:
        rc.AbstractConnection.send_command, rc.AbstractConnection.pack_commands = orig_send, orig_packs
        kredis.loads = orig_loads
        worker.kill()
        worker.wait()
    return {"broker": REDIS_URL, "node": node, "calls": result,
            "published_fanout": published}


def capture_amqp() -> dict:
    import amqp.channel as ac

    record: list = []
    wrapped = {}

    def wrap(name):
        orig = getattr(ac.Channel, name)
        wrapped[name] = orig

        def f(self, *args, **kwargs):
            entry = {"method": name, "args": [text(a) for a in args],
                     "kwargs": {k: text(v) for k, v in kwargs.items() if k != "callback"}}
            if name == "basic_publish":
                msg = args[0]
                entry["args"] = ["<message>"] + [text(a) for a in args[1:]]
                entry["body"] = text(msg.body)
                entry["properties"] = json.loads(json.dumps(msg.properties, default=repr))
            record.append(entry)
            return orig(self, *args, **kwargs)
        setattr(ac.Channel, name, f)

    orig_deliver = ac.Channel._on_basic_deliver

    def on_deliver(self, consumer_tag, delivery_tag, redelivered, exchange, routing_key, msg):
        record.append({"delivered": {"exchange": exchange, "routing_key": routing_key,
                                     "body": text(msg.body),
                                     "properties": json.loads(json.dumps(msg.properties, default=repr))}})
        return orig_deliver(self, consumer_tag, delivery_tag, redelivered, exchange, routing_key, msg)

    node = f"capture-{uuid.uuid4().hex[:8]}@celeriac"
    worker = start_worker(AMQP_URL, f"capture-{uuid.uuid4().hex[:8]}", node)
    try:
        wait_ready(AMQP_URL, node)
        app = make_app(AMQP_URL)
        for name in ["exchange_declare", "queue_declare", "queue_bind", "basic_consume",
                     "basic_publish", "basic_publish_confirm", "queue_delete", "basic_cancel"]:
            if hasattr(ac.Channel, name):
                wrap(name)
        ac.Channel._on_basic_deliver = on_deliver
        result = calls(app, record)
    finally:
        for name, orig in wrapped.items():
            setattr(ac.Channel, name, orig)
        ac.Channel._on_basic_deliver = orig_deliver
        worker.kill()
        worker.wait()
    return {"broker": AMQP_URL, "node": node, "calls": result}


def capture_cli() -> dict:
    out = {}
    node = f"capture-{uuid.uuid4().hex[:8]}@celeriac"
    env = dict(os.environ, PYTHONPATH=str(FIXTURES), CELERY_BROKER_URL=REDIS_URL,
               CELERY_RESULT_BACKEND=REDIS_URL)
    commands = [["status"], ["inspect", "ping"], ["control", "revoke", REVOKE_ID]]

    def run(state):
        for c in commands:
            p = subprocess.run([CELERY, "-A", "pytasks", *c], cwd=FIXTURES, env=env,
                               capture_output=True, text=True, timeout=60)
            out[f"{state}: celery -A pytasks {' '.join(c)}"] = {
                "stdout": p.stdout.replace(node, "<NODE>"),
                "stderr": p.stderr.replace(node, "<NODE>"),
                "exit_code": p.returncode,
            }

    worker = start_worker(REDIS_URL, f"capture-{uuid.uuid4().hex[:8]}", node)
    try:
        wait_ready(REDIS_URL, node)
        run("one worker")
    finally:
        worker.kill()
        worker.wait()
    run("no worker")
    return out


def main() -> None:
    what = sys.argv[1:] or ["redis", "amqp", "cli"]
    for name in what:
        data = {"redis": capture_redis, "amqp": capture_amqp, "cli": capture_cli}[name]()
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
