// KafkaJS 2.2.4 over kelp's secured listeners. MODE is a JSON object:
//   {"ca": PEM path, "cert": PEM path, "key": PEM path,           (TLS; cert/key optional)
//    "mechanism": "scram-sha-512" | "scram-sha-256" | "plain",    (SASL; optional)
//    "username": ..., "password": ..., "refused": true|false}
// Produces COUNT records to TOPIC and reads them back in order with a group consumer, or, with
// "refused", checks that connecting fails with KafkaJS's SASL authentication error.
// Prints "OK ..." and exits 0 on success; any mismatch exits 1 with the reason.
const fs = require("fs");
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, topic, countText, modeText] = process.argv.slice(2);
const count = Number(countText);
const mode = JSON.parse(modeText);

function settings() {
  const config = { clientId: "kafkajs-secure", brokers: [bootstrap], logLevel: logLevel.NOTHING,
                   retry: { retries: mode.refused ? 0 : 5 } };
  if (mode.ca) {
    config.ssl = { ca: [fs.readFileSync(mode.ca, "utf-8")] };
    if (mode.cert) {
      config.ssl.cert = fs.readFileSync(mode.cert, "utf-8");
      config.ssl.key = fs.readFileSync(mode.key, "utf-8");
    }
  }
  if (mode.mechanism) {
    config.sasl = { mechanism: mode.mechanism, username: mode.username, password: mode.password };
  }
  return config;
}

async function main() {
  const kafka = new Kafka(settings());
  if (mode.refused) {
    const admin = kafka.admin();
    try {
      await admin.connect();
      await admin.listTopics();
    } catch (error) {
      if (error.name !== "KafkaJSSASLAuthenticationError") {
        throw new Error(`expected KafkaJSSASLAuthenticationError, got ${error.name}: ${error.message}`);
      }
      console.log(`OK refused: ${error.message}`);
      return;
    } finally {
      await admin.disconnect();
    }
    throw new Error("bad credentials were accepted");
  }
  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) messages.push({ key: `k${i}`, value: `v${i}`, partition: 0 });
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${topic}-kafkajs` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.length} of ${count}`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length === count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  await consumer.disconnect();
  for (let i = 0; i < count; i++) {
    if (seen[i] !== `v${i}`) throw new Error(`order broken at ${i}: ${seen[i]}`);
  }
  console.log(`OK ${count} records over ${mode.mechanism || "ssl"}`);
}

main().then(() => process.exit(0), (error) => {
  console.error(error.stack || String(error));
  process.exit(1);
});
