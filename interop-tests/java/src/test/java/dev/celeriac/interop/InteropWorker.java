package dev.celeriac.interop;

import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/**
 * One interop worker process (shared INTEROP.md) started for a test class, consuming its own
 * queue through RabbitMQ. Which worker is chosen by the system property or environment variable
 * {@code INTEROP_WORKER}: {@code rust} (default, the {@code interop-worker} binary) or
 * {@code python} (the Celery stand-in {@code python-fixtures/pyinterop.py}).
 */
public final class InteropWorker implements AutoCloseable {
    public static final Duration READY_DEADLINE = Duration.ofSeconds(90);
    public static final Duration STOP_DEADLINE = Duration.ofSeconds(60);
    public static final String DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/celeriac-test";

    private final String kind;
    private final String hostname;
    private final List<String> command;
    private final Path log;
    private final Process process;
    private boolean stopped;

    private InteropWorker(String kind, String hostname, List<String> command, Path log, Process process) {
        this.kind = kind;
        this.hostname = hostname;
        this.command = command;
        this.log = log;
        this.process = process;
    }

    /** A setting from a system property, else the environment, else {@code fallback}. */
    public static String setting(String name, String fallback) {
        String value = System.getProperty(name);
        if (value == null || value.isBlank()) {
            value = System.getenv(name);
        }
        return value == null || value.isBlank() ? fallback : value.trim();
    }

    /** The repository root (set by the pom as {@code celeriac.repo}; else two levels above the cwd). */
    public static Path repoRoot() {
        String configured = System.getProperty("celeriac.repo");
        Path root = configured != null ? Paths.get(configured) : Paths.get("").toAbsolutePath().resolve("../..");
        return root.toAbsolutePath().normalize();
    }

    public static String amqpUrl() {
        return setting("CELERIAC_TEST_AMQP_URL", DEFAULT_AMQP_URL);
    }

    public static String workerKind() {
        String kind = setting("INTEROP_WORKER", "rust").toLowerCase();
        if (!kind.equals("rust") && !kind.equals("python")) {
            fail("INTEROP_WORKER must be 'rust' or 'python', not '" + kind + "'");
        }
        return kind;
    }

    /**
     * Starts the worker on {@code queue} with {@code resultBackend} ({@code rpc://} or a Redis URL),
     * concurrency 4. A missing binary or interpreter fails the test; it is never skipped.
     */
    public static InteropWorker start(String queue, String resultBackend) throws IOException {
        String kind = workerKind();
        String hostname = "java-" + kind + "-" + UUID.randomUUID().toString().substring(0, 8) + "@interop";
        Path repo = repoRoot();
        String broker = amqpUrl();
        List<String> cmd = new ArrayList<>();
        ProcessBuilder pb = new ProcessBuilder();
        Map<String, String> env = pb.environment();
        // The worker takes its settings from the flags, never from a stray environment.
        env.remove("CELERY_BROKER_URL");
        env.remove("CELERY_RESULT_BACKEND");
        if (kind.equals("rust")) {
            Path bin = Paths.get(setting("INTEROP_WORKER_BIN",
                    repo.resolve("target/release/interop-worker").toString()));
            if (!Files.isExecutable(bin)) {
                fail("Rust interop worker not found at " + bin + " (cargo build --release -p interop-tests "
                        + "--bin interop-worker, or set INTEROP_WORKER_BIN, or INTEROP_WORKER=python)");
            }
            cmd.addAll(List.of(bin.toString(), "--broker", broker, "--result-backend", resultBackend,
                    "-Q", queue, "-c", "4", "-n", hostname));
            env.putIfAbsent("RUST_LOG", "info");
            env.putIfAbsent("NO_COLOR", "1");
            pb.directory(repo.toFile());
        } else {
            Path python = Paths.get(setting("CELERIAC_PYTHON", repo.resolve(".venv/bin/python").toString()));
            if (!Files.isExecutable(python)) {
                fail("Python for the Celery stand-in not found at " + python + " (set CELERIAC_PYTHON)");
            }
            Path fixtures = repo.resolve("python-fixtures");
            cmd.addAll(List.of(python.toString(), "-m", "celery", "-A", "pyinterop", "-b", broker,
                    "--result-backend", resultBackend, "worker", "-Q", queue, "-P", "threads", "-c", "4",
                    "-n", hostname, "-l", "info", "--without-mingle", "--without-gossip", "--without-heartbeat"));
            String pythonPath = env.get("PYTHONPATH");
            env.put("PYTHONPATH", fixtures + (pythonPath == null || pythonPath.isEmpty() ? "" : ":" + pythonPath));
            env.remove("PYINTEROP_ACKS_LATE");
            env.remove("PYINTEROP_VISIBILITY_TIMEOUT");
            pb.directory(fixtures.toFile());
        }
        Path logDir = Paths.get("target", "worker-logs").toAbsolutePath();
        Files.createDirectories(logDir);
        Path log = logDir.resolve(hostname.replace('@', '_') + ".log");
        pb.command(cmd).redirectErrorStream(true).redirectOutput(log.toFile())
                .redirectInput(ProcessBuilder.Redirect.from(Paths.get("/dev/null").toFile()));
        Process process = pb.start();
        return new InteropWorker(kind, hostname, List.copyOf(cmd), log, process);
    }

    public String kind() {
        return kind;
    }

    public String hostname() {
        return hostname;
    }

    public boolean alive() {
        return process.isAlive();
    }

    /**
     * Calls {@code probe} (which sends {@code interop.noop} and waits a little for its answer)
     * until it answers; the worker exiting or the deadline passing fails the test.
     */
    public void awaitReady(BooleanSupplier probe) {
        long end = System.nanoTime() + READY_DEADLINE.toNanos();
        while (System.nanoTime() < end) {
            if (!alive()) {
                fail("the worker exited during start-up\n" + describe());
            }
            if (probe.getAsBoolean()) {
                return;
            }
        }
        fail("the worker did not answer interop.noop within " + READY_DEADLINE.toSeconds() + " s\n" + describe());
    }

    /** SIGTERM (Process.destroy), wait, and require exit code 0 (INTEROP.md). */
    public void stop() throws InterruptedException {
        if (stopped) {
            return;
        }
        stopped = true;
        process.destroy();
        if (!process.waitFor(STOP_DEADLINE.toSeconds(), TimeUnit.SECONDS)) {
            process.destroyForcibly();
            process.waitFor(10, TimeUnit.SECONDS);
            fail("the worker did not exit within " + STOP_DEADLINE.toSeconds() + " s of SIGTERM\n" + describe());
        }
        if (process.exitValue() != 0) {
            fail("the worker exited with code " + process.exitValue() + " after SIGTERM, expected 0\n" + describe());
        }
    }

    /** Kills the process without checks (cleanup after an earlier failure). */
    @Override
    public void close() {
        if (process.isAlive()) {
            process.destroyForcibly();
        }
    }

    public String describe() {
        String exit = process.isAlive() ? "running" : "exit code " + process.exitValue();
        return kind + " worker " + hostname + " (" + String.join(" ", command) + "), " + exit
                + "\n--- last lines of " + log + " ---\n" + logTail(60);
    }

    public String logTail(int lines) {
        try {
            List<String> all = Files.readAllLines(log, StandardCharsets.UTF_8);
            return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
        } catch (IOException e) {
            return "<no log: " + e + ">";
        }
    }
}
