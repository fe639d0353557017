"""Every task of the INTEROP.md table, called from Celery 5.7, with both serializers."""

import pytest
from celery.exceptions import NotRegistered

from conftest import RESULT_TIMEOUT

DB = 10
WORKER_OPTIONS = {"concurrency": 4}

I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

SERIALIZERS = ["json", "msgpack"]


@pytest.fixture(params=SERIALIZERS)
def any_client(request, clients, worker):
    return clients[request.param]


def get(result):
    return result.get(timeout=RESULT_TIMEOUT)


# --- each task, by position and by keyword ------------------------------------------------


def test_noop_returns_none(any_client):
    assert get(any_client.noop.delay()) is None
    assert any_client.call("interop.noop") is None


def test_add_by_position_and_keyword(any_client):
    assert get(any_client.add.delay(2, 3)) == 5
    assert get(any_client.add.apply_async(kwargs={"x": 40, "y": 2})) == 42
    assert get(any_client.add.apply_async((-7,), {"y": 3})) == -4
    assert any_client.call("interop.add", [I64_MAX - 1, 1]) == I64_MAX


def test_mul_by_position_and_keyword(any_client):
    assert get(any_client.mul.delay(6, 7)) == 42
    assert get(any_client.mul.apply_async(kwargs={"x": -3, "y": 5})) == -15
    assert any_client.call("interop.mul", kwargs={"x": 0, "y": 123}) == 0


def test_echo_by_position_and_keyword(any_client):
    assert get(any_client.echo.delay("hello")) == "hello"
    assert get(any_client.echo.apply_async(kwargs={"value": [1, 2, 3]})) == [1, 2, 3]


@pytest.mark.parametrize("value", [
    None,
    True,
    False,
    0,
    -1,
    I64_MAX,
    I64_MIN,
    1.5,
    -0.25,
    "",
    "plain ascii",
    [],
    {},
    [1, "two", 3.0, None, True],
    {"a": 1, "b": [1, 2, {"c": None}]},
], ids=repr)
def test_echo_scalar_and_container_values(any_client, value):
    assert get(any_client.echo.delay(value)) == value


def test_echo_unicode(any_client):
    value = "héllo wörld — 你好, мир, 🦀🐍 \u00e9\u0301 \\ \"quoted\" \n\t"
    assert get(any_client.echo.delay(value)) == value
    keyed = {"ключ": "значение", "🔑": ["ü", "ß", "日本語"]}
    assert get(any_client.echo.delay(keyed)) == keyed


def test_echo_nested(any_client):
    nested = {"level": 0, "children": []}
    node = nested
    for depth in range(1, 30):
        child = {"level": depth, "children": [], "tags": ["x"] * (depth % 3), "n": depth * 1.25}
        node["children"].append(child)
        node = child
    assert get(any_client.echo.delay(nested)) == nested


def test_echo_one_megabyte(any_client):
    big = "0123456789abcdef" * (1024 * 1024 // 16)
    assert len(big) == 1024 * 1024
    assert get(any_client.echo.delay(big)) == big
    many = list(range(100_000))
    assert get(any_client.echo.delay(many)) == many


def test_concat_with_and_without_sep(any_client):
    assert get(any_client.concat.delay(["a", "b", "c"])) == "abc"
    assert get(any_client.concat.delay(["a", "b", "c"], "-")) == "a-b-c"
    assert get(any_client.concat.apply_async(kwargs={"parts": ["x", "y"], "sep": ", "})) == "x, y"
    assert get(any_client.concat.apply_async(kwargs={"parts": ["x", "y"]})) == "xy"
    assert get(any_client.concat.delay([])) == ""
    assert get(any_client.concat.delay(["ü", "🦀"], "·")) == "ü·🦀"


def test_xsum_by_position_and_keyword(any_client):
    assert get(any_client.xsum.delay([1, 2, 3, 4])) == 10
    assert get(any_client.xsum.apply_async(kwargs={"values": []})) == 0
    assert any_client.call("interop.xsum", [[-5, 5, 7]]) == 7


def test_sleep_and_blocking_sleep_return_their_argument(any_client):
    assert get(any_client.sleep.delay(0.1)) == pytest.approx(0.1)
    assert get(any_client.sleep.apply_async(kwargs={"seconds": 0})) == 0
    assert get(any_client.blocking_sleep.delay(0.1)) == pytest.approx(0.1)
    assert get(any_client.blocking_sleep.apply_async(kwargs={"seconds": 0.05})) == pytest.approx(0.05)


# --- failures raised in Python --------------------------------------------------------------


def test_fail_raises_value_error_with_message(any_client):
    with pytest.raises(ValueError) as info:
        get(any_client.fail.delay("boom: ünïcode"))
    assert info.type is ValueError
    assert info.value.args == ("boom: ünïcode",)
    result = any_client.fail.apply_async(kwargs={"message": "by keyword"})
    with pytest.raises(ValueError, match="^by keyword$"):
        get(result)
    assert result.state == "FAILURE"
    assert result.failed()


@pytest.mark.parametrize("x, y", [(I64_MAX, 1), (I64_MIN, -1)])
def test_add_overflow_raises_overflow_error(any_client, x, y):
    with pytest.raises(OverflowError):
        get(any_client.add.delay(x, y))


@pytest.mark.parametrize("name, args, kwargs", [
    ("interop.add", ["a", 1], None),                      # wrong type
    ("interop.add", [1.5, 2], None),                      # float for an integer
    ("interop.add", [1], None),                           # too few
    ("interop.add", [1, 2, 3], None),                     # too many
    ("interop.add", [1, 2], {"z": 3}),                    # unknown keyword
    ("interop.add", None, {"x": 1}),                      # missing keyword
    ("interop.concat", [[1, 2]], None),                   # list of the wrong type
    ("interop.concat", [["a"], 5], None),                 # sep not a string
    ("interop.xsum", ["not a list"], None),
    ("interop.fail", None, None),                         # missing its message
    ("interop.sleep", ["long"], None),
    ("interop.noop", [1], None),                          # takes nothing
], ids=lambda v: repr(v))
def test_wrong_arguments_raise_type_error(any_client, name, args, kwargs):
    result = any_client.app.send_task(name, args=args, kwargs=kwargs)
    with pytest.raises(TypeError):
        get(result)
    assert result.state == "FAILURE"
    # The worker survived and still answers.
    assert any_client.call("interop.add", [1, 1]) == 2


def test_unknown_task_raises_not_registered(any_client):
    result = any_client.app.send_task("interop.does_not_exist", args=[1])
    with pytest.raises(NotRegistered) as info:
        get(result)
    assert "interop.does_not_exist" in str(info.value)
    assert result.state == "FAILURE"
    assert any_client.call("interop.noop") is None


# --- panic survival -------------------------------------------------------------------------


def test_panic_fails_the_call_and_the_worker_goes_on(client, worker):
    result = client.panic.delay()
    with pytest.raises(Exception):
        get(result)
    assert result.state == "FAILURE"
    assert worker.alive(), worker.describe()
    assert get(client.add.delay(20, 22)) == 42


@pytest.mark.rust_only
def test_panic_many_times_leaves_the_worker_serving(client, worker, transport):
    panics = [client.panic.delay() for _ in range(20)]
    for result in panics:
        with pytest.raises(Exception):
            get(result)
        assert result.state == "FAILURE"
        # The failure is a real exception record a Python caller can rebuild.
        assert isinstance(result.result, BaseException), result.result
        if transport.redis_backend:
            # Stored, so read again from the backend. (rpc:// stores nothing: get()
            # consumed the one reply, and the backend has no copy to read twice.)
            meta = client.app.backend.get_task_meta(result.id)
            assert meta["status"] == "FAILURE"
            assert isinstance(meta["result"], BaseException)
    assert worker.alive(), worker.describe()
    assert [get(client.add.delay(i, i)) for i in range(10)] == [2 * i for i in range(10)]


# --- retries and the request context -----------------------------------------------------


def test_flaky_retries_then_returns_the_number_of_retries(any_client):
    assert get(any_client.flaky.delay(2)) == 2
    assert get(any_client.flaky.apply_async(kwargs={"failures": 0})) == 0


def test_whoami_reports_its_request(any_client, worker):
    result = any_client.whoami.delay()
    info = get(result)
    assert set(info) >= {"hostname", "task_id", "retries", "root_id", "parent_id", "delivery_info"}
    assert info["task_id"] == result.id
    assert info["retries"] == 0
    assert info["root_id"] == result.id
    assert info["parent_id"] is None
    assert info["hostname"] == worker.hostname
    assert info["delivery_info"]["routing_key"] == "celery"


def test_whoami_sees_explicit_ids(client):
    result = client.app.send_task("interop.whoami", task_id="00000000-0000-4000-8000-00000000abcd",
                                  root_id="00000000-0000-4000-8000-0000000000aa",
                                  parent_id="00000000-0000-4000-8000-0000000000bb")
    info = get(result)
    assert info["task_id"] == "00000000-0000-4000-8000-00000000abcd"
    assert info["root_id"] == "00000000-0000-4000-8000-0000000000aa"
    assert info["parent_id"] == "00000000-0000-4000-8000-0000000000bb"
