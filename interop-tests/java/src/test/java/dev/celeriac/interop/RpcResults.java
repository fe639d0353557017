package dev.celeriac.interop;

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import java.io.IOException;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.TimeoutException;

/**
 * The client side of Celery's {@code rpc://} result backend: one exclusive, auto-delete reply
 * queue per client, consumed with a push consumer (no polling). The worker publishes each state
 * change of a task there with {@code correlation_id} = task id; replies are matched to the
 * waiting caller by that id. Only ready states (SUCCESS, FAILURE, REVOKED) complete a future;
 * STARTED / RETRY replies are recorded and otherwise ignored.
 *
 * <p>Register interest ({@link #expect}) before publishing the task, or at any time after: a
 * reply that arrives first is kept until asked for.
 */
public final class RpcResults implements AutoCloseable {
    private final Channel channel;
    private final String queue;
    private final Map<String, CompletableFuture<TaskResult>> results = new ConcurrentHashMap<>();
    private final List<String> problems = new CopyOnWriteArrayList<>();

    public RpcResults(Connection connection) throws IOException {
        this.channel = connection.createChannel();
        // Named like Celery's app.thread_oid: a UUID-shaped string.
        this.queue = UUID.randomUUID().toString();
        channel.queueDeclare(queue, false, true, true, null);
        channel.basicConsume(queue, true, new DefaultConsumer(channel) {
            @Override
            public void handleDelivery(String tag, Envelope envelope, AMQP.BasicProperties props, byte[] body) {
                onReply(props, body);
            }
        });
    }

    /** The reply queue to put in the messages' {@code reply_to}. */
    public String queue() {
        return queue;
    }

    /** The future ready result of {@code taskId}. */
    public CompletableFuture<TaskResult> expect(String taskId) {
        return results.computeIfAbsent(taskId, id -> new CompletableFuture<>());
    }

    /** Replies that could not be understood or did not match their correlation id (should be none). */
    public List<String> problems() {
        return List.copyOf(problems);
    }

    private void onReply(AMQP.BasicProperties props, byte[] body) {
        String correlationId = props.getCorrelationId();
        TaskResult result;
        try {
            result = TaskResult.parse(body, correlationId, props.getContentType());
        } catch (IOException e) {
            problems.add("undecodable reply (correlation_id " + correlationId + "): " + e.getMessage());
            return;
        }
        if (correlationId == null) {
            problems.add("reply without correlation_id: " + result);
            return;
        }
        if (!correlationId.equals(result.taskId())) {
            problems.add("correlation_id " + correlationId + " but task_id " + result.taskId());
        }
        if (result.ready()) {
            expect(correlationId).complete(result);
        }
    }

    @Override
    public void close() throws IOException {
        if (channel.isOpen()) {
            try {
                channel.close();
            } catch (TimeoutException e) {
                channel.abort();
            }
        }
    }
}
