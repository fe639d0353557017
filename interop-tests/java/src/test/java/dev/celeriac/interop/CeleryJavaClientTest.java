package dev.celeriac.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.geneea.celery.Celery;
import com.geneea.celery.CeleryClientCore;
import com.geneea.celery.WorkerException;
import com.google.common.util.concurrent.ListenableFuture;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ShutdownSignalException;
import java.io.IOException;
import java.lang.reflect.Field;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/**
 * The existing Java Celery client {@code com.geneea.celery:celery-java:1.10.4} (AMQP broker, the
 * {@code rpc://} backend, positional arguments, {@code Celery.submit(name, args)}) against the
 * worker. Successful calls work. A FAILURE reply cannot be read by that library: Celery's
 * {@code exc_message} is a list (the exception's args), and celery-java's
 * {@code RabbitResultConsumer.handleDelivery} casts it to a String. The ClassCastException escapes
 * the consumer, the RabbitMQ client closes the result channel, the auto-delete reply queue goes
 * away with it, and that client never hears of any result again. The tests below pin down
 * exactly that (README.md, "celery-java").
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class CeleryJavaClientTest {
    private static final Duration RESULT_TIMEOUT = Duration.ofSeconds(60);

    private Connection connection;
    private InteropWorker worker;
    private String queue;
    private Celery client;
    private final List<Celery> extraClients = new ArrayList<>();

    @BeforeAll
    void startWorker() throws Exception {
        connection = Brokers.connectAmqp("celeriac-java-celery-java-test");
        queue = Brokers.uniqueQueue("celery-java");
        client = newClient();
        worker = InteropWorker.start(queue, "rpc://");
        worker.awaitReady(() -> {
            try {
                ListenableFuture<Object> noop = client.submit("interop.noop", new Object[0]);
                noop.get(2, TimeUnit.SECONDS);
                return true;
            } catch (TimeoutException e) {
                return false;
            } catch (Exception e) {
                throw new AssertionError("probing the worker with interop.noop through celery-java failed", e);
            }
        });
    }

    @AfterAll
    void stopWorker() throws Exception {
        List<AutoCloseable> clients = new ArrayList<>(extraClients);
        clients.add(client);
        Brokers.tearDown(worker, connection, queue, clients.toArray(AutoCloseable[]::new));
    }

    /** A celery-java client on the test queue; its rpc:// backend is the same vhost. */
    private Celery newClient() {
        String amqp = InteropWorker.amqpUrl();
        String rpc = amqp.replaceFirst("^amqp", "rpc");
        return Celery.builder().brokerUri(amqp).backendUri(rpc).queue(queue).build();
    }

    private <R> R await(ListenableFuture<R> future, String what) throws Exception {
        try {
            return future.get(RESULT_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
        } catch (TimeoutException e) {
            return fail("celery-java got no result for " + what + " within " + RESULT_TIMEOUT.toSeconds()
                    + " s\n" + worker.describe());
        }
    }

    @Test
    void addReturnsTheSum() throws Exception {
        ListenableFuture<Integer> sum = client.submit("interop.add", new Object[] {2, 3});
        assertEquals(5, await(sum, "interop.add(2, 3)"));
    }

    @Test
    void positionalArgumentsOfOtherTypesRoundTrip() throws Exception {
        ListenableFuture<String> joined = client.submit("interop.concat", new Object[] {List.of("a", "b", "c"), "-"});
        assertEquals("a-b-c", await(joined, "interop.concat"));
        Map<String, Object> value = Map.of("name", "Žluťoučký kůň", "list", List.of(1, 2.5, true));
        ListenableFuture<Object> echoed = client.submit("interop.echo", new Object[] {value});
        assertEquals(value, await(echoed, "interop.echo"));
    }

    @Test
    void concurrentSubmissionsAllComplete() throws Exception {
        List<ListenableFuture<Integer>> futures = new ArrayList<>();
        for (int i = 0; i < 100; i++) {
            futures.add(client.submit("interop.add", new Object[] {i, 1000}));
        }
        for (int i = 0; i < futures.size(); i++) {
            assertEquals(i + 1000, await(futures.get(i), "interop.add(" + i + ", 1000)"));
        }
    }

    /**
     * interop.fail("boom"): Celery's FAILURE reply is what celery-java cannot read. Its
     * future neither completes nor fails, its result consumer dies and its reply queue is deleted.
     */
    @Test
    void aTaskFailureNeverReachesTheCeleryJavaCaller() throws Exception {
        assertFailureKillsTheClient("interop.fail", new Object[] {"boom"});
    }

    /** An unknown task name: the worker's NotRegistered FAILURE reply has the same fate. */
    @Test
    void anUnknownTaskNeverReachesTheCeleryJavaCaller() throws Exception {
        assertFailureKillsTheClient("java.nope", new Object[] {1});
    }

    private void assertFailureKillsTheClient(String task, Object[] args) throws Exception {
        Celery victim = newClient();
        extraClients.add(victim);
        // The client works until a failure comes back ...
        assertEquals(2, await(victim.<Integer>submit("interop.add", new Object[] {1, 1}), "interop.add(1, 1)"));
        String replyQueue = replyQueueOf(victim);
        assertTrue(queueExists(replyQueue), "celery-java's reply queue " + replyQueue + " exists while it works");

        ListenableFuture<Object> failed = victim.submit(task, args);
        // ... the FAILURE reply makes its consumer throw; the channel closes and the auto-delete
        // reply queue is removed. That is the event to wait for (no fixed sleep).
        long end = System.nanoTime() + RESULT_TIMEOUT.toNanos();
        while (queueExists(replyQueue)) {
            if (System.nanoTime() > end) {
                fail("celery-java's reply queue survived the FAILURE reply of " + task
                        + "; has celery-java or the worker changed? future done: " + failed.isDone()
                        + "\n" + worker.describe());
            }
            Thread.sleep(50);
        }
        assertFalse(failed.isDone(), "the future of " + task + " completes neither with a value nor with a WorkerException");
        ListenableFuture<Integer> after = victim.submit("interop.add", new Object[] {2, 2});
        assertThrows(TimeoutException.class, () -> after.get(3, TimeUnit.SECONDS),
                "after a failure the client receives no results at all");
        assertFalse(failed.isDone());
    }

    /**
     * Why: the same FAILURE meta the worker sent, read with celery-java's own {@code TaskResult}
     * and the cast {@code RabbitResultConsumer.handleDelivery} performs before building its
     * {@link WorkerException}: exc_message is a JSON list, not a string.
     */
    @Test
    void celeryJavaCannotDecodeCelerysFailureMeta() throws Exception {
        try (RpcResults rpc = new RpcResults(connection); CeleryPublisher publisher = new CeleryPublisher(connection)) {
            CeleryMessage m = CeleryMessage.task("interop.fail").args("boom").queue(queue).replyTo(rpc.queue()).build();
            CompletableFuture<TaskResult> reply = rpc.expect(m.taskId());
            publisher.publish(m);
            TaskResult meta = reply.get(RESULT_TIMEOUT.toSeconds(), TimeUnit.SECONDS);
            assertEquals("FAILURE", meta.status(), meta::toString);

            byte[] body = new ObjectMapper().writeValueAsBytes(meta.meta());
            com.geneea.celery.backends.TaskResult parsed =
                    new ObjectMapper().readValue(body, com.geneea.celery.backends.TaskResult.class);
            assertEquals(com.geneea.celery.backends.TaskResult.Status.FAILURE, parsed.status);
            Map<String, String> exc = parsed.getResult();
            assertEquals("ValueError", exc.get("exc_type"));
            ClassCastException cce = assertThrows(ClassCastException.class,
                    () -> new WorkerException(exc.get("exc_type"), exc.get("exc_message")));
            assertTrue(cce.getMessage().contains("java.util.ArrayList") && cce.getMessage().contains("java.lang.String"),
                    cce::getMessage);
        }
    }

    private static String replyQueueOf(Celery celery) throws ReflectiveOperationException {
        Field id = CeleryClientCore.class.getDeclaredField("clientId");
        id.setAccessible(true);
        return (String) id.get(celery);
    }

    private boolean queueExists(String name) throws IOException, TimeoutException {
        Channel ch = connection.createChannel();
        try {
            ch.queueDeclarePassive(name);
            ch.close();
            return true;
        } catch (IOException e) {
            if (e.getCause() instanceof ShutdownSignalException sse && sse.getMessage().contains("404")) {
                return false;
            }
            throw e;
        }
    }
}
