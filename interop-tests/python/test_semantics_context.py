"""Issue 5, request context: what a task reads from its request is what Celery 5.7's client
sent (``apply_async`` options, a group, retries), on every transport.

``interop.semantics.context`` returns the whole context; ``interop.semantics.runs`` says
when each run started. Both workers (``INTEROP_WORKER=rust|python``) give the same values.
"""

from datetime import datetime, timedelta, timezone

from celery import group

from conftest import RESULT_TIMEOUT

DB = 6
WORKER_OPTIONS = {"concurrency": 4}

CONTEXT = "interop.semantics.context"
# Rounding of times written as text (microseconds) and scheduling of the eta timer.
SLACK = timedelta(milliseconds=50)


def when(text):
    """A time the context wrote as ISO 8601 text, timezone-aware."""
    assert isinstance(text, str), f"not a time: {text!r}"
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def runs(client, task_id):
    return client.call("interop.semantics.runs", [task_id])


def test_every_field_arrives_as_the_client_sent_it(client, worker):
    before = datetime.now(timezone.utc)
    result = client.app.send_task(
        CONTEXT, args=[{"k": [1, "x"]}], kwargs={"retry_times": 0}, countdown=1, expires=600,
        priority=5, headers={"x-trace": "abc"}, time_limit=30, soft_time_limit=20)
    after = datetime.now(timezone.utc)
    ctx = result.get(timeout=RESULT_TIMEOUT)

    assert ctx["id"] == result.id
    assert ctx["name"] == CONTEXT
    assert ctx["args"] == [{"k": [1, "x"]}]
    assert ctx["kwargs"] == {"retry_times": 0}
    assert ctx["retries"] == 0
    eta = when(ctx["eta"])
    assert before + timedelta(seconds=1) - SLACK <= eta <= after + timedelta(seconds=1) + SLACK
    expires = when(ctx["expires"])
    assert before + timedelta(seconds=600) - SLACK <= expires <= after + timedelta(seconds=600) + SLACK
    assert ctx["root_id"] == result.id, "a call from outside a task is its own root"
    assert ctx["parent_id"] is None
    assert ctx["group"] is None and ctx["group_index"] is None
    assert ctx["correlation_id"] == result.id
    assert ctx["reply_to"] == client.app.thread_oid
    assert ctx["hostname"] == worker.hostname
    assert ctx["delivery_info"] == {"exchange": "", "routing_key": "celery", "priority": 5,
                                    "redelivered": False}
    assert ctx["headers"]["x-trace"] == "abc"
    assert ctx["timelimit"] == [30, 20]

    # The eta was honoured: the task did not start before it.
    (run,) = runs(client, result.id)
    assert run["started"] >= eta.timestamp() - SLACK.total_seconds(), (run, eta)
    assert abs(run["eta"] - eta.timestamp()) < 0.001


def test_a_plain_call_has_no_eta_expiry_or_limits(client, worker):
    result = client.app.send_task(CONTEXT, kwargs={"value": "plain"})
    ctx = result.get(timeout=RESULT_TIMEOUT)
    assert ctx["args"] == [] and ctx["kwargs"] == {"value": "plain"}
    assert ctx["eta"] is None and ctx["expires"] is None
    assert ctx["timelimit"] == [None, None]
    # kombu gives every message it sends priority 0 when the caller names none.
    assert ctx["delivery_info"]["priority"] == 0
    assert ctx["delivery_info"]["redelivered"] is False
    assert "x-trace" not in ctx["headers"]


def test_group_members_see_their_group_and_index(client, worker):
    sigs = [client.app.signature(CONTEXT, args=[i]) for i in range(3)]
    res = group(sigs, app=client.app).apply_async()
    contexts = res.get(timeout=RESULT_TIMEOUT)
    assert [c["args"] for c in contexts] == [[0], [1], [2]]
    for index, (child, ctx) in enumerate(zip(res.results, contexts)):
        assert ctx["id"] == child.id
        assert ctx["group"] == res.id
        assert ctx["group_index"] == index
        assert ctx["root_id"] == child.id
        assert ctx["parent_id"] is None


def test_a_retried_task_keeps_what_the_client_sent(client, worker):
    """A retry is the same task again: same id, root and options; its parent is itself."""
    result = client.app.send_task(CONTEXT, args=["v"], kwargs={"retry_times": 2}, priority=3,
                                  headers={"x-trace": "r"}, time_limit=30)
    ctx = result.get(timeout=RESULT_TIMEOUT)
    assert ctx["retries"] == 2
    assert ctx["id"] == result.id
    assert ctx["args"] == ["v"] and ctx["kwargs"] == {"retry_times": 2}
    assert ctx["root_id"] == result.id
    assert ctx["parent_id"] == result.id, "Celery's retry is sent from inside the task"
    assert ctx["correlation_id"] == result.id
    assert ctx["reply_to"] == client.app.thread_oid
    assert ctx["eta"] is not None, "a retry carries its countdown as an eta"
    assert ctx["headers"]["x-trace"] == "r"
    assert ctx["timelimit"] == [30, None]
    assert ctx["delivery_info"]["routing_key"] == "celery"
    assert ctx["delivery_info"]["priority"] == 3
    assert [run["retries"] for run in runs(client, result.id)] == [0, 1, 2]
