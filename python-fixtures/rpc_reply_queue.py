"""Make a Celery 5.7 client with ``backend='rpc://'`` declare its reply queue.

Usage::

    python rpc_reply_queue.py <amqp broker URL> <task queue>

It sends one task (``celeriac.never_run``) to ``<task queue>``; Celery's RPC backend
declares the client's reply queue before that publish (``RPCBackend.on_task_call``). It
then deletes ``<task queue>`` and its exchange again, prints the reply queue's name (the
app's ``thread_oid``) on one line and exits. The reply queue is never consumed, so it
stays (until its ``x-expires``) for the caller to inspect with ``rabbitmqctl list_queues``
and then delete.
"""

import sys

from celery import Celery


def main():
    broker, queue = sys.argv[1], sys.argv[2]
    app = Celery("rpcprobe", broker=broker, backend="rpc://")
    result = app.send_task("celeriac.never_run", args=(), queue=queue)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
    print(result.backend.oid, flush=True)
    app.close()


if __name__ == "__main__":
    main()
