"""The gateway's broker client tells "unreachable" (retriable) from "reached and broken"."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio_asyncio

from gateway.broker_client import BrokerClient, BrokerFailed, BrokerUnavailable
from kelp import grpc
from kelp.routes import BROKER, SIDECAR
from kelp.rpc.broker import v1 as pb
from tests.kelp_procs import Cluster, free_port


async def _call(address: str, method: grpc.Route[Any, Any]) -> object:
    """The reply, or raises what ``call`` raised (not wrapped in the nursery's group)."""
    outcome: list[object] = []
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        client = BrokerClient(grpc.Address.parse(address))
        await nursery.start(client.run)
        try:
            outcome.append(await client.call(method, pb.HealthRequest(), timeout=5))
        except Exception as exc:
            outcome.append(exc)
        nursery.cancel_scope.cancel()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


async def test_a_live_broker_answers(cluster: Cluster) -> None:
    reply = await _call(f"127.0.0.1:{cluster.broker_port}", BROKER.health)
    assert reply.status == "ok"


async def test_an_unimplemented_method_is_a_failure_not_an_outage(cluster: Cluster) -> None:
    # The sidecar's Health, asked of the broker: a method the broker does not serve. grpclib
    # answers an unknown method in a form its own client reports as UNKNOWN: either way the
    # broker was reached, so it is a failure to log, not an outage to retry.
    with pytest.raises(BrokerFailed):
        await _call(f"127.0.0.1:{cluster.broker_port}", SIDECAR.health)


async def test_a_misspelt_method_fails_before_anything_is_sent() -> None:
    with pytest.raises(AttributeError, match="did you mean 'health'"):
        BROKER.helth  # noqa: B018


async def test_nobody_listening_is_an_outage() -> None:
    with pytest.raises(BrokerUnavailable):
        await _call(f"127.0.0.1:{free_port()}", BROKER.health)
