// Kafka semantics the Java client (kafka-clients 3.9) relies on, one check per mode:
//   commits <bootstrap> <topic>       50 commitAsync back to back, committed() reads back 50
//   fetch-limits <bootstrap> <topic>  two 900 KB batches consumed with fetch.max.bytes=1000000
// Prints one line "OK <mode> ..." on success; any mismatch throws (non-zero exit code).

import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;

public class KelpJavaSemantics {
    static final int BIG = 900_000;

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static Properties common(String bootstrap) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        return props;
    }

    public static void main(String[] args) throws Exception {
        String mode = args[0], bootstrap = args[1], topic = args[2];
        if (mode.equals("commits")) commits(bootstrap, topic);
        else if (mode.equals("fetch-limits")) fetchLimits(bootstrap, topic);
        else throw new IllegalArgumentException(mode);
    }

    static void commits(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, 1, (short) 1)))
                .all().get(30, TimeUnit.SECONDS);
        }
        Properties props = common(bootstrap);
        props.put("group.id", topic + "-commits");
        props.put("enable.auto.commit", "false");
        TopicPartition partition = new TopicPartition(topic, 0);
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(
                props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            consumer.assign(List.of(partition));
            AtomicInteger answered = new AtomicInteger(), failed = new AtomicInteger();
            for (long offset = 1; offset <= 50; offset++) {
                consumer.commitAsync(Map.of(partition, new OffsetAndMetadata(offset)),
                    (offsets, error) -> {
                        answered.incrementAndGet();
                        if (error != null) failed.incrementAndGet();
                    });
            }
            long deadline = System.currentTimeMillis() + 30_000;
            while (answered.get() < 50 && System.currentTimeMillis() < deadline) {
                consumer.poll(Duration.ofMillis(100));  // callbacks run inside poll
            }
            check(answered.get() == 50 && failed.get() == 0,
                  "answered " + answered.get() + ", failed " + failed.get());
            long committed = consumer.committed(Set.of(partition)).get(partition).offset();
            check(committed == 50, "committed offset read back " + committed);
        }
        System.out.println("OK commits committed=50");
    }

    static void fetchLimits(String bootstrap, String topic) throws Exception {
        try (Admin admin = Admin.create(common(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1)))
                .all().get(30, TimeUnit.SECONDS);
        }
        Properties producerProps = common(bootstrap);
        producerProps.put("max.request.size", "2000000");
        producerProps.put("compression.type", "none");
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(
                producerProps, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (int p = 0; p < 2; p++) {
                byte[] value = new byte[BIG];
                Arrays.fill(value, (byte) p);
                producer.send(new ProducerRecord<>(topic, p, null, value)).get(30, TimeUnit.SECONDS);
            }
        }
        Properties props = common(bootstrap);
        props.put("fetch.max.bytes", "1000000");
        props.put("max.partition.fetch.bytes", "1000000");
        Map<Integer, byte[]> got = new HashMap<>();
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(
                props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> both = List.of(new TopicPartition(topic, 0),
                                                new TopicPartition(topic, 1));
            consumer.assign(both);
            consumer.seekToBeginning(both);
            long deadline = System.currentTimeMillis() + 30_000;
            while (got.size() < 2 && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                    got.put(record.partition(), record.value());
                }
            }
        }
        check(got.size() == 2, "consumed " + got.size() + " of 2 big records");
        for (int p = 0; p < 2; p++) {
            byte[] value = got.get(p);
            check(value.length == BIG, "partition " + p + " record of " + value.length + " bytes");
            for (byte b : value) check(b == (byte) p, "partition " + p + " content");
        }
        System.out.println("OK fetch-limits consumed=2");
    }
}
