"""Messages the worker cannot decode are dead-lettered, never lost, never fatal.

On Redis the worker pushes the raw message onto the list ``celeriac.dead_letter``; on AMQP
it publishes it, unchanged, to the durable queue of that name (with publisher confirm) and
only then acknowledges the original.
"""

import base64
import codecs
import json
import uuid

import amqp
import pytest

from conftest import RESULT_TIMEOUT, AmqpBroker, wait_until

DB = 14
WORKER_OPTIONS = {"concurrency": 2}
DEAD_LETTER = "celeriac.dead_letter"


def celery_headers(task_id: str) -> dict:
    """The protocol-v2 headers of an ``interop.add(1, 2)`` call, as Celery 5.7 sends them."""
    return {
        "lang": "py", "task": "interop.add", "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "(1, 2)", "kwargsrepr": "{}", "origin": "gen0@interop-tests",
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }


def envelope_with_body(body: bytes, task_id: str) -> bytes:
    """A kombu Redis envelope whose headers are fine but whose body is not valid JSON."""
    return json.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": celery_headers(task_id),
        "properties": {
            "correlation_id": task_id, "reply_to": str(uuid.uuid4()), "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


# Redis only: the message is pushed into kombu's Redis list by hand, and the checks read the
# Redis dead-letter list and kombu's Redis ``unacked`` bookkeeping. The AMQP variant follows.
@pytest.mark.rust_only
@pytest.mark.transports("redis")
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


@pytest.mark.rust_only
@pytest.mark.transports("amqp-redis", "amqp-rpc")
@pytest.mark.parametrize("body, headers", [
    # Not JSON at all (a NUL, invalid UTF-8), though it says application/json; no task headers.
    pytest.param(b"this is not JSON \x00\xff{", {"x-interop-case": "garbage-body"}, id="garbage-body"),
    # Celery's headers are fine, the body is not valid JSON.
    pytest.param(b"[[1, 2], {}, {not json", celery_headers("00000000-0000-4000-8000-00000000dead"),
                 id="body-not-json"),
])
def test_amqp_malformed_message_is_dead_lettered_and_the_worker_goes_on(client, worker, amqp_broker,
                                                                        body, headers):
    marker = str(uuid.uuid4())
    properties = {
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
        "priority": 0,
        "correlation_id": marker,
        "reply_to": str(uuid.uuid4()),
        "message_id": marker,
    }
    # Where a Celery client publishes a call to the queue "celery" (the worker's readiness
    # probes declared the queue and its exchange).
    amqp_broker.publish(body, exchange="celery", routing_key="celery", headers=headers, **properties)
    # A later call succeeds: the worker neither crashed nor stalled on the bad message.
    assert client.add.delay(2, 3).get(timeout=RESULT_TIMEOUT) == 5
    assert worker.alive(), worker.describe()

    letter = wait_until(lambda: take_dead_letter(amqp_broker, marker), 30,
                        f"the message in the AMQP queue {DEAD_LETTER}")
    assert letter.body == body, "a dead letter keeps the body bytes unchanged"
    assert letter.delivery_info["exchange"] == "", "dead letters go through the default exchange"
    assert letter.delivery_info["routing_key"] == DEAD_LETTER
    for name, value in properties.items():
        assert letter.properties.get(name) == value, f"property {name} changed: {letter.properties}"
    kept_headers = letter.headers or {}
    for name, value in headers.items():
        assert kept_headers.get(name, KeyError) == value, f"header {name} changed: {kept_headers}"
    reason = kept_headers.get("x-celeriac-reason")
    assert isinstance(reason, str) and reason.strip(), f"a dead letter says why: {kept_headers}"
    assert kept_headers.get("x-celeriac-queue") == "celery", kept_headers
    assert kept_headers.get("x-original-exchange") == "celery", kept_headers
    assert kept_headers.get("x-original-routing-key") == "celery", kept_headers

    info = amqp_broker.queue_info(DEAD_LETTER)
    assert info is not None and info["durable"] is True, f"{DEAD_LETTER} must be durable: {info}"
    assert amqp_broker.queue_length("celery") == 0
    # The original is acknowledged once the dead letter is confirmed: nothing stays unacked.
    wait_until(lambda: amqp_broker.unacked("celery") == 0, 30,
               "the malformed original to be acknowledged")


def take_dead_letter(amqp_broker: AmqpBroker, marker: str):
    """Drain the dead-letter queue until the message with correlation id ``marker`` (or None).

    Earlier cases' letters were checked already; whatever else is drained is dropped.
    """
    while True:
        try:
            message = amqp_broker.get(DEAD_LETTER)
        except amqp.exceptions.NotFound:
            return None  # not declared yet; the channel is reopened on the next call
        if message is None:
            return None
        if message.properties.get("correlation_id") == marker:
            return message


codecs.register_error("celeriac_latin1", lambda e: (e.object[e.start:e.end].decode("latin-1"), e.end))


def envelope_text(raw: bytes) -> str:
    """How a dead-letter entry keeps the popped bytes (README: "What happens to bad input"):
    valid UTF-8 as text, each byte of an invalid sequence as its Latin-1 character."""
    return raw.decode("utf-8", errors="celeriac_latin1")
