package dev.celeriac.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.rabbitmq.client.Connection;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * A Java service publishes Celery protocol-v2 messages with the RabbitMQ Java client and gets the
 * results pushed back through its RPC reply queue (worker started with {@code --result-backend rpc://}).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class RpcBackendTest {
    private static final Duration RESULT_TIMEOUT = Duration.ofSeconds(60);
    private static final Duration BULK_TIMEOUT = Duration.ofSeconds(120);
    private static final JsonNodeFactory NODES = JsonNodeFactory.instance;

    private Connection connection;
    private CeleryPublisher publisher;
    private RpcResults results;
    private InteropWorker worker;
    private String queue;

    @BeforeAll
    void startWorker() throws Exception {
        connection = Brokers.connectAmqp("celeriac-java-rpc-test");
        queue = Brokers.uniqueQueue("rpc");
        publisher = new CeleryPublisher(connection);
        publisher.declareQueue(queue);
        results = new RpcResults(connection);
        worker = InteropWorker.start(queue, "rpc://");
        worker.awaitReady(this::noopAnswers);
    }

    @AfterAll
    void stopWorker() throws Exception {
        Brokers.tearDown(worker, connection, queue, results, publisher);
    }

    private boolean noopAnswers() {
        try {
            CeleryMessage m = message("interop.noop").build();
            CompletableFuture<TaskResult> f = results.expect(m.taskId());
            publisher.publish(m);
            TaskResult r = f.get(2, TimeUnit.SECONDS);
            assertEquals("SUCCESS", r.status(), r::toString);
            return true;
        } catch (TimeoutException e) {
            return false;
        } catch (Exception e) {
            throw new AssertionError("probing the worker with interop.noop failed", e);
        }
    }

    private CeleryMessage.Builder message(String task) {
        return CeleryMessage.task(task).queue(queue).replyTo(results.queue());
    }

    private TaskResult call(CeleryMessage.Builder builder) throws Exception {
        CeleryMessage m = builder.build();
        CompletableFuture<TaskResult> f = results.expect(m.taskId());
        publisher.publish(m);
        TaskResult r;
        try {
            r = f.get(RESULT_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            return fail("no reply for " + m.headers().get("task") + " " + m.taskId() + " within "
                    + RESULT_TIMEOUT.toSeconds() + " s\n" + worker.describe());
        }
        assertEquals(m.taskId(), r.taskId(), "task_id of the reply");
        assertEquals(m.taskId(), r.correlationId(), "correlation_id of the reply");
        assertEquals("application/json", r.contentType(), "content_type of the reply");
        assertTrue(r.meta().has("date_done"), () -> "no date_done in " + r);
        assertEquals(List.of(), results.problems());
        return r;
    }

    private static void assertSuccess(TaskResult r, JsonNode expected) {
        assertEquals("SUCCESS", r.status(), r::toString);
        assertEquals(expected, r.result(), r::toString);
        assertTrue(r.traceback() == null || r.traceback().isNull(), r::toString);
        // date_done is Python's datetime.isoformat() with an offset.
        OffsetDateTime.parse(r.meta().get("date_done").asText());
        assertTrue(r.meta().path("children").isArray(), r::toString);
    }

    private static void assertFailure(TaskResult r, String excType) {
        assertEquals("FAILURE", r.status(), r::toString);
        assertEquals(excType, r.excType(), r::toString);
        assertTrue(r.excMessage() != null && r.excMessage().isArray(), () -> "exc_message must be a list: " + r);
    }

    /** Celery sends the Python traceback text; a Rust worker has none to send: text or null. */
    private static void assertTraceback(TaskResult r) {
        assertTrue(r.traceback() == null || r.traceback().isNull() || r.traceback().isTextual(),
                () -> "traceback must be text or null: " + r);
    }

    @Test
    void addReturnsTheSum() throws Exception {
        assertSuccess(call(message("interop.add").args(2, 3)), NODES.numberNode(5));
    }

    @Test
    void echoReturnsANestedUnicodeValueUnchanged() throws Exception {
        Map<String, Object> inner = new LinkedHashMap<>();
        inner.put("naïve", "café ☕");
        inner.put("日本語", List.of("ひらがな", "カタカナ", "漢字"));
        inner.put("emoji", "🦀🐍☕");
        inner.put("quote\"back\\slash", "tab\tnewline\n");
        inner.put("numbers", List.of(0, -1, 9007199254740993L, 1.5, -2.25e-10));
        inner.put("flags", List.of(true, false));
        inner.put("nothing", null);
        inner.put("empty", Map.of());
        Map<String, Object> value = new LinkedHashMap<>();
        value.put("outer", List.of(inner, List.of(List.of(List.of("deep")))));
        value.put("ключ", "значение");

        TaskResult r = call(message("interop.echo").args(value));
        assertSuccess(r, TaskResult.JSON.valueToTree(value));
    }

    @Test
    void concatTakesKeywordArguments() throws Exception {
        TaskResult r = call(message("interop.concat").args(List.of("a", "b", "c")).kwargs(Map.of("sep", "-")));
        assertSuccess(r, NODES.textNode("a-b-c"));
    }

    @Test
    void failReportsTheValueError() throws Exception {
        TaskResult r = call(message("interop.fail").args("boom"));
        assertFailure(r, "ValueError");
        assertEquals(NODES.arrayNode().add("boom"), r.excMessage(), r::toString);
        assertEquals("builtins", r.excModule(), r::toString);
        assertTraceback(r);
    }

    @Test
    void anUnknownTaskReportsNotRegistered() throws Exception {
        TaskResult r = call(message("java.nope").args(1));
        assertFailure(r, "NotRegistered");
        // Celery's Consumer.on_unknown_task stores NotRegistered(name): no traceback, the name as its argument.
        assertEquals("celery.exceptions", r.excModule(), r::toString);
        assertEquals(NODES.arrayNode().add("java.nope"), r.excMessage(), r::toString);
    }

    @Test
    void wrongArgumentsReportATypeError() throws Exception {
        TaskResult r = call(message("interop.add").args("x"));
        assertFailure(r, "TypeError");
        assertEquals("builtins", r.excModule(), r::toString);
        assertEquals(1, r.excMessage().size(), r::toString);
        assertTraceback(r);
    }

    @Test
    void aThousandMessagesPublishedAtOnceAllGetTheirReplies() throws Exception {
        int n = 1000;
        List<CeleryMessage> batch = new ArrayList<>(n);
        List<CompletableFuture<TaskResult>> futures = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            CeleryMessage m = message("interop.add").args(i, i).build();
            batch.add(m);
            futures.add(results.expect(m.taskId()));
        }
        long started = System.nanoTime();
        publisher.publishAll(batch);
        try {
            CompletableFuture.allOf(futures.toArray(new CompletableFuture[0]))
                    .get(BULK_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            long done = futures.stream().filter(CompletableFuture::isDone).count();
            fail(done + " of " + n + " replies after " + BULK_TIMEOUT.toSeconds() + " s\n" + worker.describe());
        } catch (ExecutionException e) {
            fail(e.getCause());
        }
        for (int i = 0; i < n; i++) {
            TaskResult r = futures.get(i).get();
            assertEquals(batch.get(i).taskId(), r.correlationId());
            assertSuccess(r, NODES.numberNode(2 * i));
        }
        assertEquals(List.of(), results.problems());
        assertTrue(System.nanoTime() - started < BULK_TIMEOUT.toNanos());
    }
}
