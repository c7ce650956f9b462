// KafkaJS 2.2.4 against kelp's transactions: a commit/abort loop read by read_committed and
// read_uncommitted consumers, zombie fencing, and consume-transform-produce with sendOffsets.
// Prints "OK ..." and exits 0 on success; any mismatch exits 1 with the reason.
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, topic, prefix] = process.argv.slice(2);
const kafka = new Kafka({ clientId: prefix, brokers: [bootstrap], logLevel: logLevel.NOTHING });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

function transactional(transactionalId) {
  return kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 });
}

// partition -> values in offset order, as a consumer with this isolation sees them: read from
// the start until `expected` records arrived, then two quiet seconds to catch any extra.
async function read(name, partitions, readUncommitted, expected) {
  const consumer = kafka.consumer({ groupId: `${name}-${readUncommitted}-${Date.now()}`,
                                    readUncommitted, maxWaitTimeInMs: 200 });
  await consumer.connect();
  await consumer.subscribe({ topic: name, fromBeginning: true });
  const seen = {};
  let count = 0;
  let last = Date.now();
  consumer.run({
    eachMessage: async ({ partition, message }) => {
      (seen[partition] = seen[partition] || []).push(message.value.toString());
      count += 1;
      last = Date.now();
    },
  });
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline && (count < expected || Date.now() - last < 2000)) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await consumer.disconnect();
  for (let p = 0; p < partitions; p++) seen[p] = seen[p] || [];
  return seen;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function main() {
  const source = `${topic}-in`;
  const sink = `${topic}-out`;
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [topic, source, sink].map((t) => ({ topic: t,
                                                                         numPartitions: 2 })),
                             waitForLeaders: true });

  // 1. Commit/abort loop: even transactions commit, odd ones abort.
  const committed = { 0: [], 1: [] };
  const every = { 0: [], 1: [] };
  const loop = transactional(`${prefix}-loop`);
  await loop.connect();
  for (let txn = 0; txn < 10; txn++) {
    const transaction = await loop.transaction();
    for (let i = 0; i < 20; i++) {
      const value = `txn${txn}-${i}`;
      await transaction.send({ topic, messages: [{ value, partition: i % 2 }] });
      every[i % 2].push(value);
      if (txn % 2 === 0) committed[i % 2].push(value);
    }
    if (txn % 2 === 0) await transaction.commit(); else await transaction.abort();
  }
  await loop.disconnect();
  check(same(await read(topic, 2, false, 100), committed), "read_committed view");
  check(same(await read(topic, 2, true, 200), every), "read_uncommitted view");

  // 2. Zombie fencing: a second instance with the same id fences the first.
  const zombie = transactional(`${prefix}-zombie`);
  await zombie.connect();
  const zombieTxn = await zombie.transaction();
  await zombieTxn.send({ topic, messages: [{ value: "zombie", partition: 0 }] });
  const successor = transactional(`${prefix}-zombie`);
  await successor.connect();
  // KafkaJS sends the transactional InitProducerId (which bumps the epoch, aborting the
  // zombie's transaction) when the first transaction begins, not on connect.
  const successorTxn = await successor.transaction();
  let fenced = null;
  try {
    await zombieTxn.commit();
  } catch (error) {
    fenced = error.type || error.name;
  }
  check(["PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"].includes(fenced),
        `the zombie's commit is fenced (got ${fenced})`);
  await zombie.disconnect();
  await successorTxn.send({ topic, messages: [{ value: "successor", partition: 0 }] });
  await successorTxn.commit();
  await successor.disconnect();
  const afterZombie = await read(topic, 2, false, 101);
  check(afterZombie[0].includes("successor") && !afterZombie[0].includes("zombie"),
        "the zombie's record is aborted, the successor's committed");

  // 3. Consume-transform-produce with sendOffsets.
  const feeder = kafka.producer();
  await feeder.connect();
  await feeder.send({ topic: source, messages: Array.from({ length: 200 },
                                                          (_, n) => ({ value: `in-${n}`,
                                                                       partition: n % 2 })) });
  await feeder.disconnect();
  const groupId = `${prefix}-eos`;
  const eos = transactional(`${prefix}-eos`);
  await eos.connect();
  const consumer = kafka.consumer({ groupId, readUncommitted: false, maxWaitTimeInMs: 200 });
  await consumer.connect();
  await consumer.subscribe({ topic: source, fromBeginning: true });
  let done = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`only ${done} of 200 processed`)), 60000);
    consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch }) => {
        const transaction = await eos.transaction();
        try {
          await transaction.send({ topic: sink, messages: batch.messages.map((m) => ({
            value: `out-${m.value.toString().slice(3)}`, partition: batch.partition })) });
          const next = (BigInt(batch.lastOffset()) + 1n).toString();
          await transaction.sendOffsets({ consumerGroupId: groupId, topics: [{
            topic: batch.topic, partitions: [{ partition: batch.partition, offset: next }] }] });
          await transaction.commit();
        } catch (error) {
          await transaction.abort();
          throw error;
        }
        done += batch.messages.length;
        if (done >= 200) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  await eos.disconnect();
  const out = await read(sink, 2, false, 200);
  const produced = [...out[0], ...out[1]].sort();
  const wanted = Array.from({ length: 200 }, (_, n) => `out-${n}`).sort();
  check(same(produced, wanted), `every input exactly once in the output (${produced.length})`);
  const offsets = await admin.fetchOffsets({ groupId, topics: [source] });
  const total = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
  check(total === 200, `the group's committed offsets are the input's end (${total})`);
  await admin.disconnect();
  console.log(`OK kafkajs transactions committed=100 aborted=100 fenced=${fenced}`);
}

main().then(() => process.exit(0), (error) => {
  console.error(error.stack || error);
  process.exit(1);
});
