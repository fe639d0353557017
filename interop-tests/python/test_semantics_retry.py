"""Issue 5, retries: explicit ``Task.retry`` (countdown, eta, max_retries, with and without
a cause) and ``autoretry_for`` (backoff, its maximum, jitter, max_retries), called by a
Celery 5.7 client, checked by timing (from the task's own run log), by the final outcome,
and by the sequence of states the result backend went through.

Both workers (``INTEROP_WORKER=rust|python``) give the same sequences: the expected values
below are what Celery's own worker does.
"""

import time

import pytest
from celery.exceptions import MaxRetriesExceededError

from conftest import RESULT_TIMEOUT

DB = 6
WORKER_OPTIONS = {"concurrency": 4}

# Lower bounds are exact up to clock reading and rounding; upper bounds are generous (a
# busy 2-core machine), they only catch a delay of the wrong size.
EARLY = 0.05
LATE = 1.5


def runs(client, task_id):
    return client.call("interop.semantics.runs", [task_id])


def gaps(run_log):
    """Per retry: how far after the failed run's start its eta was set (the countdown; 0
    for a retry sent without an eta, as Celery sends a countdown of 0)."""
    return [0.0 if later["eta"] is None else later["eta"] - earlier["started"]
            for earlier, later in zip(run_log, run_log[1:])]


def assert_eta_honoured(run_log, always_eta=True):
    for run in run_log[1:]:
        if run["eta"] is None and not always_eta:
            continue
        assert run["eta"] is not None, run_log
        assert run["started"] >= run["eta"] - EARLY, f"started before its eta: {run_log}"


def assert_countdowns(run_log, expected):
    got = gaps(run_log)
    assert len(got) == len(expected), run_log
    for value, want in zip(got, expected):
        assert want - EARLY <= value <= want + LATE, f"countdowns {got}, expected {expected}"


def describe(meta):
    """``(state, exc type, exc args)`` of a stored exception, else ``(state, value)``."""
    value = meta["result"]
    if isinstance(value, dict) and "exc_type" in value:
        return meta["status"], value["exc_type"], value["exc_message"]
    if isinstance(value, BaseException):
        return meta["status"], type(value).__name__, list(value.args)
    return meta["status"], value


def state_sequence(result, timeout=RESULT_TIMEOUT):
    """Every state the backend reported for ``result`` until it was ready, in order:
    Celery's ``get(on_message=...)`` hears each one (Redis: the backend's PUBLISH; rpc://:
    each reply message), ``[(state, exc type, exc args) or (state, value)]``."""
    seen = []

    def heard(meta):
        # The callback hears the other pending calls of this client too.
        if meta.get("task_id") == result.id:
            seen.append(describe(meta))

    result.get(timeout=timeout, propagate=False, on_message=heard)
    return seen


def test_retry_countdown_is_honoured(client, worker):
    sent = time.time()
    result = client.app.send_task("interop.semantics.retry", [2], {"countdown": 1})
    log = result.get(timeout=RESULT_TIMEOUT)
    done = time.time()
    assert [run["retries"] for run in log] == [0, 1, 2]
    assert_countdowns(log, [1, 1])
    assert_eta_honoured(log)
    assert done - sent >= 2 - EARLY


def test_retry_eta_is_honoured(client, worker):
    result = client.app.send_task("interop.semantics.retry", [1], {"eta_in": 1.5})
    log = result.get(timeout=RESULT_TIMEOUT)
    assert [run["retries"] for run in log] == [0, 1]
    assert_countdowns(log, [1.5])
    assert_eta_honoured(log)


def test_retry_stores_retry_with_its_cause_then_success(client, worker):
    result = client.app.send_task("interop.semantics.retry", [2],
                                  {"countdown": 1, "exc": "flaky"})
    states = state_sequence(result)
    assert states[:-1] == [("RETRY", "ValueError", ["flaky 0"]), ("RETRY", "ValueError", ["flaky 1"])]
    assert states[-1][0] == "SUCCESS"
    assert [run["retries"] for run in states[-1][1]] == [0, 1, 2]


def test_retry_without_a_cause_stores_retry_with_no_exception(client, worker):
    """Celery stores the ``exc`` given to ``retry()``: none given, the RETRY result is None."""
    result = client.app.send_task("interop.semantics.retry", [1], {"countdown": 1})
    states = state_sequence(result)
    assert states[:-1] == [("RETRY", None)], states
    assert states[-1][0] == "SUCCESS"


def test_max_retries_override_then_max_retries_exceeded(client, worker):
    result = client.app.send_task("interop.semantics.retry", [10],
                                  {"countdown": 0.1, "max_retries": 1})
    with pytest.raises(MaxRetriesExceededError) as caught:
        result.get(timeout=RESULT_TIMEOUT)
    assert caught.value.args == (
        f"Can't retry interop.semantics.retry[{result.id}] args:(10,) "
        "kwargs:{'countdown': 0.1, 'max_retries': 1}",)
    assert [run["retries"] for run in runs(client, result.id)] == [0, 1]


def test_default_max_retries_is_three(client, worker):
    result = client.app.send_task("interop.semantics.retry", [10], {"countdown": 0.1})
    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=RESULT_TIMEOUT)
    assert [run["retries"] for run in runs(client, result.id)] == [0, 1, 2, 3]


def test_retries_exhausted_with_a_cause_fail_with_the_cause(client, worker):
    result = client.app.send_task("interop.semantics.retry", [10],
                                  {"countdown": 0.1, "max_retries": 2, "exc": "boom"})
    with pytest.raises(ValueError) as caught:
        result.get(timeout=RESULT_TIMEOUT)
    assert caught.value.args == ("boom 2",)
    assert result.state == "FAILURE"
    assert [run["retries"] for run in runs(client, result.id)] == [0, 1, 2]


def test_autoretry_backoff_doubles_up_to_its_maximum(client, worker):
    """``retry_backoff=1, retry_backoff_max=2, retry_jitter=False, max_retries=3`` on
    ``ConnectionError``: countdowns 1, 2, 2; the fourth failure is stored as itself; an
    error not in ``autoretry_for`` fails at once."""
    succeeds = client.app.send_task("interop.semantics.autoretry", [3])
    exhausted = client.app.send_task("interop.semantics.autoretry", [4])
    other = client.app.send_task("interop.semantics.autoretry", [1], {"exc_type": "ValueError"})

    states = state_sequence(succeeds)
    assert states[:-1] == [("RETRY", "ConnectionError", [f"attempt {n}"]) for n in range(3)], states
    assert states[-1][0] == "SUCCESS"
    log = states[-1][1]
    assert [run["retries"] for run in log] == [0, 1, 2, 3]
    assert_countdowns(log, [1, 2, 2])
    assert_eta_honoured(log)

    with pytest.raises(ConnectionError) as caught:
        exhausted.get(timeout=RESULT_TIMEOUT)
    assert caught.value.args == ("attempt 3",)
    assert len(runs(client, exhausted.id)) == 4

    with pytest.raises(ValueError) as caught:
        other.get(timeout=RESULT_TIMEOUT)
    assert caught.value.args == ("attempt 0",)
    assert len(runs(client, other.id)) == 1


def test_autoretry_with_full_jitter_stays_within_the_backoff(client, worker):
    """``autoretry_for=(Exception,)``, factor 2 capped at 2 with full jitter: each countdown
    is a whole number of seconds from 0 to 2."""
    results = [client.app.send_task("interop.semantics.autoretry_jitter", [3], {"exc_type": "KeyError"})
               for _ in range(3)]
    for result in results:
        log = result.get(timeout=RESULT_TIMEOUT)
        assert [run["retries"] for run in log] == [0, 1, 2, 3]
        for gap in gaps(log):
            assert -EARLY <= gap <= 2 + LATE, gaps(log)
        assert_eta_honoured(log, always_eta=False)


def test_autoretry_without_backoff_waits_default_retry_delay(client, worker):
    """No backoff: the retry comes after ``default_retry_delay`` (1 s); ``max_retries=1``."""
    succeeds = client.app.send_task("interop.semantics.autoretry_plain", [1])
    exhausted = client.app.send_task("interop.semantics.autoretry_plain", [2])
    log = succeeds.get(timeout=RESULT_TIMEOUT)
    assert_countdowns(log, [1])
    assert_eta_honoured(log)
    with pytest.raises(ConnectionError) as caught:
        exhausted.get(timeout=RESULT_TIMEOUT)
    assert caught.value.args == ("attempt 1",)


@pytest.mark.rust_only
def test_etas_run_within_100_ms_of_their_time(client, worker):
    """Issue 5: a message runs within 100 ms of its eta. Ten messages (etas 1.0–1.9 s ahead,
    aware and naive) from a Celery client: none starts early, and the median lateness is
    within the 100 ms (a single one may be later on a busy machine, so the maximum only
    gets a generous bound). Celery's own worker polls its timer and is not held to this."""
    from datetime import datetime, timedelta, timezone

    sent = []
    for i in range(10):
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.0 + i / 10)
        if i % 2:
            eta = eta.replace(tzinfo=None)  # naive: read as UTC, as Celery does
        sent.append(client.app.send_task("interop.semantics.record", [i], eta=eta))
    for result in sent:
        result.get(timeout=RESULT_TIMEOUT)
    late = []
    for result in sent:
        (run,) = runs(client, result.id)
        assert run["started"] >= run["eta"], f"started before its eta: {run}"
        late.append(run["started"] - run["eta"])
    late.sort()
    median = (late[4] + late[5]) / 2
    print(f"eta lateness: median {median * 1000:.1f} ms, max {late[-1] * 1000:.1f} ms")
    assert median <= 0.1, f"median lateness {median:.3f} s: {late}"
    assert late[-1] <= LATE, f"lateness {late}"
