package dev.celeriac.interop;

import com.rabbitmq.client.AMQP;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.UUID;

/**
 * One Celery task message, protocol v2, as Celery 5.7's {@code Task.apply_async} puts it on an
 * AMQP wire (celery/app/amqp.py {@code as_task_v2} + {@code send_task_message}): the headers in
 * Celery's order and with the AMQP field types py-amqp writes, the basic properties, and the JSON
 * body {@code [args, kwargs, embed]}.
 *
 * <pre>{@code
 * CeleryMessage m = CeleryMessage.task("interop.add").args(2, 3).replyTo(replyQueue).queue("q").build();
 * publisher.publish(m);
 * }</pre>
 */
public final class CeleryMessage {
    public static final String CONTENT_TYPE = "application/json";
    public static final String CONTENT_ENCODING = "utf-8";
    /** Celery's {@code argsrepr_maxsize} / {@code kwargsrepr_maxsize}. */
    private static final int REPR_MAX = 1024;

    private final String taskId;
    private final String queue;
    private final Map<String, Object> headers;
    private final AMQP.BasicProperties properties;
    private final byte[] body;

    private CeleryMessage(String taskId, String queue, Map<String, Object> headers,
                          AMQP.BasicProperties properties, byte[] body) {
        this.taskId = taskId;
        this.queue = queue;
        this.headers = headers;
        this.properties = properties;
        this.body = body;
    }

    /** Starts a message that calls the task registered as {@code name}. */
    public static Builder task(String name) {
        return new Builder(name);
    }

    public String taskId() {
        return taskId;
    }

    /** The routing key: the queue, published through the default exchange {@code ""}. */
    public String queue() {
        return queue;
    }

    /** The task headers, in Celery's order (unmodifiable). */
    public Map<String, Object> headers() {
        return headers;
    }

    public AMQP.BasicProperties properties() {
        return properties;
    }

    public byte[] body() {
        return body.clone();
    }

    /** {@code gen<pid>@<host>}: Celery's anonymous node name of a publishing process. */
    public static String defaultOrigin() {
        String host;
        try {
            host = InetAddress.getLocalHost().getHostName();
        } catch (UnknownHostException e) {
            host = "localhost";
        }
        return "gen" + ProcessHandle.current().pid() + "@" + host;
    }

    private static String truncate(String repr) {
        return repr.length() <= REPR_MAX ? repr : repr.substring(0, REPR_MAX - 3) + "...";
    }

    public static final class Builder {
        private final String task;
        private String id;
        private List<Object> args = List.of();
        private Map<String, Object> kwargs = Map.of();
        private String replyTo;
        private String queue = "celery";
        private String origin;
        private Boolean ignoreResult = Boolean.FALSE;
        private String rootId;
        private String parentId;
        private String argsRepr;

        private Builder(String task) {
            this.task = Objects.requireNonNull(task, "task");
        }

        /** The task id; a random UUID4 when not given, as Celery does. */
        public Builder id(String id) {
            this.id = id;
            return this;
        }

        /** Positional arguments (any JSON value: null, Boolean, Integer/Long, Double, String, List, Map). */
        public Builder args(Object... args) {
            this.args = Arrays.asList(args);
            return this;
        }

        public Builder argsList(List<?> args) {
            this.args = new ArrayList<>(args);
            return this;
        }

        /** Keyword arguments, in the order given (use a LinkedHashMap to fix the order). */
        public Builder kwargs(Map<String, ?> kwargs) {
            this.kwargs = new LinkedHashMap<>(kwargs);
            return this;
        }

        /** The client's RPC reply queue; Celery always sets one (its {@code app.thread_oid}). */
        public Builder replyTo(String replyTo) {
            this.replyTo = replyTo;
            return this;
        }

        /** The queue the task is routed to (routing key through the default exchange). */
        public Builder queue(String queue) {
            this.queue = Objects.requireNonNull(queue, "queue");
            return this;
        }

        public Builder origin(String origin) {
            this.origin = origin;
            return this;
        }

        /** {@code false} from apply_async (the default here), {@code null} from send_task. */
        public Builder ignoreResult(Boolean ignoreResult) {
            this.ignoreResult = ignoreResult;
            return this;
        }

        public Builder rootId(String rootId) {
            this.rootId = rootId;
            return this;
        }

        public Builder parentId(String parentId) {
            this.parentId = parentId;
            return this;
        }

        /**
         * Overrides the {@code argsrepr} header. By default it is the repr of the args as a tuple,
         * as from {@code apply_async}; {@code send_task(name, [2, 3])} shows a list: {@code "[2, 3]"}.
         */
        public Builder argsRepr(String argsRepr) {
            this.argsRepr = argsRepr;
            return this;
        }

        public CeleryMessage build() {
            String taskId = id != null ? id : UUID.randomUUID().toString();
            String reply = replyTo != null ? replyTo : UUID.randomUUID().toString();

            // Order and types as py-amqp writes them: str->S, int->I, bool->t, None->V, list->A, dict->F.
            Map<String, Object> h = new LinkedHashMap<>();
            h.put("lang", "py");
            h.put("task", task);
            h.put("id", taskId);
            h.put("shadow", null);
            h.put("eta", null);
            h.put("expires", null);
            h.put("group", null);
            h.put("group_index", null);
            h.put("retries", 0);
            h.put("timelimit", Arrays.asList(null, null));
            h.put("root_id", rootId != null ? rootId : taskId);
            h.put("parent_id", parentId);
            h.put("argsrepr", argsRepr != null ? argsRepr : truncate(PyFormat.reprTuple(args)));
            h.put("kwargsrepr", truncate(PyFormat.repr(kwargs)));
            h.put("origin", origin != null ? origin : defaultOrigin());
            h.put("ignore_result", ignoreResult);
            h.put("replaced_task_nesting", 0);
            h.put("stamped_headers", null);
            h.put("stamps", new LinkedHashMap<String, Object>());
            Map<String, Object> frozen = Collections.unmodifiableMap(h);

            AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                    .contentType(CONTENT_TYPE)
                    .contentEncoding(CONTENT_ENCODING)
                    .headers(frozen)
                    .deliveryMode(2)
                    .priority(0)
                    .correlationId(taskId)
                    .replyTo(reply)
                    .build();

            Map<String, Object> embed = new LinkedHashMap<>();
            embed.put("callbacks", null);
            embed.put("errbacks", null);
            embed.put("chain", null);
            embed.put("chord", null);
            byte[] body = PyFormat.dumps(Arrays.asList(args, kwargs, embed)).getBytes(StandardCharsets.UTF_8);
            return new CeleryMessage(taskId, queue, frozen, props, body);
        }
    }
}
