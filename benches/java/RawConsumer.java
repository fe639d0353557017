// RabbitMQ's own limit, measured without lapin: the official Java client (com.rabbitmq:amqp-client)
// takes and acknowledges, nothing else. Same queue, prefetch and ack modes as `celeriac-bench raw`:
//   each   basic.ack per delivery
//   multi  basic.ack(multiple=true) per --batch deliveries (and whatever is pending when the
//          deliveries pause for a few milliseconds, so a drain's tail is acknowledged too)
// Compiled and run by benches/amqp_ab.py (--raw java-each,java-multi) and benches/amqp_limits.py
// (which also uses its `clone` mode to fill queues of other kinds). Prints {"consumed": n} on SIGTERM/SIGINT.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

public final class RawConsumer {
    /** Declare `to` (durable or not, classic queue version 1 or 2), then publish `count`
     *  copies of the first message of `from` (its body and properties, persistent or not)
     *  with confirms per 1,000; the message stays in `from`. */
    static void clone(Channel ch, String from, String to, int count, boolean persistent,
                      boolean durable, String queueVersion) throws Exception {
        java.util.Map<String, Object> qargs = new java.util.HashMap<>();
        if (queueVersion != null) {
            qargs.put("x-queue-version", Integer.parseInt(queueVersion));
        }
        ch.queueDeclare(to, durable, false, false, qargs);
        com.rabbitmq.client.GetResponse got = ch.basicGet(from, false);
        if (got == null) {
            throw new IllegalStateException("nothing in " + from);
        }
        ch.basicReject(got.getEnvelope().getDeliveryTag(), true);
        AMQP.BasicProperties props = got.getProps().builder()
            .deliveryMode(persistent ? 2 : 1).build();
        ch.confirmSelect();
        long t0 = System.nanoTime();
        for (int i = 1; i <= count; i++) {
            ch.basicPublish("", to, props, got.getBody());
            if (i % 1000 == 0 || i == count) {
                ch.waitForConfirmsOrDie(60_000);
            }
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.println("{\"published\": " + count + ", \"seconds\": " + secs + "}");
    }

    public static void main(String[] args) throws Exception {
        String uri = "amqp://guest:guest@127.0.0.1:5672/celeriac-bench";
        String queue = "celeriac.bench";
        String mode = "multi";
        int prefetch = 200;
        int batch = 100;
        String from = null;
        int count = 0;
        boolean persistent = true;
        boolean durable = true;
        String queueVersion = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--broker" -> uri = args[i + 1];
                case "--queue" -> queue = args[i + 1];
                case "--mode" -> mode = args[i + 1];
                case "--prefetch" -> prefetch = Integer.parseInt(args[i + 1]);
                case "--batch" -> batch = Integer.parseInt(args[i + 1]);
                case "--from" -> from = args[i + 1];
                case "--count" -> count = Integer.parseInt(args[i + 1]);
                case "--persistent" -> persistent = Boolean.parseBoolean(args[i + 1]);
                case "--durable" -> durable = Boolean.parseBoolean(args[i + 1]);
                case "--queue-version" -> queueVersion = args[i + 1];
                default -> throw new IllegalArgumentException("unknown option " + args[i]);
            }
        }
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(uri);
        Connection conn = f.newConnection("celeriac raw (java)");
        Channel ch = conn.createChannel();
        if (mode.equals("clone")) {
            clone(ch, from, queue, count, persistent, durable, queueVersion);
            conn.close();
            return;
        }
        ch.basicQos(prefetch);
        final boolean each = mode.equals("each");
        final int perAck = batch;
        final Object lock = new Object();
        final long[] state = new long[3]; // consumed, last tag seen, last tag acked
        ch.basicConsume(queue, false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props,
                                       byte[] body) throws java.io.IOException {
                long t = env.getDeliveryTag();
                synchronized (lock) {
                    state[0]++;
                    state[1] = t;
                    if (each) {
                        ch.basicAck(t, false);
                        state[2] = t;
                    } else if (t - state[2] >= perAck) {
                        ch.basicAck(t, true);
                        state[2] = t;
                    }
                }
            }
        });
        ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
        timer.scheduleAtFixedRate(() -> {
            synchronized (lock) {
                if (state[1] > state[2]) {
                    try {
                        ch.basicAck(state[1], true);
                        state[2] = state[1];
                    } catch (Exception e) {
                        // the channel is gone: RabbitMQ requeues what it had not settled
                    }
                }
            }
        }, 5, 5, TimeUnit.MILLISECONDS);
        CountDownLatch done = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            synchronized (lock) {
                System.out.println("{\"consumed\": " + state[0] + "}");
            }
            System.out.flush();
            done.countDown();
        }));
        done.await();
    }
}
