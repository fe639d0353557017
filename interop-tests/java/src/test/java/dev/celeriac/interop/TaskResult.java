package dev.celeriac.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.util.Set;

/**
 * A Celery result meta, as the RPC backend sends it in a reply message and the Redis backend
 * stores it under {@code celery-task-meta-<id>}: {@code {"status", "result", "traceback",
 * "children", "date_done", "task_id", ...}}.
 *
 * @param taskId        the {@code task_id} field of the meta
 * @param status        {@code SUCCESS}, {@code FAILURE}, {@code STARTED}, {@code RETRY}, ...
 * @param result        the return value, or the exception dict for a FAILURE
 * @param meta          the whole decoded meta
 * @param correlationId the reply's AMQP correlation_id (RPC backend; null for Redis)
 * @param contentType   the reply's content_type (RPC backend; null for Redis)
 */
public record TaskResult(String taskId, String status, JsonNode result, JsonNode meta,
                         String correlationId, String contentType) {
    static final ObjectMapper JSON = new ObjectMapper();

    /** Celery's {@code READY_STATES}: a task in one of these will not change any more. */
    public static final Set<String> READY_STATES = Set.of("SUCCESS", "FAILURE", "REVOKED");

    public static TaskResult parse(byte[] body, String correlationId, String contentType) throws IOException {
        JsonNode meta = JSON.readTree(body);
        if (meta == null || !meta.isObject()) {
            throw new IOException("a result meta must be a JSON object: " + new String(body));
        }
        return new TaskResult(meta.path("task_id").asText(null), meta.path("status").asText(null),
                meta.get("result"), meta, correlationId, contentType);
    }

    public boolean ready() {
        return READY_STATES.contains(status);
    }

    /** The exception class name of a FAILURE ({@code result.exc_type}). */
    public String excType() {
        return result == null ? null : result.path("exc_type").asText(null);
    }

    /** The exception arguments of a FAILURE ({@code result.exc_message}, a list). */
    public JsonNode excMessage() {
        return result == null ? null : result.get("exc_message");
    }

    public String excModule() {
        return result == null ? null : result.path("exc_module").asText(null);
    }

    public JsonNode traceback() {
        return meta.get("traceback");
    }

    @Override
    public String toString() {
        return meta.toString();
    }
}
