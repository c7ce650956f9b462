// The Java client (kafka-clients 3.9) against kelp's transactions, end to end:
//  1. a commit/abort loop (10 transactions of 20 records over 2 partitions, the odd ones
//     aborted after a flush, so their records are in the log) read back by a read_committed
//     consumer (exactly the 100 committed records, per partition in produce order) and a
//     read_uncommitted one (all 200);
//  2. zombie fencing: a second producer with the same transactional.id fences the first,
//     whose open transaction is aborted and whose commit fails;
//  3. consume-transform-produce with sendOffsetsToTransaction, the first transaction aborted
//     and its batch reprocessed: the output holds every input record exactly once, in order,
//     and the group's committed offsets are the input's log end.
// Args: bootstrap topic transactional-id-prefix. Prints one line "OK java-txn ..." on success;
// any mismatch throws, and the exit code is non-zero.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.IsolationLevel;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.InvalidProducerEpochException;
import org.apache.kafka.common.errors.ProducerFencedException;
import org.apache.kafka.common.serialization.*;

public class KelpJavaTxn {
    static String bootstrap;
    static Admin admin;

    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static void log(String line) {
        System.out.println(line);
        System.out.flush();
    }

    static KafkaProducer<String, String> transactional(String transactionalId) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("transactional.id", transactionalId);
        props.put("client.id", transactionalId);
        props.put("linger.ms", "5");
        props.put("max.block.ms", "30000");
        KafkaProducer<String, String> producer =
            new KafkaProducer<>(props, new StringSerializer(), new StringSerializer());
        producer.initTransactions();
        return producer;
    }

    static List<TopicPartition> partitions(String topic, int count) {
        List<TopicPartition> all = new ArrayList<>();
        for (int p = 0; p < count; p++) all.add(new TopicPartition(topic, p));
        return all;
    }

    /** Each partition's log end offset (the high watermark, not the last stable offset). */
    static Map<TopicPartition, Long> logEnd(List<TopicPartition> all) throws Exception {
        Map<TopicPartition, OffsetSpec> specs = new HashMap<>();
        for (TopicPartition tp : all) specs.put(tp, OffsetSpec.latest());
        Map<TopicPartition, Long> end = new HashMap<>();
        admin.listOffsets(specs, new ListOffsetsOptions(IsolationLevel.READ_UNCOMMITTED)).all()
            .get(30, TimeUnit.SECONDS).forEach((tp, info) -> end.put(tp, info.offset()));
        return end;
    }

    /** partition -> values in offset order, as a consumer with this isolation level sees the
     * whole topic: assigned (no group), read from the beginning until its position reaches
     * the log end of every partition. A read_committed consumer can only get there once the
     * last stable offset is the log end, so nothing is left undecided (or unread). */
    static Map<Integer, List<String>> readAll(String topic, int count, String isolation)
            throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("isolation.level", isolation);
        props.put("enable.auto.commit", "false");
        List<TopicPartition> all = partitions(topic, count);
        Map<TopicPartition, Long> end = logEnd(all);
        Map<Integer, List<String>> seen = new TreeMap<>();
        for (int p = 0; p < count; p++) seen.put(p, new ArrayList<>());
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(
                props, new StringDeserializer(), new StringDeserializer())) {
            c.assign(all);
            c.seekToBeginning(all);
            long deadline = System.currentTimeMillis() + 30_000;
            while (true) {
                for (ConsumerRecord<String, String> r : c.poll(Duration.ofMillis(200)))
                    seen.get(r.partition()).add(r.value());
                boolean done = true;
                for (TopicPartition tp : all) done &= c.position(tp) >= end.get(tp);
                if (done) break;
                if (System.currentTimeMillis() > deadline) {
                    Map<TopicPartition, Long> positions = new HashMap<>();
                    for (TopicPartition tp : all) positions.put(tp, c.position(tp));
                    throw new IllegalStateException(isolation + " read of " + topic
                        + " stuck at " + positions + ", log end " + end + " (last stable offset "
                        + c.endOffsets(all) + "), seen " + seen);
                }
            }
        }
        return seen;
    }

    static boolean isFenced(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause())
            if (t instanceof ProducerFencedException || t instanceof InvalidProducerEpochException)
                return true;
        return false;
    }

    public static void main(String[] args) throws Exception {
        bootstrap = args[0];
        String topic = args[1], prefix = args[2];
        String zombieTopic = topic + "-zombie", source = topic + "-in", sink = topic + "-out";
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        admin = Admin.create(common);
        admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1),
                new NewTopic(zombieTopic, 1, (short) 1), new NewTopic(source, 2, (short) 1),
                new NewTopic(sink, 2, (short) 1)))
            .all().get(30, TimeUnit.SECONDS);

        // 1. Commit/abort loop: even transactions commit, odd ones abort after a flush (so the
        // aborted records are acknowledged, in the log, before the abort marker).
        Map<Integer, List<String>> committed = new TreeMap<>(), every = new TreeMap<>();
        for (int p = 0; p < 2; p++) {
            committed.put(p, new ArrayList<>());
            every.put(p, new ArrayList<>());
        }
        int committedCount = 0, abortedCount = 0;
        try (KafkaProducer<String, String> p = transactional(prefix + "-loop")) {
            for (int txn = 0; txn < 10; txn++) {
                boolean commit = txn % 2 == 0;
                p.beginTransaction();
                List<Future<RecordMetadata>> sent = new ArrayList<>();
                for (int i = 0; i < 20; i++) {
                    String value = "txn" + txn + "-" + i;
                    sent.add(p.send(new ProducerRecord<>(topic, i % 2, null, value)));
                    every.get(i % 2).add(value);
                    if (commit) committed.get(i % 2).add(value);
                }
                p.flush();
                for (Future<RecordMetadata> f : sent)
                    check(f.isDone() && f.get().offset() >= 0, "record acknowledged before end");
                if (commit) {
                    p.commitTransaction();
                    committedCount += sent.size();
                } else {
                    p.abortTransaction();
                    abortedCount += sent.size();
                }
            }
        }
        Map<Integer, List<String>> readCommitted = readAll(topic, 2, "read_committed");
        check(readCommitted.equals(committed),
              "read_committed sees exactly the committed records in order: " + readCommitted);
        Map<Integer, List<String>> readUncommitted = readAll(topic, 2, "read_uncommitted");
        check(readUncommitted.equals(every),
              "read_uncommitted sees all 200 records in order: " + readUncommitted);
        log("loop: read_committed=" + (readCommitted.get(0).size() + readCommitted.get(1).size())
            + " read_uncommitted=" + (readUncommitted.get(0).size()
                                      + readUncommitted.get(1).size()));

        // 2. Zombie fencing: B's initTransactions bumps the epoch, aborting A's open transaction;
        // A's commit is fenced; B commits its own record.
        KafkaProducer<String, String> a = transactional(prefix + "-zombie");
        a.beginTransaction();
        a.send(new ProducerRecord<>(zombieTopic, 0, null, "from-A")).get(30, TimeUnit.SECONDS);
        KafkaProducer<String, String> b = transactional(prefix + "-zombie");
        String fencedBy = null;
        try {
            a.commitTransaction();
        } catch (Exception e) {
            if (!isFenced(e)) throw e;
            fencedBy = e.getClass().getSimpleName();
        }
        check(fencedBy != null, "the zombie's commit is fenced");
        a.close(Duration.ofSeconds(5));
        b.beginTransaction();
        b.send(new ProducerRecord<>(zombieTopic, 0, null, "from-B"));
        b.commitTransaction();
        b.close();
        List<String> zombieCommitted = readAll(zombieTopic, 1, "read_committed").get(0);
        check(zombieCommitted.equals(List.of("from-B")),
              "read_committed sees B's record and not A's: " + zombieCommitted);
        List<String> zombieAll = readAll(zombieTopic, 1, "read_uncommitted").get(0);
        check(zombieAll.equals(List.of("from-A", "from-B")),
              "A's record was written, then aborted: " + zombieAll);
        log("zombie: fenced by " + fencedBy);

        // 3. Consume-transform-produce: input prefilled non-transactionally, each poll batch
        // transformed to the output and its offsets committed in one transaction.
        try (KafkaProducer<String, String> feeder = new KafkaProducer<>(
                common, new StringSerializer(), new StringSerializer())) {
            for (int n = 0; n < 200; n++)
                feeder.send(new ProducerRecord<>(source, n % 2, null, "in-" + n));
            feeder.flush();
        }
        String group = prefix + "-eos";
        Properties consumerProps = new Properties();
        consumerProps.putAll(common);
        consumerProps.put("group.id", group);
        consumerProps.put("isolation.level", "read_committed");
        consumerProps.put("enable.auto.commit", "false");
        consumerProps.put("auto.offset.reset", "earliest");
        consumerProps.put("max.poll.records", "30");  // several transactions
        int transactions = 0, abortedBatch = 0, done = 0;
        try (KafkaConsumer<String, String> c = new KafkaConsumer<>(
                consumerProps, new StringDeserializer(), new StringDeserializer());
             KafkaProducer<String, String> p = transactional(prefix + "-eos")) {
            c.subscribe(List.of(source));
            long deadline = System.currentTimeMillis() + 60_000;
            while (done < 200) {
                check(System.currentTimeMillis() < deadline, "processed only " + done + " of 200");
                ConsumerRecords<String, String> batch = c.poll(Duration.ofMillis(300));
                if (batch.isEmpty()) continue;
                p.beginTransaction();
                Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
                Map<TopicPartition, Long> first = new HashMap<>();
                for (ConsumerRecord<String, String> r : batch) {
                    TopicPartition tp = new TopicPartition(r.topic(), r.partition());
                    p.send(new ProducerRecord<>(sink, r.partition(), null,
                                                "out-" + r.value().substring("in-".length())));
                    offsets.put(tp, new OffsetAndMetadata(r.offset() + 1));
                    first.putIfAbsent(tp, r.offset());
                }
                p.sendOffsetsToTransaction(offsets, c.groupMetadata());
                if (abortedBatch == 0) {
                    // The first batch is aborted: neither its output nor its offsets count, and
                    // the consumer rewinds to reprocess it.
                    p.flush();
                    p.abortTransaction();
                    abortedBatch = batch.count();
                    Map<TopicPartition, OffsetAndMetadata> after = c.committed(first.keySet());
                    for (TopicPartition tp : first.keySet())
                        check(after.get(tp) == null || after.get(tp).offset() <= first.get(tp),
                              "an aborted transaction's offsets are not committed: " + after);
                    first.forEach(c::seek);
                    continue;
                }
                p.commitTransaction();
                transactions++;
                done += batch.count();
            }
        }
        Map<Integer, List<String>> out = readAll(sink, 2, "read_committed");
        Map<Integer, List<String>> wanted = new TreeMap<>();
        for (int n = 0; n < 200; n++)
            wanted.computeIfAbsent(n % 2, k -> new ArrayList<>()).add("out-" + n);
        check(out.equals(wanted), "the output holds every input record once, in order: " + out);
        Map<Integer, List<String>> outAll = readAll(sink, 2, "read_uncommitted");
        int outAllCount = outAll.get(0).size() + outAll.get(1).size();
        check(outAllCount == 200 + abortedBatch,
              "read_uncommitted output is 200 + the aborted batch's " + abortedBatch + ": "
              + outAllCount);
        List<TopicPartition> inputs = partitions(source, 2);
        Map<TopicPartition, Long> inputEnd = logEnd(inputs);
        Map<TopicPartition, OffsetAndMetadata> groupOffsets = admin.listConsumerGroupOffsets(group)
            .partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
        for (TopicPartition tp : inputs) {
            OffsetAndMetadata o = groupOffsets.get(tp);
            check(o != null && o.offset() == inputEnd.get(tp),
                  "the group's committed offset of " + tp + " is the input's end "
                  + inputEnd.get(tp) + ": " + o);
        }
        log("eos: transactions=" + transactions + " aborted-batch=" + abortedBatch
            + " group-offsets=" + groupOffsets);
        admin.close();
        log("OK java-txn committed=" + committedCount + " aborted=" + abortedCount
            + " fenced=" + fencedBy + " eos-transactions=" + transactions);
    }
}
