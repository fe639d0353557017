"""Messages the worker cannot decode are dead-lettered, never lost, never fatal."""

import base64
import codecs
import json
import uuid

import pytest

from conftest import RESULT_TIMEOUT, wait_until

DB = 14
WORKER_OPTIONS = {"concurrency": 2}
DEAD_LETTER = "celeriac.dead_letter"


def envelope_with_body(body: bytes, task_id: str) -> bytes:
    """A kombu Redis envelope whose headers are fine but whose body is not valid JSON."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": "interop.add", "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": "(1, 2)", "kwargsrepr": "{}", "origin": "gen0@interop-tests",
            "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": str(uuid.uuid4()), "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


@pytest.mark.rust_only
@pytest.mark.parametrize("raw", [
    pytest.param(b"this is not a kombu envelope \x00\xff{", id="garbage-envelope"),
    pytest.param(envelope_with_body(b"[[1, 2], {}, {not json", "00000000-0000-4000-8000-00000000dead"),
                 id="body-not-json"),
])
def test_malformed_message_is_dead_lettered_and_the_worker_goes_on(client, rdb, worker, raw):
    rdb.lpush("celery", raw)
    # A later call succeeds: the worker neither crashed nor stalled on the bad message.
    assert client.add.delay(2, 3).get(timeout=RESULT_TIMEOUT) == 5
    assert worker.alive(), worker.describe()
    kept = envelope_text(raw)
    wait_until(lambda: any(json.loads(e)["envelope"] == kept for e in rdb.lrange(DEAD_LETTER, 0, -1)), 30,
               f"the raw message in the Redis list {DEAD_LETTER}")
    entry = next(json.loads(e) for e in rdb.lrange(DEAD_LETTER, 0, -1) if json.loads(e)["envelope"] == kept)
    assert entry["queue"] == "celery"
    assert entry["reason"], "a dead letter says why it was set aside"
    assert rdb.llen("celery") == 0
    assert rdb.hlen("unacked") == 0, "a dead-lettered message is settled, not left unacked"


codecs.register_error("celeriac_latin1", lambda e: (e.object[e.start:e.end].decode("latin-1"), e.end))


def envelope_text(raw: bytes) -> str:
    """How a dead-letter entry keeps the popped bytes (README: "What happens to bad input"):
    valid UTF-8 as text, each byte of an invalid sequence as its Latin-1 character."""
    return raw.decode("utf-8", errors="celeriac_latin1")
