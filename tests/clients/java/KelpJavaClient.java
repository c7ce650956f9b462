// The Java client (kafka-clients 3.9) against kelp: admin, idempotent producer, group consumer.
// Prints one line "OK ..." on success; any mismatch throws, and the exit code is non-zero.

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.*;

public class KelpJavaClient {
    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        int count = Integer.parseInt(args[2]);
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        common.put("client.id", args[3]);  // the gateway reports versions used per client id

        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 3, (short) 1)
                .configs(Map.of("retention.ms", "86400000")))).all().get(30, TimeUnit.SECONDS);
            ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
            Config config = admin.describeConfigs(List.of(resource)).all()
                .get(30, TimeUnit.SECONDS).get(resource);
            check("86400000".equals(config.get("retention.ms").value()), "retention.ms");
            check(admin.describeCluster().nodes().get(30, TimeUnit.SECONDS).size() == 1, "nodes");
        }

        Properties producerProps = new Properties();
        producerProps.putAll(common);
        producerProps.put("compression.type", "zstd");
        producerProps.put("linger.ms", "5");  // idempotence and acks=all are 3.x defaults
        long[] offsets = new long[count];
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(
                producerProps, new StringSerializer(), new StringSerializer())) {
            List<java.util.concurrent.Future<RecordMetadata>> sent = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                ProducerRecord<String, String> record =
                    new ProducerRecord<>(topic, i % 3, "key-" + i, "value-" + i);
                record.headers().add("seq", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
                sent.add(producer.send(record));
            }
            producer.flush();
            for (int i = 0; i < count; i++) offsets[i] = sent.get(i).get().offset();
        }

        Properties consumerProps = new Properties();
        consumerProps.putAll(common);
        consumerProps.put("group.id", topic + "-java");
        consumerProps.put("auto.offset.reset", "earliest");
        consumerProps.put("enable.auto.commit", "false");
        Map<String, String> seen = new HashMap<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(
                consumerProps, new StringDeserializer(), new StringDeserializer())) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen.size() < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(500))) {
                    Header seq = record.headers().lastHeader("seq");
                    check(record.value().equals("value-" + new String(seq.value(),
                        StandardCharsets.UTF_8)), "header matches value");
                    seen.put(record.key(), record.value());
                }
                consumer.commitSync();
            }
            check(seen.size() == count, "consumed " + seen.size() + " of " + count);
            Map<TopicPartition, OffsetAndMetadata> committed = consumer.committed(
                new HashSet<>(List.of(new TopicPartition(topic, 0), new TopicPartition(topic, 1),
                                      new TopicPartition(topic, 2))));
            long total = 0;
            for (OffsetAndMetadata c : committed.values()) total += c.offset();
            check(total == count, "committed offsets sum to " + total);
        }

        // Manual assignment from the beginning, no group: the same records again.
        Properties assignProps = new Properties();
        assignProps.putAll(common);
        int again = 0;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(
                assignProps, new StringDeserializer(), new StringDeserializer())) {
            List<TopicPartition> all = List.of(new TopicPartition(topic, 0),
                new TopicPartition(topic, 1), new TopicPartition(topic, 2));
            consumer.assign(all);
            consumer.seekToBeginning(all);
            long deadline = System.currentTimeMillis() + 60_000;
            while (again < count && System.currentTimeMillis() < deadline) {
                again += consumer.poll(Duration.ofMillis(500)).count();
            }
            check(again == count, "assign() re-read " + again + " of " + count);
            // Offsets by time: the first record at or after a timestamp older than all of them.
            Map<TopicPartition, OffsetAndTimestamp> byTime = consumer.offsetsForTimes(
                Map.of(all.get(0), 0L));
            check(byTime.get(all.get(0)).offset() == 0, "offsetsForTimes(0) is offset 0");
        }

        try (Admin admin = Admin.create(common)) {
            TopicPartition p0 = new TopicPartition(topic, 0);
            long latest = admin.listOffsets(Map.of(p0, OffsetSpec.latest())).all()
                .get(30, TimeUnit.SECONDS).get(p0).offset();
            long maxTs = admin.listOffsets(Map.of(p0, OffsetSpec.maxTimestamp())).all()
                .get(30, TimeUnit.SECONDS).get(p0).offset();
            check(latest == (count + 2) / 3, "latest offset of partition 0: " + latest);
            check(maxTs >= 0 && maxTs < latest, "max-timestamp offset " + maxTs);
            check(admin.listConsumerGroups().all().get(30, TimeUnit.SECONDS).stream()
                .anyMatch(g -> g.groupId().equals(topic + "-java")), "group listed");
            admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
            check(!admin.listTopics().names().get(30, TimeUnit.SECONDS).contains(topic),
                  "topic deleted");
        }
        System.out.println("OK java produced=" + count + " consumed=" + seen.size());
    }
}
