#!/usr/bin/env bash
# The project's whole test run: what CI runs (.ci/run) and the README's second command.
#
# On a fresh Debian machine (root, CI=true, no stdin) it installs what is missing, then
#   1. builds the Rust interop worker (release),
#   2. runs `cargo test --workspace`,
#   3. runs the pytest interop suite against that worker.
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
# `python3 -m venv` needs ensurepip, which Debian ships apart (python3-venv).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
else
    echo "redis-server, rabbitmq-server and python3 (venv) are installed"
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

stage "rabbitmq (vhost $AMQP_VHOST)"
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
# The tests' own vhost, so they never touch a real application's queues.
if ! rabbitmqctl -q list_vhosts | grep -qx "$AMQP_VHOST"; then
    rabbitmqctl -q add_vhost "$AMQP_VHOST"
fi
rabbitmqctl -q set_permissions -p "$AMQP_VHOST" guest '.*' '.*' '.*'
rabbitmqctl -q list_vhosts

stage "cargo build --release -p interop-tests --bin interop-worker"
cargo build --release -p interop-tests --bin interop-worker

stage "cargo test --workspace"
cargo test --workspace

stage "pytest interop suite against the Rust worker"
INTEROP_WORKER=rust INTEROP_WORKER_BIN="$REPO/target/release/interop-worker" \
    "$VENV/bin/pytest" interop-tests/python -q

STAGE="done"
printf '\n==> all stages passed\n'
