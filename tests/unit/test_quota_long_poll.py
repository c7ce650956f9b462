"""The broker's DescribeClientQuotas is a long poll: a gateway that already has the current
quotas is answered when they change (or when its wait is over), not at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from broker.service import BrokerService
from broker.topics import TopicRegistry
from kelp.rpc.broker import v1 as pb


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[BrokerService]:
    registry = TopicRegistry(tmp_path / "data")
    registry.open()
    try:
        yield BrokerService(registry)
    finally:
        registry.close()


def set_quota(client_id: str, rate: float, validate_only: bool = False
              ) -> pb.AlterClientQuotasRequest:
    return pb.AlterClientQuotasRequest(validate_only=validate_only, entries=[
        pb.AlterClientQuotasRequestEntry(
            entity=[pb.QuotaEntityPart(type="client-id", name=client_id)],
            ops=[pb.AlterClientQuotasRequestOp(key="producer_byte_rate", value=rate)])])


async def test_a_poll_at_the_current_version_waits_for_the_change(service: BrokerService
                                                                  ) -> None:
    first = await service.describe_client_quotas(pb.DescribeClientQuotasRequest())
    assert first.version and not first.entries
    answered: list[pb.DescribeClientQuotasReply] = []

    async def poll() -> None:
        answered.append(await service.describe_client_quotas(pb.DescribeClientQuotasRequest(
            known_version=first.version, wait_ms=20_000)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.2)
        assert not answered  # nothing changed: still held
        # A validate-only request changes nothing: the poll stays held.
        await service.alter_client_quotas(set_quota("c", 1024, validate_only=True))
        await trio.sleep(0.1)
        assert not answered
        with trio.fail_after(5):
            await service.alter_client_quotas(set_quota("c", 1024))
    (reply,) = answered
    assert reply.version != first.version
    assert [(e.entity[0].name, e.values[0].value) for e in reply.entries] == [("c", 1024)]


async def test_a_poll_at_an_old_version_or_without_a_wait_is_answered_at_once(
        service: BrokerService) -> None:
    current = await service.describe_client_quotas(pb.DescribeClientQuotasRequest())
    with trio.fail_after(1):
        await service.describe_client_quotas(pb.DescribeClientQuotasRequest(
            known_version=current.version + 1, wait_ms=20_000))
        await service.describe_client_quotas(pb.DescribeClientQuotasRequest(
            known_version=current.version))


async def test_a_held_poll_ends_when_its_wait_is_over(service: BrokerService) -> None:
    current = await service.describe_client_quotas(pb.DescribeClientQuotasRequest())
    start = trio.current_time()
    with trio.fail_after(5):
        reply = await service.describe_client_quotas(pb.DescribeClientQuotasRequest(
            known_version=current.version, wait_ms=300))
    assert trio.current_time() - start >= 0.3
    assert reply.version == current.version
