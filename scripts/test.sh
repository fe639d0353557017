#!/usr/bin/env bash
# The project's whole test run: what CI runs (.ci/run) and the README's second command.
#
# On a fresh Debian machine (root, CI=true, no stdin) it installs what is missing, then
#   1. builds the Rust interop worker (release),
#   2. runs `cargo test --workspace`, then the README's first command (the quickstart example),
#   3. runs the pytest interop suite against that worker (Redis, RabbitMQ + Redis, RabbitMQ + rpc://),
#   4. runs the benchmark harness's smoke test (benches/run.py --smoke, on a Redis of its own)
#      and each criterion micro-benchmark once (`cargo bench ... -- --test`),
#   5. runs the Java interop tests (Maven) against that worker.
# Every stage is announced; a failing stage stops the run with a non-zero exit code.
# Nothing is skipped: a missing tool or service is installed or reported as a failure.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="$REPO/.venv"
REQUIREMENTS="$REPO/python-fixtures/requirements.txt"
STAMP="$VENV/.requirements.sha256"
export DEBIAN_FRONTEND=noninteractive
# The RabbitMQ virtual host every test uses (created below).
export AMQP_VHOST="${AMQP_VHOST:-celeriac-test}"
export CELERIAC_TEST_AMQP_URL="${CELERIAC_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/$AMQP_VHOST}"

STAGE="start"
stage() {
    STAGE="$1"
    printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$1"
}
trap 'rc=$?; printf "\n!!! stage failed: %s (exit %s)\n" "$STAGE" "$rc" >&2; exit "$rc"' ERR

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "missing packages ($*) and no apt-get to install them" >&2
        return 1
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root apt-get update
        APT_UPDATED=1
    fi
    # Installing a service package would start it; start nothing here (Redis and
    # RabbitMQ are started below, the way this script wants them). policy-rc.d is Debian's switch for exactly that.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        made_policy=1
    fi
    local rc=0
    as_root apt-get install -y --no-install-recommends "$@" </dev/null || rc=$?
    if [ "$made_policy" -eq 1 ]; then
        as_root rm -f "$policy"
    fi
    return "$rc"
}

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/lib/rabbitmq/bin/$1" ]; }

stage "system packages"
missing=()
have redis-server || missing+=(redis-server)
have redis-cli || missing+=(redis-tools)
have rabbitmq-server || missing+=(rabbitmq-server)
have python3 || missing+=(python3)
have openssl || missing+=(openssl)
have javac || missing+=(default-jdk-headless)
have mvn || missing+=(maven)
# `python3 -m venv` needs ensurepip, which Debian ships apart (python3-venv).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
else
    echo "redis-server, rabbitmq-server, python3 (venv), openssl, a JDK and maven are installed"
fi
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is not installed (a Rust toolchain is required)" >&2
    false
fi
cargo --version
python3 --version

stage "python venv (.venv from python-fixtures/requirements.txt)"
want="$( (sha256sum "$REQUIREMENTS" | cut -d' ' -f1; python3 --version) | sha256sum | cut -d' ' -f1)"
have_stamp="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have_stamp" ] || ! "$VENV/bin/python" -c 'import celery, pytest' >/dev/null 2>&1; then
    echo "creating $VENV (missing or outdated)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    echo "$want" > "$STAMP"
else
    echo "$VENV is up to date"
fi
"$VENV/bin/python" -c 'import celery, kombu; print("celery", celery.__version__, "kombu", kombu.__version__)'

stage "redis"
if ! redis-cli ping >/dev/null 2>&1; then
    echo "redis is not answering; starting redis-server"
    redis-server --daemonize yes
    for _ in $(seq 1 50); do
        redis-cli ping >/dev/null 2>&1 && break
        sleep 0.2
    done
fi
redis-cli ping

stage "rabbitmq (vhost $AMQP_VHOST, TLS on 5671)"
# amqps:// is tested against this RabbitMQ too: a throw-away CA and a server certificate for
# localhost, and a TLS listener, configured only when RabbitMQ has no configuration of its own.
TLS_DIR=/etc/rabbitmq/celeriac-tls
RABBIT_CONF=/etc/rabbitmq/rabbitmq.conf
if [ ! -s "$TLS_DIR/server.pem" ]; then
    echo "making a test CA and a server certificate in $TLS_DIR"
    as_root mkdir -p "$TLS_DIR"
    as_root openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=celeriac-test-ca" \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
    as_root openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' | as_root tee "$TLS_DIR/san.ext" >/dev/null
    as_root openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 3650 -extfile "$TLS_DIR/san.ext" -out "$TLS_DIR/server.pem" 2>/dev/null
    # Test-only key; RabbitMQ may run as its own user.
    as_root chmod 0644 "$TLS_DIR"/*
fi
if [ ! -e "$RABBIT_CONF" ]; then
    echo "writing $RABBIT_CONF (plain listener on 5672, TLS listener on 5671)"
    as_root tee "$RABBIT_CONF" >/dev/null <<CONF
# Written by celeriac's scripts/test.sh for its tests.
listeners.tcp.default = 5672
listeners.ssl.default = 5671
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
fi
if rabbitmqctl -q status >/dev/null 2>&1 && ! rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q 'port: 5671'; then
    if grep -q "celeriac's scripts/test.sh" "$RABBIT_CONF" 2>/dev/null; then
        echo "rabbitmq runs without the TLS listener; restarting it to read $RABBIT_CONF"
        rabbitmqctl -q stop
        sleep 2
    fi
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    echo "rabbitmq is not running; starting rabbitmq-server"
    as_root rabbitmq-server -detached
fi
# await_startup waits for the node that is booting (or fails at once if none is).
for _ in $(seq 1 60); do
    rabbitmqctl -q await_startup --timeout 120 >/dev/null 2>&1 && break
    sleep 1
done
rabbitmqctl -q await_startup --timeout 120
# The tests' own vhost, made afresh each run, so they never touch a real application's
# queues and never see a previous run's.
if rabbitmqctl -q list_vhosts | grep -qx "$AMQP_VHOST"; then
    rabbitmqctl -q delete_vhost "$AMQP_VHOST"
fi
rabbitmqctl -q add_vhost "$AMQP_VHOST"
rabbitmqctl -q set_permissions -p "$AMQP_VHOST" guest '.*' '.*' '.*'
rabbitmq-diagnostics -q listeners
if rabbitmq-diagnostics -q listeners | grep -q 'port: 5671'; then
    export CELERIAC_TEST_AMQPS_URL="${CELERIAC_TEST_AMQPS_URL:-amqps://guest:guest@localhost:5671/$AMQP_VHOST}"
    export CELERIAC_TEST_AMQP_CA="${CELERIAC_TEST_AMQP_CA:-$TLS_DIR/ca.pem}"
else
    echo "RabbitMQ has no TLS listener on 5671 (it has a configuration of its own in $RABBIT_CONF);" >&2
    echo "the amqps:// tests need one: set CELERIAC_TEST_AMQPS_URL and CELERIAC_TEST_AMQP_CA" >&2
fi

stage "cargo build --release -p interop-tests --bin interop-worker"
cargo build --release -p interop-tests --bin interop-worker

stage "cargo test --workspace"
cargo test --workspace

stage "the README's first command: cargo run --example quickstart"
quickstart_out=$(cargo run -q --example quickstart)
printf '%s\n' "$quickstart_out"
# Each call the example makes must have been answered as the README says.
for expected in "tasks.add(2, 3) -> SUCCESS 5" "-> SUCCESS HELLO, CELERY" \
    "-> FAILURE ValueError: name must not be empty" "-> FAILURE TypeError:" \
    "tasks.missing() -> FAILURE NotRegistered"; do
    if ! grep -qF -- "$expected" <<<"$quickstart_out"; then
        echo "quickstart did not print: $expected" >&2
        false
    fi
done

stage "pytest interop suite against the Rust worker"
INTEROP_WORKER=rust INTEROP_WORKER_BIN="$REPO/target/release/interop-worker" \
    "$VENV/bin/pytest" interop-tests/python -q

stage "benchmark smoke run"
"$VENV/bin/python" benches/run.py --smoke
# The criterion micro-benchmarks (decode / encode), each run once to show they work.
cargo bench -p celeriac-benches --bench codec -- --test

stage "java interop tests (interop-tests/java: mvn -q test, artifacts from Maven Central)"
(cd interop-tests/java && INTEROP_WORKER=rust INTEROP_WORKER_BIN="$REPO/target/release/interop-worker" \
    CELERIAC_PYTHON="$VENV/bin/python" mvn -q -B test)

STAGE="done"
printf '\n==> all stages passed\n'
