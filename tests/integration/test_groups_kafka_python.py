"""Consumer groups with kafka-python 3 (JoinGroup v7, SyncGroup v5, LeaveGroup v5, ...)."""

from __future__ import annotations

from tests.group_ledger import Ledger
from tests.group_members import KafkaPythonMember, Member
from tests.group_scenarios import leave_join_resume
from tests.kelp_procs import Cluster


def test_three_members_leave_join_and_resume(group_cluster: Cluster, topic_name: str) -> None:
    def make(name: str, ledger: Ledger, group: str) -> Member:
        return KafkaPythonMember(name, ledger, group_cluster.bootstrap, group, topic_name)

    summary = leave_join_resume(group_cluster, topic_name, make, eager=True)
    print(f"\nkafka-python: {summary}")
