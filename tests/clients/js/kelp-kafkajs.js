// KafkaJS 2.2.4 against kelp: admin, producer, group consumer with commits.
// Prints "OK ..." and exits 0 on success; any mismatch exits 1 with the reason.
const { Kafka, logLevel, CompressionTypes } = require("kafkajs");

const [bootstrap, topic, countText, clientId] = process.argv.slice(2);
const count = Number(countText);

async function main() {
  const kafka = new Kafka({ clientId, brokers: [bootstrap],
                            logLevel: logLevel.ERROR });
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 3,
                                      configEntries: [{ name: "retention.ms", value: "86400000" }] }],
                            waitForLeaders: true });
  const described = await admin.describeConfigs({ includeSynonyms: false,
                                                  resources: [{ type: 2, name: topic }] });
  const retention = described.resources[0].configEntries.find((c) => c.configName === "retention.ms");
  if (!retention || retention.configValue !== "86400000") throw new Error("retention.ms not described");
  await admin.disconnect();

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  const messages = [];
  for (let i = 0; i < count; i++) {
    messages.push({ key: `key-${i}`, value: `value-${i}`, headers: { seq: String(i) } });
  }
  for (let start = 0; start < count; start += 500) {
    await producer.send({ topic, acks: -1, compression: CompressionTypes.GZIP,
                          messages: messages.slice(start, start + 500) });
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: `${topic}-kafkajs` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Map();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${seen.size} of ${count}`)), 60000);
    consumer.run({
      eachMessage: async ({ message }) => {
        const seq = message.headers.seq.toString();
        if (message.value.toString() !== `value-${seq}`) {
          reject(new Error(`header ${seq} does not match ${message.value}`));
        }
        seen.set(message.key.toString(), message.value.toString());
        if (seen.size === count) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();  // commits the consumed offsets on the way out

  const check = kafka.admin();
  await check.connect();
  const offsets = await check.fetchOffsets({ groupId: `${topic}-kafkajs`, topics: [topic] });
  const committed = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
  const byTime = await check.fetchTopicOffsetsByTimestamp(topic, 0);
  if (byTime.some((p) => Number(p.offset) !== 0)) throw new Error("offsets by time 0 are not 0");
  await check.deleteTopics({ topics: [topic] });
  const remaining = await check.listTopics();
  await check.disconnect();
  if (remaining.includes(topic)) throw new Error("topic still listed after deleteTopics");
  if (committed !== count) throw new Error(`committed offsets sum to ${committed}`);
  console.log(`OK kafkajs produced=${count} consumed=${seen.size} committed=${committed}`);
}

main().then(() => process.exit(0), (error) => { console.error(error); process.exit(1); });
