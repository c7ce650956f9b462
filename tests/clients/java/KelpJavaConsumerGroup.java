// The Java consumer (kafka-clients 3.9) with group.protocol=consumer (KIP-848) against kelp:
// two members share a topic's partitions with none consumed twice, the first leaves and the
// second takes over, and the AdminClient describes the group (ConsumerGroupDescribe).
// Prints "OK consumer-group ..." on success; any mismatch throws.

import java.time.Duration;
import java.util.*;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.GroupType;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.*;

public class KelpJavaConsumerGroup {
    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static KafkaConsumer<String, String> member(String bootstrap, String group, String name) {
        return member(bootstrap, group, name, null);
    }

    static KafkaConsumer<String, String> member(String bootstrap, String group, String name,
                                                String assignor) {
        Properties props = new Properties();
        if (assignor != null) props.put("group.remote.assignor", assignor);
        props.put("bootstrap.servers", bootstrap);
        props.put("group.id", group);
        props.put("group.protocol", "consumer");
        props.put("client.id", name);
        props.put("auto.offset.reset", "earliest");
        props.put("enable.auto.commit", "false");
        return new KafkaConsumer<>(props, new StringDeserializer(), new StringDeserializer());
    }

    static void produce(String bootstrap, String topic, String wave, int count) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(
                props, new StringSerializer(), new StringSerializer())) {
            for (int i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, i % 4, null, wave + "-" + i));
            }
            producer.flush();
        }
    }

    // Poll both until every wanted value is seen; a value seen twice is an error.
    static void drain(List<KafkaConsumer<String, String>> members, Set<String> wanted,
                      Set<String> seen) {
        long deadline = System.currentTimeMillis() + 60_000;
        while (!seen.containsAll(wanted) && System.currentTimeMillis() < deadline) {
            for (KafkaConsumer<String, String> m : members) {
                for (ConsumerRecord<String, String> r : poll(m, 100)) {
                    check(seen.add(r.value()), "consumed twice: " + r.value());
                }
                commit(m);
            }
        }
        check(seen.containsAll(wanted), "consumed " + seen.size() + " of " + wanted.size());
    }

    // kafka-clients 3.9's KIP-848 consumer has a race of its own: poll() checks that a fetched
    // partition is still assigned, then reads its position, while the background thread may
    // apply a revocation in between (FetchCollector.fetchRecords); poll() then throws
    // "No current assignment for partition". A revocation is what the group must do when a
    // member joins, and Kafka's own broker triggers the same race. This poll takes that one
    // exception as an empty poll (counted and printed) and the record checks stay exact: were
    // records lost with it, drain() would fail on the count.
    static int clientRaces = 0;

    static ConsumerRecords<String, String> poll(KafkaConsumer<String, String> member,
                                                long millis) {
        try {
            return member.poll(Duration.ofMillis(millis));
        } catch (IllegalStateException e) {
            String message = String.valueOf(e.getMessage());
            if (!message.startsWith("No current assignment for partition")) throw e;
            clientRaces++;
            return ConsumerRecords.empty();
        }
    }

    // A commit sent just before the member's new epoch reached the client (a member joined:
    // the group bumps every epoch) is refused STALE_MEMBER_EPOCH, by Kafka's broker as by
    // kelp, and kafka-clients 3.9's commitSync throws it rather than retrying. The member
    // learns its epoch from its next heartbeat, so the commit is retried until then (counted
    // and printed); were offsets lost meanwhile, drain() would fail on "consumed twice".
    static int commitRaces = 0;

    static void commit(KafkaConsumer<String, String> member) {
        for (int attempt = 0; ; attempt++) {
            try {
                member.commitSync();
                return;
            } catch (org.apache.kafka.clients.consumer.CommitFailedException e) {
                if (attempt >= 100 || !String.valueOf(e.getMessage()).contains("stale member epoch"))
                    throw e;
                commitRaces++;
                try {
                    Thread.sleep(20);
                } catch (InterruptedException interrupted) {
                    throw e;
                }
            }
        }
    }

    static Set<String> wave(String name, int count) {
        Set<String> out = new HashSet<>();
        for (int i = 0; i < count; i++) out.add(name + "-" + i);
        return out;
    }

    // restart mode: one member consumes a wave, says so, keeps polling until told (on stdin)
    // that the broker has restarted, then consumes a second wave: every record once.
    static void acrossRestart(String bootstrap, String topic, String group) throws Exception {
        Properties adminProps = new Properties();
        adminProps.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(adminProps)) {
            admin.createTopics(List.of(new NewTopic(topic, 4, (short) 1)))
                .all().get(30, TimeUnit.SECONDS);
        }
        Set<String> seen = new HashSet<>();
        try (KafkaConsumer<String, String> member = member(bootstrap, group, "restart")) {
            member.subscribe(List.of(topic));
            produce(bootstrap, topic, "a", 200);
            drain(List.of(member), wave("a", 200), seen);
            System.out.println("PHASE1-DONE");
            System.out.flush();
            java.io.BufferedReader stdin = new java.io.BufferedReader(
                new java.io.InputStreamReader(System.in));
            while (!stdin.ready()) {
                for (ConsumerRecord<String, String> r : poll(member, 100))
                    check(seen.add(r.value()), "consumed twice: " + r.value());
            }
            stdin.readLine();
            produce(bootstrap, topic, "b", 200);
            Set<String> all = wave("a", 200);
            all.addAll(wave("b", 200));
            long deadline = System.currentTimeMillis() + 60_000;
            while (!seen.containsAll(all) && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : poll(member, 100))
                    check(seen.add(r.value()), "consumed twice: " + r.value());
                try {
                    member.commitSync();
                } catch (org.apache.kafka.common.errors.RetriableException e) {
                    // the broker coming back: the next poll's commit carries it
                }
            }
            check(seen.equals(all), "consumed " + seen.size() + " of " + all.size());
            check(member.assignment().size() == 4, "assignment " + member.assignment());
        }
        System.out.println("OK consumer-group restart consumed=" + seen.size()
                           + " client-races=" + clientRaces + " commit-races=" + commitRaces);
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], group = topic + "-kip848";
        if (args.length > 2 && args[2].equals("restart")) {
            acrossRestart(bootstrap, topic, group);
            return;
        }
        Properties adminProps = new Properties();
        adminProps.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(adminProps)) {
            admin.createTopics(List.of(new NewTopic(topic, 4, (short) 1)))
                .all().get(30, TimeUnit.SECONDS);
        }
        Set<String> seen = new HashSet<>();
        KafkaConsumer<String, String> first = member(bootstrap, group, "first");
        KafkaConsumer<String, String> second = member(bootstrap, group, "second");
        first.subscribe(List.of(topic));
        second.subscribe(List.of(topic));
        produce(bootstrap, topic, "a", 200);
        drain(List.of(first, second), wave("a", 200), seen);
        long deadline = System.currentTimeMillis() + 30_000;
        while (System.currentTimeMillis() < deadline
               && (first.assignment().isEmpty() || second.assignment().isEmpty()
                   || first.assignment().size() + second.assignment().size() != 4)) {
            poll(first, 100);
            poll(second, 100);
        }
        check(first.assignment().size() == 2 && second.assignment().size() == 2,
              "split " + first.assignment() + " / " + second.assignment());
        Set<TopicPartition> overlap = new HashSet<>(first.assignment());
        overlap.retainAll(second.assignment());
        check(overlap.isEmpty(), "a partition owned twice: " + overlap);

        try (Admin admin = Admin.create(adminProps)) {
            ConsumerGroupDescription description = admin.describeConsumerGroups(List.of(group))
                .all().get(30, TimeUnit.SECONDS).get(group);
            check(description.type() == GroupType.CONSUMER, "type " + description.type());
            check(description.members().size() == 2, "members " + description.members());
            int assigned = 0;
            for (MemberDescription m : description.members())
                assigned += m.assignment().topicPartitions().size();
            check(assigned == 4, "assigned " + assigned);
        }

        first.close();  // leaves: the second takes every partition
        produce(bootstrap, topic, "b", 200);
        drain(List.of(second), wave("b", 200), seen);
        deadline = System.currentTimeMillis() + 30_000;
        while (second.assignment().size() != 4 && System.currentTimeMillis() < deadline)
            poll(second, 100);
        check(second.assignment().size() == 4, "after leave " + second.assignment());
        second.close();

        // A new member of the group resumes from the commits: wave c only, none again.
        KafkaConsumer<String, String> third = member(bootstrap, group, "third");
        third.subscribe(List.of(topic));
        produce(bootstrap, topic, "c", 100);
        drain(List.of(third), wave("c", 100), seen);
        for (int i = 0; i < 10; i++)
            for (ConsumerRecord<String, String> r : poll(third, 100))
                check(seen.add(r.value()), "consumed twice after restart: " + r.value());

        try (Admin admin = Admin.create(adminProps)) {
            boolean listed = false;
            for (ConsumerGroupListing g : admin.listConsumerGroups().all().get(30, TimeUnit.SECONDS))
                if (g.groupId().equals(group)) {
                    listed = true;
                    check(g.type().equals(Optional.of(GroupType.CONSUMER)), "listed " + g);
                }
            check(listed, "group not listed");
        }
        third.close();

        // The range assignor, asked for by the members: contiguous halves in partition order.
        String ranged = topic + "-range";
        List<KafkaConsumer<String, String>> pair = new ArrayList<>();
        for (String name : List.of("r1", "r2")) {
            KafkaConsumer<String, String> m = member(bootstrap, ranged, name, "range");
            m.subscribe(List.of(topic));
            pair.add(m);
        }
        deadline = System.currentTimeMillis() + 30_000;
        while (System.currentTimeMillis() < deadline
               && (pair.get(0).assignment().size() != 2 || pair.get(1).assignment().size() != 2))
            for (KafkaConsumer<String, String> m : pair) poll(m, 100);
        Set<Set<Integer>> halves = new HashSet<>();
        for (KafkaConsumer<String, String> m : pair) {
            Set<Integer> parts = new TreeSet<>();
            for (TopicPartition tp : m.assignment()) parts.add(tp.partition());
            halves.add(parts);
        }
        check(halves.equals(Set.of(Set.of(0, 1), Set.of(2, 3))), "range gave " + halves);
        try (Admin admin = Admin.create(adminProps)) {
            ConsumerGroupDescription d = admin.describeConsumerGroups(List.of(ranged))
                .all().get(30, TimeUnit.SECONDS).get(ranged);
            check(d.partitionAssignor().equals("range"), "assignor " + d.partitionAssignor());
        }
        for (KafkaConsumer<String, String> m : pair) m.close();
        System.out.println("OK consumer-group consumed=" + seen.size()
                           + " client-races=" + clientRaces + " commit-races=" + commitRaces);
    }
}
