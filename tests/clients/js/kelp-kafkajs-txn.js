// KafkaJS 2.2.4 against kelp's transactions, end to end:
//  1. a commit/abort loop (10 transactions of 20 records over 2 partitions, the odd ones
//     aborted after their sends were acknowledged, so their records are in the log) read back
//     by a read_committed consumer (exactly the 100 committed records, per partition in
//     produce order) and a read_uncommitted one (all 200);
//  2. zombie fencing: a second producer with the same transactionalId fences the first, whose
//     open transaction is aborted and whose commit fails;
//  3. consume-transform-produce with transaction.sendOffsets, the first transaction aborted
//     and its batch reprocessed: the output holds every input record exactly once, in order,
//     and the group's committed offsets are the input's log end.
// Args: bootstrap topic transactional-id-prefix. Prints "OK kafkajs-txn ..." and exits 0 on
// success; any mismatch exits 1 with the reason.
const { Kafka, logLevel } = require("kafkajs");

const [bootstrap, topic, prefix] = process.argv.slice(2);
const kafka = new Kafka({ clientId: prefix, brokers: [bootstrap], logLevel: logLevel.ERROR });
const admin = kafka.admin();
let reads = 0;

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function transactional(transactionalId) {
  return kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 });
}

function acknowledged(results) {
  check(results.every((r) => r.errorCode === 0 && Number(r.baseOffset) >= 0),
        `sends acknowledged: ${JSON.stringify(results)}`);
}

// partition -> values in offset order, as a consumer with this isolation level sees the whole
// topic: a fresh group from the beginning, until every partition's fetch position (after the
// last record, control records included) reaches its high watermark. A read_committed
// consumer only gets there once the last stable offset is the log end, so nothing is left
// undecided (or unread).
async function readAll(name, partitions, readUncommitted) {
  const need = {};
  const reached = {};
  const seen = {};
  for (let p = 0; p < partitions; p++) {
    need[p] = 0;
    reached[p] = 0;
    seen[p] = [];
  }
  // The admin's offsets are the last stable ones; fetch responses raise them to the high
  // watermark.
  for (const { partition, offset } of await admin.fetchTopicOffsets(name)) {
    need[partition] = Number(offset);
  }
  reads += 1;
  const consumer = kafka.consumer({
    groupId: `${prefix}-read-${reads}-${readUncommitted ? "uncommitted" : "committed"}`,
    readUncommitted, maxWaitTimeInMs: 100 });
  consumer.on(consumer.events.END_BATCH_PROCESS, ({ payload }) => {
    const p = payload.partition;
    reached[p] = Math.max(reached[p], Number(payload.lastOffset) + 1);
    need[p] = Math.max(need[p], Number(payload.highWatermark));
  });
  await consumer.connect();
  await consumer.subscribe({ topic: name, fromBeginning: true });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      seen[partition].push(message.value.toString());
    },
  });
  const deadline = Date.now() + 30000;
  const done = () => Object.keys(need).every((p) => reached[p] >= need[p]);
  while (!done() && Date.now() < deadline) await sleep(50);
  await consumer.disconnect();
  check(done(), `${readUncommitted ? "read_uncommitted" : "read_committed"} read of ${name} `
        + `stuck at ${JSON.stringify(reached)}, log end ${JSON.stringify(need)}, `
        + `seen ${JSON.stringify(seen)}`);
  return seen;
}

// The fencing error's type, looked for along the cause chain; null when it is another error.
function fenceType(error) {
  for (let e = error; e; e = e.cause) {
    if (["PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"].includes(e.type)) return e.type;
  }
  return null;
}

async function commitAbortLoop() {
  const committed = { 0: [], 1: [] };
  const every = { 0: [], 1: [] };
  let committedCount = 0;
  let abortedCount = 0;
  const loop = transactional(`${prefix}-loop`);
  await loop.connect();
  for (let txn = 0; txn < 10; txn++) {
    const commit = txn % 2 === 0;
    const transaction = await loop.transaction();
    const messages = [];
    for (let i = 0; i < 20; i++) {
      const value = `txn${txn}-${i}`;
      messages.push({ value, partition: i % 2 });
      every[i % 2].push(value);
      if (commit) committed[i % 2].push(value);
    }
    // Two awaited sends, both over both partitions: every record is acknowledged (in the
    // log) before the transaction ends.
    acknowledged(await transaction.send({ topic, messages: messages.slice(0, 10) }));
    acknowledged(await transaction.send({ topic, messages: messages.slice(10) }));
    if (commit) {
      await transaction.commit();
      committedCount += messages.length;
    } else {
      await transaction.abort();
      abortedCount += messages.length;
    }
  }
  await loop.disconnect();
  const [readCommitted, readUncommitted] = await Promise.all([
    readAll(topic, 2, false), readAll(topic, 2, true)]);
  check(same(readCommitted, committed),
        `read_committed sees exactly the committed records in order: ${JSON.stringify(readCommitted)}`);
  check(same(readUncommitted, every),
        `read_uncommitted sees all 200 records in order: ${JSON.stringify(readUncommitted)}`);
  console.log(`loop: read_committed=${readCommitted[0].length + readCommitted[1].length} `
              + `read_uncommitted=${readUncommitted[0].length + readUncommitted[1].length}`);
  return { committedCount, abortedCount };
}

async function zombieFencing(zombieTopic) {
  const a = transactional(`${prefix}-zombie`);
  await a.connect();
  const txnA = await a.transaction();
  acknowledged(await txnA.send({ topic: zombieTopic, messages: [{ value: "from-A",
                                                                   partition: 0 }] }));
  const b = transactional(`${prefix}-zombie`);
  await b.connect();
  // KafkaJS sends the transactional InitProducerId when the first transaction begins: this
  // bumps the epoch, which fences A and aborts A's open transaction.
  const txnB = await b.transaction();
  let fenced = null;
  try {
    await txnA.commit();
  } catch (error) {
    fenced = fenceType(error);
    if (!fenced) throw error;
  }
  check(fenced !== null, "the zombie's commit is fenced");
  await a.disconnect();
  acknowledged(await txnB.send({ topic: zombieTopic, messages: [{ value: "from-B",
                                                                   partition: 0 }] }));
  await txnB.commit();
  await b.disconnect();
  const [readCommitted, readUncommitted] = await Promise.all([
    readAll(zombieTopic, 1, false), readAll(zombieTopic, 1, true)]);
  check(same(readCommitted[0], ["from-B"]),
        `read_committed sees B's record and not A's: ${JSON.stringify(readCommitted)}`);
  check(same(readUncommitted[0], ["from-A", "from-B"]),
        `A's record was written, then aborted: ${JSON.stringify(readUncommitted)}`);
  console.log(`zombie: fenced with ${fenced}`);
  return fenced;
}

async function consumeTransformProduce(source, sink) {
  const feeder = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await feeder.connect();
  for (let start = 0; start < 200; start += 20) {  // several record batches per partition
    acknowledged(await feeder.send({ topic: source, messages: Array.from(
      { length: 20 }, (_, k) => ({ value: `in-${start + k}`, partition: (start + k) % 2 })) }));
  }
  await feeder.disconnect();

  const groupId = `${prefix}-eos`;
  const eos = transactional(`${prefix}-eos`);
  await eos.connect();
  const consumer = kafka.consumer({ groupId, readUncommitted: false, maxWaitTimeInMs: 100,
                                    maxBytesPerPartition: 1024 });
  await consumer.connect();
  await consumer.subscribe({ topic: source, fromBeginning: true });
  let done = 0;
  let transactions = 0;
  let abortedBatch = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`processed only ${done} of 200`)), 60000);
    consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      eachBatch: async ({ batch, resolveOffset }) => {
        if (batch.messages.length === 0) return;
        const last = batch.messages[batch.messages.length - 1].offset;
        const next = (BigInt(last) + 1n).toString();
        const transaction = await eos.transaction();
        try {
          acknowledged(await transaction.send({ topic: sink, messages: batch.messages.map(
            (m) => ({ value: `out-${m.value.toString().slice("in-".length)}`,
                      partition: batch.partition })) }));
          await transaction.sendOffsets({ consumerGroupId: groupId, topics: [{
            topic: batch.topic, partitions: [{ partition: batch.partition, offset: next }] }] });
          if (abortedBatch === 0) {
            // The first batch is aborted: neither its output nor its offsets count, and as
            // its offset stays unresolved the consumer fetches it again.
            await transaction.abort();
            abortedBatch = batch.messages.length;
            const [offsets] = await admin.fetchOffsets({ groupId, topics: [source] });
            const mine = offsets.partitions.find((p) => p.partition === batch.partition);
            check(mine && Number(mine.offset) <= Number(batch.messages[0].offset),
                  `an aborted transaction's offsets are not committed: ${JSON.stringify(offsets)}`);
            return;
          }
          await transaction.commit();
        } catch (error) {
          if (transaction.isActive()) await transaction.abort();
          reject(error);
          throw error;
        }
        resolveOffset(last);
        transactions += 1;
        done += batch.messages.length;
        if (done >= 200) {
          clearTimeout(timer);
          resolve();
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  await eos.disconnect();

  const wanted = { 0: [], 1: [] };
  for (let n = 0; n < 200; n++) wanted[n % 2].push(`out-${n}`);
  const [out, outAll] = await Promise.all([readAll(sink, 2, false), readAll(sink, 2, true)]);
  check(same(out, wanted),
        `the output holds every input record once, in order: ${JSON.stringify(out)}`);
  const outAllCount = outAll[0].length + outAll[1].length;
  check(outAllCount === 200 + abortedBatch,
        `read_uncommitted output is 200 + the aborted batch's ${abortedBatch}: ${outAllCount}`);
  const end = await admin.fetchTopicOffsets(source);
  const [groupOffsets] = await admin.fetchOffsets({ groupId, topics: [source] });
  for (const { partition, offset } of end) {
    const mine = groupOffsets.partitions.find((p) => p.partition === partition);
    check(mine && mine.offset === offset,
          `the group's committed offset of ${source}-${partition} is the input's end ${offset}: `
          + JSON.stringify(groupOffsets));
  }
  console.log(`eos: transactions=${transactions} aborted-batch=${abortedBatch} `
              + `group-offsets=${JSON.stringify(groupOffsets.partitions)}`);
  return transactions;
}

async function main() {
  const zombieTopic = `${topic}-zombie`;
  const source = `${topic}-in`;
  const sink = `${topic}-out`;
  await admin.connect();
  await admin.createTopics({
    topics: [{ topic, numPartitions: 2 }, { topic: zombieTopic, numPartitions: 1 },
             { topic: source, numPartitions: 2 }, { topic: sink, numPartitions: 2 }],
    waitForLeaders: true });
  const { committedCount, abortedCount } = await commitAbortLoop();
  const fenced = await zombieFencing(zombieTopic);
  const transactions = await consumeTransformProduce(source, sink);
  await admin.disconnect();
  console.log(`OK kafkajs-txn committed=${committedCount} aborted=${abortedCount} `
              + `fenced=${fenced} eos-transactions=${transactions}`);
}

main().then(() => process.exit(0), (error) => {
  console.error(error.stack || error);
  process.exit(1);
});
