package dev.celeriac.interop;

import static org.junit.jupiter.api.Assertions.fail;

import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import java.io.IOException;
import java.util.UUID;
import java.util.concurrent.TimeoutException;

/** Connections to the real RabbitMQ and Redis the suite needs; unreachable means failure. */
public final class Brokers {
    public static final String REDIS_HOST = "127.0.0.1";
    public static final int REDIS_PORT = 6379;
    public static final int REDIS_DB = 2;

    private Brokers() {}

    /** A connection to {@code CELERIAC_TEST_AMQP_URL} (a missing RabbitMQ fails the test class). */
    public static Connection connectAmqp(String clientName) {
        String url = InteropWorker.amqpUrl();
        try {
            ConnectionFactory factory = new ConnectionFactory();
            factory.setUri(url);
            factory.setConnectionTimeout(10_000);
            return factory.newConnection(clientName);
        } catch (Exception e) {
            return fail("RabbitMQ is required at " + url + " and is not reachable: " + e, e);
        }
    }

    /** A fresh queue name for a test class: {@code java-<what>-<random>}. */
    public static String uniqueQueue(String what) {
        return "java-" + what + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    /**
     * Removes what a Celery worker declared for {@code queue} (the durable queue and the direct
     * exchange of the same name), so test runs do not pile up durable queues on the vhost.
     */
    public static void deleteQueueAndExchange(Connection connection, String queue) throws IOException {
        if (connection == null || !connection.isOpen()) {
            return;
        }
        try (Channel ch = connection.createChannel()) {
            ch.queueDelete(queue);
        } catch (TimeoutException | IOException e) {
            // already gone: nothing to clean
        }
        try (Channel ch = connection.createChannel()) {
            ch.exchangeDelete(queue);
        } catch (TimeoutException | IOException e) {
            // already gone: nothing to clean
        }
    }

    /**
     * A test class's teardown: stop the worker (SIGTERM, exit code 0 required), then, whatever
     * happened, kill it if still running, close {@code others} in order, delete the class's
     * queue and exchange, and close the connection.
     */
    public static void tearDown(InteropWorker worker, Connection connection, String queue,
            AutoCloseable... others) throws Exception {
        try {
            if (worker != null) {
                worker.stop();
            }
        } finally {
            if (worker != null) {
                worker.close();
            }
            for (AutoCloseable other : others) {
                if (other != null) {
                    other.close();
                }
            }
            deleteQueueAndExchange(connection, queue);
            if (connection != null) {
                connection.close();
            }
        }
    }
}
