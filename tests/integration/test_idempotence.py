"""Idempotent producers whose requests are retried after the broker stored them: the gateway
drops the connection instead of answering every 7th produce, so librdkafka resends batches
that are already in the log. The broker recognises each retry by its sequence and answers
with the original offsets: the log ends with every record exactly once, in order, no gaps."""

from __future__ import annotations

from confluent_kafka import Producer

from tests.kelp_procs import Cluster
from tests.partition_reader import read_partition

RECORDS = 20_000


def test_retried_batches_are_stored_once(tmp_path, topic_name: str) -> None:
    cluster = Cluster(tmp_path / "c", gateway_args=["--debug", "drop-produce-every=7"]).start()
    try:
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True,
                             "acks": "all", "linger.ms": 2, "batch.num.messages": 200,
                             "compression.type": "lz4", "retry.backoff.ms": 20})
        errors: list[object] = []
        acked: dict[int, bytes] = {}

        def delivered(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                acked[msg.offset()] = msg.value()

        for i in range(RECORDS):
            producer.produce(topic_name, value=b"%d" % i, partition=0, on_delivery=delivered,
                             headers=[("n", b"%d" % i)])
            producer.poll(0)
        assert producer.flush(60) == 0
        assert not errors, errors[:3]
        dropped = cluster.gateway_health()["produces_dropped"]
        assert dropped > 10, f"only {dropped} produces were dropped: retries not exercised"
        stored = read_partition(cluster.bootstrap, topic_name, expected=RECORDS)
        assert [stored[o] for o in sorted(stored)] == [b"%d" % i for i in range(RECORDS)]
        assert sorted(stored) == list(range(RECORDS))  # no gaps, no duplicates
        assert acked == stored
    finally:
        cluster.stop()
