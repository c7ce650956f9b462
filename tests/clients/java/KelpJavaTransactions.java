// The Java client (kafka-clients 3.9) against kelp's transactions: a commit/abort loop read by
// read_committed and read_uncommitted consumers, zombie fencing, and a consume-transform-produce
// loop with sendOffsetsToTransaction. Prints one line "OK ..." on success; any mismatch throws,
// and the exit code is non-zero.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.*;

public class KelpJavaTransactions {
    static String bootstrap;

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static KafkaProducer<String, String> producer(String transactionalId) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("transactional.id", transactionalId);
        props.put("linger.ms", "5");
        KafkaProducer<String, String> producer =
            new KafkaProducer<>(props, new StringSerializer(), new StringSerializer());
        producer.initTransactions();
        return producer;
    }

    static KafkaConsumer<String, String> consumer(String group, String isolation) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("group.id", group);
        props.put("isolation.level", isolation);
        props.put("enable.auto.commit", "false");
        props.put("auto.offset.reset", "earliest");
        return new KafkaConsumer<>(props, new StringDeserializer(), new StringDeserializer());
    }

    /** partition -> values in offset order, read from the start until `expected` arrived
     * and then two more quiet seconds (to catch anything extra). */
    static Map<Integer, List<String>> read(String topic, int partitions, String isolation,
                                           int expected) {
        Map<Integer, List<String>> seen = new TreeMap<>();
        try (KafkaConsumer<String, String> c = consumer(topic + "-" + isolation + "-"
                + System.nanoTime(), isolation)) {
            List<TopicPartition> all = new ArrayList<>();
            for (int p = 0; p < partitions; p++) all.add(new TopicPartition(topic, p));
            c.assign(all);
            c.seekToBeginning(all);
            int count = 0;
            long quietUntil = Long.MAX_VALUE, deadline = System.currentTimeMillis() + 60_000;
            while (System.currentTimeMillis() < Math.min(quietUntil, deadline)) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200))) {
                    seen.computeIfAbsent(r.partition(), k -> new ArrayList<>()).add(r.value());
                    count++;
                }
                if (count >= expected && quietUntil == Long.MAX_VALUE)
                    quietUntil = System.currentTimeMillis() + 2000;
            }
        }
        return seen;
    }

    public static void main(String[] args) throws Exception {
        bootstrap = args[0];
        String topic = args[1], prefix = args[2];
        String source = topic + "-in", sink = topic + "-out";
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1),
                    new NewTopic(source, 2, (short) 1), new NewTopic(sink, 2, (short) 1)))
                .all().get(30, TimeUnit.SECONDS);
        }

        // 1. Commit/abort loop: even transactions commit, odd ones abort after a flush.
        Map<Integer, List<String>> committed = new TreeMap<>(), every = new TreeMap<>();
        try (KafkaProducer<String, String> p = producer(prefix + "-loop")) {
            for (int txn = 0; txn < 10; txn++) {
                p.beginTransaction();
                for (int i = 0; i < 20; i++) {
                    String value = "txn" + txn + "-" + i;
                    p.send(new ProducerRecord<>(topic, i % 2, null, value));
                    every.computeIfAbsent(i % 2, k -> new ArrayList<>()).add(value);
                    if (txn % 2 == 0)
                        committed.computeIfAbsent(i % 2, k -> new ArrayList<>()).add(value);
                }
                p.flush();  // the aborted records reach the log too
                if (txn % 2 == 0) p.commitTransaction(); else p.abortTransaction();
            }
        }
        check(read(topic, 2, "read_committed", 100).equals(committed), "read_committed view");
        check(read(topic, 2, "read_uncommitted", 200).equals(every), "read_uncommitted view");

        // 2. Zombie fencing: a second instance with the same id fences the first.
        String zombieTopic = topic;
        KafkaProducer<String, String> zombie = producer(prefix + "-zombie");
        zombie.beginTransaction();
        zombie.send(new ProducerRecord<>(zombieTopic, 0, null, "zombie")).get();
        KafkaProducer<String, String> successor = producer(prefix + "-zombie");
        boolean fenced = false;
        try {
            zombie.commitTransaction();
        } catch (ProducerFencedException | InvalidProducerEpochException e) {
            fenced = true;
        } catch (KafkaException e) {
            fenced = e.getCause() instanceof ProducerFencedException
                || e.getCause() instanceof InvalidProducerEpochException;
            if (!fenced) throw e;
        }
        check(fenced, "the zombie's commit is fenced");
        zombie.close(Duration.ofSeconds(5));
        successor.beginTransaction();
        successor.send(new ProducerRecord<>(zombieTopic, 0, null, "successor"));
        successor.commitTransaction();
        successor.close();
        List<String> partition0 = read(topic, 2, "read_committed", 101).get(0);
        check(partition0.contains("successor") && !partition0.contains("zombie"),
              "the zombie's record is aborted, the successor's committed");

        // 3. Consume-transform-produce with sendOffsetsToTransaction.
        try (KafkaProducer<String, String> feeder = new KafkaProducer<>(
                common, new StringSerializer(), new StringSerializer())) {
            for (int n = 0; n < 200; n++)
                feeder.send(new ProducerRecord<>(source, n % 2, null, "in-" + n));
        }
        int transactions = 0;
        try (KafkaConsumer<String, String> c = consumer(prefix + "-eos", "read_committed");
             KafkaProducer<String, String> p = producer(prefix + "-eos")) {
            c.subscribe(List.of(source));
            int done = 0;
            long deadline = System.currentTimeMillis() + 60_000;
            while (done < 200 && System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> batch = c.poll(Duration.ofMillis(300));
                if (batch.isEmpty()) continue;
                p.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                for (ConsumerRecord<String, String> r : batch) {
                    p.send(new ProducerRecord<>(sink, r.partition(), null,
                                                "out-" + r.value().substring(3)));
                    offsets.put(new TopicPartition(r.topic(), r.partition()),
                                new OffsetAndMetadata(r.offset() + 1));
                }
                p.sendOffsetsToTransaction(offsets, c.groupMetadata());
                p.commitTransaction();
                transactions++;
                done += batch.count();
            }
            check(done == 200, "consumed every input record, got " + done);
        }
        Map<Integer, List<String>> out = read(sink, 2, "read_committed", 200);
        List<String> produced = new ArrayList<>();
        out.values().forEach(produced::addAll);
        Collections.sort(produced);
        List<String> wanted = new ArrayList<>();
        for (int n = 0; n < 200; n++) wanted.add("out-" + n);
        Collections.sort(wanted);
        check(produced.equals(wanted), "every input exactly once in the output");
        try (Admin admin = Admin.create(common)) {
            Map<TopicPartition, OffsetAndMetadata> groupOffsets = admin
                .listConsumerGroupOffsets(prefix + "-eos").partitionsToOffsetAndMetadata()
                .get(30, TimeUnit.SECONDS);
            long total = 0;
            for (OffsetAndMetadata o : groupOffsets.values()) total += o.offset();
            check(total == 200, "the group's committed offsets are the input's end: " + total);
            TransactionDescription described = admin.describeTransactions(
                List.of(prefix + "-eos")).all().get(30, TimeUnit.SECONDS).get(prefix + "-eos");
            check(described.state() == TransactionState.COMPLETE_COMMIT,
                  "DescribeTransactions: " + described.state());
        }
        System.out.println("OK java transactions committed=100 aborted=100 eos="
                           + transactions + " fenced=" + fenced);
    }
}
