"""Consumer groups with aiokafka 0.14 (JoinGroup v5, SyncGroup v3, OffsetCommit v3, ...)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.group_ledger import Ledger
from tests.group_members import AiokafkaMember, AsyncioThread, Member
from tests.group_scenarios import leave_join_resume
from tests.kelp_procs import Cluster


@pytest.fixture
def event_loop_thread() -> Iterator[AsyncioThread]:
    runner = AsyncioThread()
    try:
        yield runner
    finally:
        runner.close()


def test_three_members_leave_join_and_resume(group_cluster: Cluster, topic_name: str,
                                             event_loop_thread: AsyncioThread) -> None:
    def make(name: str, ledger: Ledger, group: str) -> Member:
        return AiokafkaMember(name, ledger, group_cluster.bootstrap, group, topic_name,
                              loop=event_loop_thread)

    summary = leave_join_resume(group_cluster, topic_name, make, eager=True)
    print(f"\naiokafka: {summary}")
