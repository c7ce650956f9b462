// The Java client (kafka-clients 3.9) over kelp's secured listeners: for each properties file
// given (one per security mode), produce COUNT records to TOPIC-<mode> and read them back in
// order with a group consumer. A file whose name starts with "refused-" must fail to
// authenticate (SaslAuthenticationException, or SslAuthenticationException for a bad
// certificate). Prints one line "OK ..." on success; any mismatch throws.
//
// usage: KelpJavaSecure COUNT TOPIC FILE...

import java.io.FileInputStream;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.*;
import org.apache.kafka.clients.consumer.*;
import org.apache.kafka.clients.producer.*;
import org.apache.kafka.common.errors.AuthenticationException;
import org.apache.kafka.common.serialization.*;

public class KelpJavaSecure {
    static void check(boolean ok, String what) {
        if (!ok) throw new IllegalStateException("check failed: " + what);
    }

    static Properties load(String path) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(path)) {
            props.load(in);
        }
        return props;
    }

    static void roundTrip(Properties common, String topic, int count) throws Exception {
        Properties producerProps = new Properties();
        producerProps.putAll(common);
        producerProps.put("linger.ms", "5");
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(
                producerProps, new StringSerializer(), new StringSerializer())) {
            for (int i = 0; i < count; i++) {
                producer.send(new ProducerRecord<>(topic, 0, "k" + i, "v" + i));
            }
            producer.flush();
        }
        Properties consumerProps = new Properties();
        consumerProps.putAll(common);
        consumerProps.put("group.id", topic + "-readers");
        consumerProps.put("auto.offset.reset", "earliest");
        List<String> seen = new ArrayList<>();
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(
                consumerProps, new StringDeserializer(), new StringDeserializer())) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (seen.size() < count && System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> record : consumer.poll(Duration.ofMillis(300))) {
                    seen.add(record.value());
                }
            }
        }
        check(seen.size() == count, topic + ": consumed " + seen.size() + " of " + count);
        for (int i = 0; i < count; i++) check(seen.get(i).equals("v" + i), topic + " order at " + i);
    }

    static void refused(Properties common) throws Exception {
        Properties props = new Properties();
        props.putAll(common);
        props.put("default.api.timeout.ms", "15000");
        props.put("request.timeout.ms", "10000");
        try (Admin admin = Admin.create(props)) {
            admin.listTopics().names().get(20, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            check(e.getCause() instanceof AuthenticationException,
                  "expected an authentication failure, got " + e.getCause());
            return;
        }
        throw new IllegalStateException("check failed: bad credentials were accepted");
    }

    public static void main(String[] args) throws Exception {
        int count = Integer.parseInt(args[0]);
        String topic = args[1];
        List<String> done = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            String path = args[i];
            String name = new java.io.File(path).getName().replace(".properties", "");
            if (name.startsWith("refused-")) {
                refused(load(path));
            } else {
                roundTrip(load(path), topic + "-" + name, count);
            }
            done.add(name);
        }
        System.out.println("OK " + String.join(",", done));
    }
}
