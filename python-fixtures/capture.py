#!/usr/bin/env python3
"""Regenerate Celeriac's golden vectors in ``interop-tests/vectors/`` from real Celery 5.7.

Broker messages are captured without any worker: the Celery 5.7 client publishes to Redis
(``LPUSH`` by kombu's Redis transport) and this script reads the list elements back with
``LRANGE``, byte for byte. Result-backend values need a worker: a ``-P solo`` pytasks worker
runs in a subprocess for them, and its stored values are read back with ``GET``.

Usage (only Redis is needed; the database is flushed first)::

    python python-fixtures/capture.py [--redis redis://127.0.0.1:6379/9] [--out DIR]

To make the output reproducible the fields that Celery fills with random or host-specific
values are fixed: task, group and chord ids (``00000000-0000-4000-8000-000000000NNN``),
``reply_to``, ``origin``, and kombu's ``delivery_tag`` (the transport's tag generator is
replaced by a counter of uuid-shaped strings). Everything else is Celery's own output.
Result values keep their ``date_done``; absolute paths in tracebacks are shortened to
``site-packages/...`` and ``python-fixtures/...``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import decimal
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/9"
DEFAULT_OUT = REPO / "interop-tests" / "vectors"

REPLY_TO = "00000000-0000-4000-a000-0000000000aa"
ORIGIN = "gen1@capture"


def tid(n: int) -> str:
    """The fixed id number ``n``."""
    return f"00000000-0000-4000-8000-{n:012d}"


def fix_volatile_fields() -> None:
    """Replace what Celery and kombu fill with random or host-specific values by fixed ones.

    Patched where they are generated rather than passed as options: passing ``origin=``
    to ``apply_async`` would also add it to the message properties, which a plain call
    never does. Patched: kombu's delivery tags; Celery's ``origin`` header; the app's
    per-thread oid (``reply_to``, also inside embedded signatures); the ids that canvas
    generates (group and chord ids).
    """
    from celery.app import amqp, base as app_base
    from celery import canvas
    from kombu.transport.virtual import base

    tags = itertools.count(1)
    base.Channel._next_delivery_tag = lambda self: f"00000000-0000-4000-9000-{next(tags):012d}"
    amqp.anon_nodename = lambda *args, **kwargs: ORIGIN
    app_base.Celery.thread_oid = property(lambda self: REPLY_TO)
    ids = itertools.count(1)
    canvas.uuid = lambda *args, **kwargs: f"00000000-0000-4000-b000-{next(ids):012d}"


class Capture:
    def __init__(self, url: str, out: Path):
        self.url = url
        self.out = out
        self.r = redis.Redis.from_url(url)
        self.r.ping()
        self.index: list[tuple[str, str]] = []

    # --- writing ---------------------------------------------------------------------

    def write(self, rel: str, data: bytes, description: str) -> None:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.index.append((rel, description))

    def write_json(self, rel: str, value, description: str) -> None:
        text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
        self.write(rel, text.encode(), description)

    # --- broker messages ---------------------------------------------------------------

    def list_keys(self) -> list[bytes]:
        return sorted(k for k in self.r.scan_iter() if self.r.type(k) == b"list")

    def clear_lists(self) -> None:
        for key in self.list_keys():
            self.r.delete(key)

    def take_messages(self) -> list[tuple[bytes, bytes]]:
        """Every list element now in Redis, oldest first, with its list key."""
        found = []
        for key in self.list_keys():
            # LPUSH puts the newest element at the head: reverse for publish order.
            for element in reversed(self.r.lrange(key, 0, -1)):
                found.append((key, element))
        self.clear_lists()
        return found

    def broker_case(self, name: str, description: str, publish) -> None:
        self.clear_lists()
        publish()
        messages = self.take_messages()
        if not messages:
            raise SystemExit(f"capture {name}: nothing was published")
        many = len(messages) > 1
        for i, (key, raw) in enumerate(messages):
            stem = f"redis/broker/{name}.{i}" if many else f"redis/broker/{name}"
            key_text = key.decode("latin-1").encode("unicode_escape").decode()
            what = f"{description}; list key `{key_text}`"
            if many:
                what += f"; message {i + 1} of {len(messages)}"
            self.write(f"{stem}.json", raw, f"exact LPUSH element: {what}")
            self.write_json(f"{stem}.decoded.json", {"list_key": key_text, **decode_envelope(raw)},
                            f"decode of {Path(stem).name}.json")

    # --- result-backend values -------------------------------------------------------

    def backend_value(self, name: str, task_id: str, description: str) -> None:
        key = f"celery-task-meta-{task_id}"
        raw = self.r.get(key)
        if raw is None:
            raise SystemExit(f"capture {name}: no {key} in the backend")
        self.write(f"backend/redis/{name}.json", shorten_paths(raw),
                   f"exact `GET {key}` value: {description}")


def shorten_paths(raw: bytes) -> bytes:
    """Tracebacks name absolute paths; keep only the part that means something elsewhere."""
    text = raw.decode()
    value = json.loads(text)
    trace = value.get("traceback")
    if not trace:
        return raw
    short = trace
    for prefix in sorted({os.path.dirname(p) for p in sys.path if p.endswith("site-packages")},
                         key=len, reverse=True):
        short = short.replace(prefix + "/", "")
    short = short.replace(str(HERE) + "/", "python-fixtures/")
    # Re-encode only the traceback string so every other byte stays Celery's.
    return text.replace(json.dumps(trace)[1:-1], json.dumps(short)[1:-1]).encode()


def decode_envelope(raw: bytes) -> dict:
    envelope = json.loads(raw)
    body = envelope.get("body")
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    ctype = envelope.get("content-type")
    if ctype == "application/json":
        decoded = json.loads(body)
    elif ctype == "application/x-msgpack":
        decoded = msgpack.unpackb(body, raw=False)
    else:
        decoded = {"undecoded_base64": base64.b64encode(body).decode()}
    return {"envelope": {**envelope, "body": "<see decoded_body>"}, "decoded_body": decoded}


def make_app(url: str, **conf):
    """The pytasks app pointed at the capture database."""
    sys.path.insert(0, str(HERE))
    import pytasks  # noqa: E402 - the fixtures folder is only importable from here

    app = pytasks.app
    app.conf.update(broker_url=url, result_backend=url, **conf)
    return app, pytasks


def capture_broker(cap: Capture, url: str) -> None:
    from celery import Celery, chain, chord, group

    app, t = make_app(url)
    opts = {}

    cap.broker_case("v2_basic", "add.apply_async((2, 3)): the plain v2 message",
                    lambda: t.add.apply_async((2, 3), task_id=tid(1), **opts))
    cap.broker_case("v2_kwargs", "add.apply_async(kwargs={'x': 2, 'y': 3})",
                    lambda: t.add.apply_async(kwargs={"x": 2, "y": 3}, task_id=tid(2), **opts))
    cap.broker_case("v2_send_task", "send_task('interop.add', [2, 3]) by name to queue celery",
                    lambda: app.send_task("interop.add", args=[2, 3], task_id=tid(3),
                                          queue="celery", **opts))
    cap.broker_case("v2_msgpack", "serializer='msgpack' (body is msgpack, base64 in the envelope)",
                    lambda: t.add.apply_async((2, 3), {}, serializer="msgpack", task_id=tid(4), **opts))
    cap.broker_case("v2_eta_expires", "eta and expires as tz-aware UTC datetimes",
                    lambda: t.add.apply_async(
                        (2, 3), task_id=tid(5),
                        eta=dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc),
                        expires=dt.datetime(2030, 1, 3, tzinfo=dt.timezone.utc), **opts))
    cap.broker_case("v2_timelimit", "time_limit=30, soft_time_limit=10.5",
                    lambda: t.sleep.apply_async((1,), task_id=tid(6), time_limit=30,
                                                soft_time_limit=10.5, **opts))
    cap.broker_case("v2_unicode", "echo of a non-ASCII string (JSON \\u escapes)",
                    lambda: t.echo.apply_async(("héllo wörld 🦀",), task_id=tid(7), **opts))
    cap.broker_case("v2_special_types",
                    "echo of datetime, date, time, Decimal, UUID, bytes, tuple (kombu __type__ markers)",
                    lambda: t.echo.apply_async(([
                        dt.datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc),
                        dt.date(2030, 1, 2), dt.time(3, 4, 5), decimal.Decimal("3.14"),
                        uuid.UUID(tid(99)), b"\x00\x01bytes", (1, 2),
                    ],), task_id=tid(8), **opts))
    cap.broker_case("v2_link", "add.apply_async((2, 3), link=mul.s(10), link_error=echo.si('failed'))",
                    lambda: t.add.apply_async(
                        (2, 3), task_id=tid(9),
                        link=t.mul.s(10).set(task_id=tid(10)),
                        link_error=t.echo.si("failed").set(task_id=tid(11)), **opts))
    cap.broker_case("v2_stamped", "stamped_headers=['mystamp'], mystamp='stamp-value'",
                    lambda: t.add.apply_async((2, 3), task_id=tid(12), stamped_headers=["mystamp"],
                                              mystamp="stamp-value", **opts))
    cap.broker_case("v2_group", "group(add.s(i, i) for i in range(3)): 3 messages sharing a group id",
                    lambda: group(t.add.s(i, i).set(task_id=tid(20 + i)) for i in range(3))
                    .apply_async(task_id=tid(23), **opts))
    cap.broker_case("v2_chain", "chain(add.s(1, 2), add.s(3), add.s(4)): the first message, embed.chain reversed",
                    lambda: chain(t.add.s(1, 2).set(task_id=tid(30)), t.add.s(3).set(task_id=tid(31)),
                                  t.add.s(4).set(task_id=tid(32))).apply_async(**opts))
    cap.broker_case("v2_chord", "chord([add.s(1, 1), add.s(2, 2)], xsum.s()): header messages carry embed.chord",
                    # The header group's task_id becomes the chord's group id.
                    lambda: chord(group([t.add.s(1, 1).set(task_id=tid(40)),
                                         t.add.s(2, 2).set(task_id=tid(41))]).set(task_id=tid(43)),
                                  t.xsum.s().set(task_id=tid(42))).apply_async(task_id=tid(42), **opts))

    # Protocol v1 needs an app whose amqp was built with task_protocol=1.
    v1 = Celery("capture-v1", broker=url, backend=url, set_as_current=False)
    v1.conf.update(task_protocol=1, task_default_queue="py")
    cap.broker_case("v1_send_task", "task_protocol=1: send_task('pytasks.add', [2, 3]) (args in the body)",
                    lambda: v1.send_task("pytasks.add", args=[2, 3], task_id=tid(50), **opts))
    v1.close()


def capture_backend(cap: Capture, url: str) -> None:
    app, t = make_app(url)
    cap.clear_lists()
    env = dict(os.environ, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url,
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    log = tempfile.TemporaryFile()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pytasks", "worker", "-P", "solo", "-Q", "py",
         "-n", "capture@localhost", "--without-mingle", "--without-gossip", "--without-heartbeat",
         "-l", "warning"],
        cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        ok = t.add.apply_async((2, 3), task_id=tid(101))
        failed = t.fail.apply_async(("boom",), task_id=tid(102))
        unknown = app.send_task("pytasks.not_registered", args=[1], task_id=tid(103), queue="py")
        ok.get(timeout=60)
        for result in (failed, unknown):
            try:
                result.get(timeout=60)
            except Exception:  # noqa: BLE001 - the failure is what is being captured
                pass
            else:
                raise SystemExit(f"{result.id} was expected to fail")
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace"))
        raise
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    # Results hold pub/sub subscriptions; release them before the interpreter exits.
    del ok, failed, unknown
    app.close()
    cap.backend_value("success", tid(101), "SUCCESS of pytasks.add(2, 3) -> 5")
    cap.backend_value("failure_valueerror", tid(102), "FAILURE of pytasks.fail('boom'): ValueError")
    cap.backend_value("not_registered", tid(103),
                      "FAILURE stored by the worker for the unknown task pytasks.not_registered")


def release_results(url: str) -> None:
    """Drop the pub/sub subscriptions that published results hold, while Redis is usable.

    Left alone, AsyncResult.__del__ would try at interpreter exit and print an error.
    """
    app, _ = make_app(url)
    backend = app.backend
    # Celery 5.7 keeps every waiter of a task that never finishes (these were only
    # published) in {task_id: {id(result): result}} maps.
    for mapping in getattr(backend, "_pending_results", ()):
        for waiters in list(mapping.values()):
            for result in list(waiters.values()):
                backend.remove_pending_result(result)
    gc.collect()
    app.close()


def write_index(cap: Capture) -> None:
    import celery
    import kombu

    lines = [
        "# Golden vectors captured by python-fixtures/capture.py",
        "",
        f"Captured from Celery {celery.__version__} / kombu {kombu.__version__} with Redis; "
        "regenerate with `python python-fixtures/capture.py`. `*.json` under `redis/` and "
        "`backend/` are exact bytes; `*.decoded.json` are readable decodes. Ids, `reply_to`, "
        "`origin` and `delivery_tag` are fixed by the script (see its docstring); tracebacks "
        "have shortened paths.",
        "",
        "| file | description |",
        "|---|---|",
    ]
    for rel, description in sorted(cap.index):
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{rel}` | {escaped} |")
    (cap.out / "INDEX.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default=os.environ.get("CAPTURE_REDIS_URL", DEFAULT_REDIS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-backend", action="store_true",
                        help="skip the result-backend values (they start a worker)")
    args = parser.parse_args()

    fix_volatile_fields()
    cap = Capture(args.redis, args.out)
    cap.r.flushdb()
    for sub in ("redis/broker", "backend/redis"):
        target = args.out / sub
        if target.exists():
            for old in target.glob("*.json"):
                old.unlink()
    capture_broker(cap, args.redis)
    if not args.no_backend:
        capture_backend(cap, args.redis)
    write_index(cap)
    release_results(args.redis)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(cap.index)} files to {args.out} ({total} bytes)")
    cap.r.flushdb()


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"done in {time.monotonic() - started:.1f} s")
