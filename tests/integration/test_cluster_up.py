"""``kelp up --brokers 3 --gateways 2``: etcd, a three-broker cluster and two routing gateways
on one machine, as the README tells a user to try it; a replicated topic written through one
gateway is read through the other, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.etcd_proc import require_etcd
from tests.kelp_procs import free_port
from tests.kelp_up import start_up


def test_kelp_up_runs_a_replicated_cluster_and_stops_it_whole(tmp_path: Path) -> None:
    require_etcd()
    # Brokers and gateways listen next to these (ports + 10*i, + 100*i, + j): picked far
    # apart so that the derived ports do not meet another test's.
    ports = {"kafka": free_port(), "registry": free_port(), "broker": free_port(),
             "broker-http": free_port(), "sidecar-http": free_port(), "ucx": free_port(),
             "console": free_port(), "console-ws": free_port(), "etcd-client": free_port()}
    up = start_up(tmp_path, ports=ports, extra=("--brokers", "3", "--gateways", "2"))
    try:
        up.wait_for("kelp cluster is ready", timeout=120)
        first, second = f"127.0.0.1:{ports['kafka']}", f"127.0.0.1:{ports['kafka'] + 1}"
        admin = AdminClient({"bootstrap.servers": first})
        admin.create_topics([NewTopic("tried", 3, 3)])["tried"].result(30)
        producer = Producer({"bootstrap.servers": first, "acks": "all",
                             "enable.idempotence": True})
        for i in range(90):
            producer.produce("tried", f"v{i}".encode(), partition=i % 3)
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": second, "group.id": "try",
                             "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition("tried", p, 0) for p in range(3)])
        seen: list[str] = []
        for _ in range(100):
            seen += [m.value().decode() for m in consumer.consume(100, timeout=0.2)
                     if m.error() is None]
            if len(seen) >= 90:
                break
        consumer.close()
        assert sorted(seen) == sorted(f"v{i}" for i in range(90))
        os.killpg(up.proc.pid, signal.SIGINT)
        assert up.proc.wait(60) == 0
        leftover = subprocess.run(["pgrep", "-af", str(up.data_dir)], capture_output=True,
                                  text=True).stdout.strip()
        assert not leftover, leftover
    finally:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGKILL)
            up.proc.wait(10)
        subprocess.run(["pkill", "-KILL", "-f", str(up.data_dir)], check=False)
