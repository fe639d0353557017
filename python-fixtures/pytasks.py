"""Python Celery tasks that Celeriac's Rust client calls (see shared INTEROP.md).

Start a worker for them with::

    celery -A pytasks worker -Q py

Broker and result backend come from ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND`` and default to the local Redis database 0, the same
defaults as the Rust interop worker, so both sides meet without configuration.
"""

import os
import time

from celery import Celery

DEFAULT_URL = "redis://127.0.0.1:6379/0"

app = Celery(
    "pytasks",
    broker=os.environ.get("CELERY_BROKER_URL", DEFAULT_URL),
    backend=os.environ.get("CELERY_RESULT_BACKEND", DEFAULT_URL),
)
app.conf.update(
    # The Rust client may publish JSON or msgpack; accept both and answer in JSON,
    # which is Celery's default result format.
    accept_content=["json", "msgpack"],
    result_accept_content=["json", "msgpack"],
    task_default_queue="py",
)


@app.task(name="pytasks.add")
def add(x, y):
    """Return ``x + y``."""
    return x + y


@app.task(name="pytasks.mul")
def mul(x, y):
    """Return ``x * y``."""
    return x * y


@app.task(name="pytasks.echo")
def echo(value):
    """Return ``value`` unchanged."""
    return value


@app.task(name="pytasks.fail")
def fail(message):
    """Always fail with ``ValueError(message)``."""
    raise ValueError(message)


@app.task(name="pytasks.xsum")
def xsum(values):
    """Return the sum of ``values`` (a chord body)."""
    return sum(values)


@app.task(name="pytasks.sleep")
def sleep(seconds):
    """Wait ``seconds`` and return them."""
    time.sleep(seconds)
    return seconds
