package dev.celeriac.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.rabbitmq.client.Connection;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * A Java service publishes Celery protocol-v2 messages through RabbitMQ and reads the results
 * from the Redis result backend with Jedis (worker started with
 * {@code --result-backend redis://127.0.0.1:6379/2}): SUBSCRIBE to {@code celery-task-meta-<id>},
 * then GET the key once.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class RedisBackendTest {
    private static final Duration RESULT_TIMEOUT = Duration.ofSeconds(60);
    private static final Duration BULK_TIMEOUT = Duration.ofSeconds(120);
    private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
    private static final String BACKEND_URL =
            "redis://" + Brokers.REDIS_HOST + ":" + Brokers.REDIS_PORT + "/" + Brokers.REDIS_DB;

    private Connection connection;
    private CeleryPublisher publisher;
    private RedisResults results;
    private InteropWorker worker;
    private String queue;
    /** Celery always sets reply_to (its app.thread_oid), even with the Redis backend. */
    private final String replyTo = UUID.randomUUID().toString();

    @BeforeAll
    void startWorker() throws Exception {
        try {
            results = new RedisResults(Brokers.REDIS_HOST, Brokers.REDIS_PORT, Brokers.REDIS_DB);
        } catch (RuntimeException e) {
            fail("Redis is required at " + Brokers.REDIS_HOST + ":" + Brokers.REDIS_PORT + " and is not reachable: " + e, e);
        }
        results.commands().flushDB();
        connection = Brokers.connectAmqp("celeriac-java-redis-test");
        queue = Brokers.uniqueQueue("redis");
        publisher = new CeleryPublisher(connection);
        publisher.declareQueue(queue);
        worker = InteropWorker.start(queue, BACKEND_URL);
        worker.awaitReady(this::noopAnswers);
    }

    @AfterAll
    void stopWorker() throws Exception {
        Brokers.tearDown(worker, connection, queue, results, publisher);
    }

    private boolean noopAnswers() {
        try {
            CeleryMessage m = message("interop.noop").build();
            publisher.publish(m);
            TaskResult r = results.watch(m.taskId()).get(2, TimeUnit.SECONDS);
            assertEquals("SUCCESS", r.status(), r::toString);
            return true;
        } catch (TimeoutException e) {
            return false;
        } catch (Exception e) {
            throw new AssertionError("probing the worker with interop.noop failed", e);
        }
    }

    private CeleryMessage.Builder message(String task) {
        return CeleryMessage.task(task).queue(queue).replyTo(replyTo);
    }

    /** Publishes first, then subscribes and GETs: the GET closes the race with a fast worker. */
    private TaskResult call(CeleryMessage.Builder builder) throws Exception {
        CeleryMessage m = builder.build();
        publisher.publish(m);
        TaskResult r;
        try {
            r = results.watch(m.taskId()).get(RESULT_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            return fail("no result for " + m.headers().get("task") + " " + m.taskId() + " within "
                    + RESULT_TIMEOUT.toSeconds() + " s\n" + worker.describe());
        }
        assertEquals(m.taskId(), r.taskId(), "task_id of the result");
        assertEquals(List.of(), results.problems());
        // The key holds the same JSON meta, with Celery's expiry (result_expires, 1 day by default).
        String key = RedisResults.KEY_PREFIX + m.taskId();
        String stored = results.commands().get(key);
        assertNotNull(stored, "GET " + key);
        assertEquals(r.meta(), TaskResult.JSON.readTree(stored), "stored value of " + key);
        long ttl = results.commands().ttl(key);
        assertTrue(ttl > 0, () -> key + " must expire, TTL " + ttl);
        return r;
    }

    private static void assertSuccess(TaskResult r, JsonNode expected) {
        assertEquals("SUCCESS", r.status(), r::toString);
        assertEquals(expected, r.result(), r::toString);
        OffsetDateTime.parse(r.meta().get("date_done").asText());
    }

    private static void assertFailure(TaskResult r, String excType, String excModule) {
        assertEquals("FAILURE", r.status(), r::toString);
        assertEquals(excType, r.excType(), r::toString);
        assertEquals(excModule, r.excModule(), r::toString);
        assertTrue(r.excMessage() != null && r.excMessage().isArray(), () -> "exc_message must be a list: " + r);
    }

    @Test
    void addReturnsTheSum() throws Exception {
        assertSuccess(call(message("interop.add").args(2, 3)), NODES.numberNode(5));
    }

    @Test
    void concatTakesKeywordArguments() throws Exception {
        TaskResult r = call(message("interop.concat").args(List.of("x", "y")).kwargs(Map.of("sep", "+")));
        assertSuccess(r, NODES.textNode("x+y"));
    }

    @Test
    void failReportsTheValueError() throws Exception {
        TaskResult r = call(message("interop.fail").args("boom"));
        assertFailure(r, "ValueError", "builtins");
        assertEquals(NODES.arrayNode().add("boom"), r.excMessage(), r::toString);
        // Celery sends the Python traceback text; a Rust worker has none to send: text or null.
        assertTrue(r.traceback() == null || r.traceback().isNull() || r.traceback().isTextual(), r::toString);
    }

    @Test
    void anUnknownTaskReportsNotRegistered() throws Exception {
        TaskResult r = call(message("java.nope").args(1));
        assertFailure(r, "NotRegistered", "celery.exceptions");
        assertEquals(NODES.arrayNode().add("java.nope"), r.excMessage(), r::toString);
    }

    @Test
    void wrongArgumentsReportATypeError() throws Exception {
        TaskResult r = call(message("interop.add").args("x"));
        assertFailure(r, "TypeError", "builtins");
    }

    @Test
    void aThousandMessagesPublishedAtOnceAllGetTheirResults() throws Exception {
        int n = 1000;
        List<CeleryMessage> batch = new ArrayList<>(n);
        List<String> ids = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            CeleryMessage m = message("interop.add").args(i, i).build();
            batch.add(m);
            ids.add(m.taskId());
        }
        // Here the subscription comes first, as a service awaiting a batch would do it.
        Map<String, CompletableFuture<TaskResult>> futures = results.watch(ids);
        publisher.publishAll(batch);
        try {
            CompletableFuture.allOf(futures.values().toArray(new CompletableFuture[0]))
                    .get(BULK_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            long done = futures.values().stream().filter(CompletableFuture::isDone).count();
            fail(done + " of " + n + " results after " + BULK_TIMEOUT.toSeconds() + " s\n" + worker.describe());
        } catch (ExecutionException e) {
            fail(e.getCause());
        }
        for (int i = 0; i < n; i++) {
            TaskResult r = futures.get(ids.get(i)).get();
            assertEquals(ids.get(i), r.taskId());
            assertSuccess(r, NODES.numberNode(2 * i));
        }
        assertEquals(List.of(), results.problems());
        List<String> stored = results.commands().mget(
                ids.stream().map(id -> RedisResults.KEY_PREFIX + id).toArray(String[]::new));
        assertTrue(stored.stream().allMatch(v -> v != null), "every result is stored under its key");
    }
}
