package dev.celeriac.interop;

import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import java.io.IOException;
import java.util.Collection;
import java.util.concurrent.TimeoutException;

/**
 * Publishes {@link CeleryMessage}s the way a Spring Boot service with the official RabbitMQ
 * client would: its own channel in publisher-confirm mode, default exchange, routing key = queue.
 * A publish returns only once the broker has confirmed it (or throws).
 */
public final class CeleryPublisher implements AutoCloseable {
    private static final long CONFIRM_TIMEOUT_MS = 60_000;

    private final Channel channel;

    public CeleryPublisher(Connection connection) throws IOException {
        this.channel = connection.createChannel();
        this.channel.confirmSelect();
    }

    /**
     * Declares a task queue as Celery does (durable, not exclusive, not auto-delete, no
     * arguments); idempotent, so it does not matter whether the worker declared it first.
     */
    public synchronized void declareQueue(String queue) throws IOException {
        channel.queueDeclare(queue, true, false, false, null);
    }

    /** Publishes one message and waits for the broker's confirm. */
    public synchronized void publish(CeleryMessage message) throws IOException, InterruptedException {
        send(message);
        awaitConfirms();
    }

    /** Publishes every message back to back, then waits once for all the confirms. */
    public synchronized void publishAll(Collection<CeleryMessage> messages) throws IOException, InterruptedException {
        for (CeleryMessage m : messages) {
            send(m);
        }
        awaitConfirms();
    }

    private void send(CeleryMessage m) throws IOException {
        channel.basicPublish("", m.queue(), false, m.properties(), m.body());
    }

    private void awaitConfirms() throws IOException, InterruptedException {
        try {
            channel.waitForConfirmsOrDie(CONFIRM_TIMEOUT_MS);
        } catch (TimeoutException e) {
            throw new IOException("the broker did not confirm the publish within " + CONFIRM_TIMEOUT_MS + " ms", e);
        }
    }

    @Override
    public synchronized void close() throws IOException {
        if (channel.isOpen()) {
            try {
                channel.close();
            } catch (TimeoutException e) {
                channel.abort();
            }
        }
    }
}
