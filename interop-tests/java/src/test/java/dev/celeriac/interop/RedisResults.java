package dev.celeriac.interop;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.JedisPubSub;

/**
 * Reads task results from Celery's Redis result backend without polling. The backend stores the
 * meta under {@code celery-task-meta-<id>} and PUBLISHes the same value on the channel of that
 * name. {@link #watch} SUBSCRIBEs to the channels, waits until Redis has confirmed the
 * subscriptions, then GETs the keys once: a result stored before the subscription is found by the
 * GET, one stored after it arrives as a message. Only ready states complete a future.
 */
public final class RedisResults implements AutoCloseable {
    public static final String KEY_PREFIX = "celery-task-meta-";
    private static final Duration SUBSCRIBE_TIMEOUT = Duration.ofSeconds(30);

    private final Jedis commands;
    private final Jedis subscriberConnection;
    private final Listener listener = new Listener();
    private final Thread subscriberThread;
    private final Map<String, CompletableFuture<TaskResult>> results = new ConcurrentHashMap<>();
    private final Map<String, CompletableFuture<Void>> subscribed = new ConcurrentHashMap<>();
    private final List<String> problems = new CopyOnWriteArrayList<>();
    private volatile Throwable subscriberFailure;

    public RedisResults(String host, int port, int db) throws IOException {
        HostAndPort address = new HostAndPort(host, port);
        this.commands = new Jedis(address, DefaultJedisClientConfig.builder().database(db).build());
        this.commands.ping();
        this.subscriberConnection = new Jedis(address, DefaultJedisClientConfig.builder().build());
        String control = "celeriac-java-control-" + UUID.randomUUID();
        CompletableFuture<Void> controlReady = subscription(control);
        this.subscriberThread = new Thread(() -> {
            try {
                subscriberConnection.subscribe(listener, control);
            } catch (RuntimeException e) {
                subscriberFailure = e;
                subscribed.values().forEach(f -> f.completeExceptionally(e));
                results.values().forEach(f -> f.completeExceptionally(e));
            }
        }, "redis-results-subscriber");
        subscriberThread.setDaemon(true);
        subscriberThread.start();
        awaitSubscribed(List.of(controlReady));
    }

    /** The Redis connection used for commands (on the backend's database). */
    public Jedis commands() {
        return commands;
    }

    /** Problems seen on the channels (undecodable values, wrong task ids); should stay empty. */
    public List<String> problems() {
        return List.copyOf(problems);
    }

    public CompletableFuture<TaskResult> watch(String taskId) throws IOException {
        return watch(List.of(taskId)).get(taskId);
    }

    /** Subscribes to the result channels of {@code taskIds}, then GETs their keys once. */
    public Map<String, CompletableFuture<TaskResult>> watch(Collection<String> taskIds) throws IOException {
        if (subscriberFailure != null) {
            throw new IOException("the Redis subscriber connection failed", subscriberFailure);
        }
        Map<String, CompletableFuture<TaskResult>> futures = new LinkedHashMap<>();
        List<CompletableFuture<Void>> confirmations = new ArrayList<>();
        List<String> channels = new ArrayList<>();
        for (String id : taskIds) {
            futures.put(id, results.computeIfAbsent(id, k -> new CompletableFuture<>()));
            String channel = KEY_PREFIX + id;
            confirmations.add(subscription(channel));
            channels.add(channel);
        }
        synchronized (listener) {
            listener.subscribe(channels.toArray(new String[0]));
        }
        awaitSubscribed(confirmations);
        // Close the race: whatever was stored before the subscription took effect.
        List<String> values;
        synchronized (commands) {
            values = commands.mget(channels.toArray(new String[0]));
        }
        int i = 0;
        for (String id : taskIds) {
            String value = values.get(i++);
            if (value != null) {
                deliver(KEY_PREFIX + id, value);
            }
        }
        return futures;
    }

    private CompletableFuture<Void> subscription(String channel) {
        return subscribed.computeIfAbsent(channel, c -> new CompletableFuture<>());
    }

    private void awaitSubscribed(List<CompletableFuture<Void>> confirmations) throws IOException {
        try {
            CompletableFuture.allOf(confirmations.toArray(new CompletableFuture[0]))
                    .get(SUBSCRIBE_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while subscribing", e);
        } catch (ExecutionException | TimeoutException e) {
            throw new IOException("Redis did not confirm the SUBSCRIBE within " + SUBSCRIBE_TIMEOUT, e);
        }
    }

    private void deliver(String channel, String value) {
        if (!channel.startsWith(KEY_PREFIX)) {
            return;
        }
        String id = channel.substring(KEY_PREFIX.length());
        TaskResult result;
        try {
            result = TaskResult.parse(value.getBytes(StandardCharsets.UTF_8), null, null);
        } catch (IOException e) {
            problems.add("undecodable value on " + channel + ": " + e.getMessage());
            return;
        }
        if (!id.equals(result.taskId())) {
            problems.add(channel + " carries task_id " + result.taskId());
        }
        if (result.ready()) {
            results.computeIfAbsent(id, k -> new CompletableFuture<>()).complete(result);
        }
    }

    private final class Listener extends JedisPubSub {
        @Override
        public void onSubscribe(String channel, int subscribedChannels) {
            subscription(channel).complete(null);
        }

        @Override
        public void onMessage(String channel, String message) {
            deliver(channel, message);
        }
    }

    @Override
    public void close() throws InterruptedException {
        try {
            if (listener.isSubscribed()) {
                synchronized (listener) {
                    listener.unsubscribe();
                }
            }
            subscriberThread.join(5_000);
        } finally {
            subscriberConnection.close();
            commands.close();
        }
    }
}
