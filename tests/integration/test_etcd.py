"""kelp's etcd client against a real etcd: key-value calls, compare-and-swap, leases that
expire, and a mirror that follows a prefix through writes, deletes and an etcd restart."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio_asyncio

from kelp.etcd import Etcd, EtcdUnavailable, LeaseLost, Mirror, prefix_end
from tests.etcd_proc import EtcdServer
from tests.kelp_procs import free_port


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def with_loop() -> None:
        async with trio_asyncio.open_loop():
            await main()

    trio.run(with_loop)


def test_prefix_end() -> None:
    assert prefix_end(b"/kelp/") == b"/kelp0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\0"


def test_key_values_and_compare_and_swap(etcd_server: EtcdServer) -> None:
    async def main() -> None:
        etcd = Etcd.from_text(etcd_server.endpoint)
        try:
            assert await etcd.get(b"/t/a") is None
            first = await etcd.put(b"/t/a", b"1")
            entry = await etcd.get(b"/t/a")
            assert entry is not None and entry.value == b"1" and entry.mod_revision == first
            # Two writers read the same revision: exactly one wins.
            won = await etcd.put_if(b"/t/a", b"2", mod_revision=first)
            lost = await etcd.put_if(b"/t/a", b"3", mod_revision=first)
            assert won is not None and won > first and lost is None
            assert (await etcd.get(b"/t/a")).value == b"2"
            assert await etcd.put_if(b"/t/new", b"x", mod_revision=0) is not None
            assert await etcd.put_if(b"/t/new", b"y", mod_revision=0) is None  # exists
            await etcd.put(b"/t/b", b"b")
            await etcd.put(b"/u", b"outside")
            entries, revision = await etcd.get_prefix(b"/t/")
            assert [e.key for e in entries] == [b"/t/a", b"/t/b", b"/t/new"]
            assert revision >= won
            assert not await etcd.delete_if(b"/t/b", mod_revision=first)
            assert await etcd.delete(b"/t/", prefix=True) == 3
            assert (await etcd.get_prefix(b"/t/"))[0] == []
            assert (await etcd.get(b"/u")).value == b"outside"
            status = await etcd.status()
            assert status.version.startswith("3.")
        finally:
            etcd.close()

    run(main)


def test_a_lease_takes_its_keys_and_keep_alive_holds_them(etcd_server: EtcdServer) -> None:
    async def main() -> None:
        etcd = Etcd.from_text(etcd_server.endpoint)
        try:
            kept, dropped = await etcd.grant(2), await etcd.grant(2)
            await etcd.put(b"/kept", b"k", lease=kept)
            await etcd.put(b"/dropped", b"d", lease=dropped)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(etcd.keep_alive, kept, 2)
                await trio.sleep(4.5)  # two TTLs: the lease kept alive stays, the other goes
                assert await etcd.get(b"/kept") is not None
                assert await etcd.get(b"/dropped") is None
                nursery.cancel_scope.cancel()
            await etcd.revoke(kept)  # a clean shutdown deregisters at once
            assert await etcd.get(b"/kept") is None
            with pytest.raises(LeaseLost):  # etcd says the lease is gone
                await etcd.keep_alive(kept, 2)
        finally:
            etcd.close()

    run(main)


def test_the_mirror_follows_writes_and_survives_an_etcd_restart(
        etcd_server: EtcdServer) -> None:
    async def main() -> None:
        etcd = Etcd.from_text(etcd_server.endpoint)
        writer = Etcd.from_text(etcd_server.endpoint)
        try:
            await writer.put(b"/m/before", b"0")
            mirror = Mirror(etcd, b"/m/")
            async with trio.open_nursery() as nursery:
                await nursery.start(mirror.run)
                assert set(mirror.entries) == {b"/m/before"}
                seen = mirror.revision
                await writer.put(b"/m/a", b"1")
                await writer.delete(b"/m/before")
                await writer.put(b"/other", b"x")
                with trio.fail_after(5):
                    while set(mirror.entries) != {b"/m/a"}:
                        await mirror.wait_changed(seen)
                        seen = mirror.revision
                # etcd goes away and comes back (its data kept): the mirror catches up.
                await trio.to_thread.run_sync(etcd_server.kill)
                await trio.to_thread.run_sync(etcd_server.start)
                await writer.put(b"/m/after", b"2")
                with trio.fail_after(15):
                    while set(mirror.entries) != {b"/m/a", b"/m/after"}:
                        await mirror.wait_changed(seen)
                        seen = mirror.revision
                assert mirror.entries[b"/m/after"].value == b"2"
                nursery.cancel_scope.cancel()
        finally:
            etcd.close()
            writer.close()

    run(main)


def test_the_mirror_claims_a_revision_only_once_its_copy_reaches_it(
        etcd_server: EtcdServer) -> None:
    # A watch that starts behind the store (the load was a while ago) first answers "created"
    # with the store's revision, then sends the events since: the mirror must not claim that
    # revision before it has applied them (a waiter would read a stale copy, then sleep).
    async def main() -> None:
        etcd = Etcd.from_text(etcd_server.endpoint)
        try:
            loaded_at = await etcd.put(b"/elsewhere", b"0")
            await etcd.put(b"/c/a", b"1")
            await etcd.put(b"/c/b", b"2")
            await etcd.delete(b"/c/a")
            _, last = await etcd.get_prefix(b"/c/")
            mirror = Mirror(etcd, b"/c/")
            mirror.entries, mirror.revision = {}, loaded_at  # as if loaded before the writes
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mirror._follow)
                with trio.fail_after(10):
                    seen = loaded_at
                    while mirror.revision < last:
                        await mirror.wait_changed(seen)
                        seen = mirror.revision
                        if seen >= last:
                            assert set(mirror.entries) == {b"/c/b"}
                nursery.cancel_scope.cancel()
        finally:
            etcd.close()

    run(main)


def test_an_unreachable_etcd_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        etcd = Etcd.from_text(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
        try:
            with trio.fail_after(10), pytest.raises(EtcdUnavailable):
                await etcd.get(b"/x")
        finally:
            etcd.close()

    run(main)


def test_a_second_endpoint_answers_when_the_first_is_down(etcd_server: EtcdServer) -> None:
    async def main() -> None:
        etcd = Etcd.from_text(f"127.0.0.1:{free_port()},{etcd_server.endpoint}")
        try:
            await etcd.put(b"/k", b"v")
            assert (await etcd.get(b"/k")).value == b"v"
        finally:
            etcd.close()

    run(main)


def test_cluster_producer_ids_never_overlap(etcd_server: EtcdServer) -> None:
    """Brokers (and coordinators after a failover) reserve producer-id blocks by
    compare-and-swap: racing allocators hand out disjoint ids, and a new one starts past them."""
    from broker.producer_ids import BLOCK, ClusterProducerIds

    async def main() -> None:
        clients = [Etcd.from_text(etcd_server.endpoint) for _ in range(4)]
        try:
            allocators = [ClusterProducerIds(client) for client in clients[:3]]
            handed: list[int] = []

            async def take(allocator: ClusterProducerIds) -> None:
                for _ in range(BLOCK + 10):  # crosses into a second block
                    handed.append(await allocator.allocate())

            async with trio.open_nursery() as nursery:
                for allocator in allocators:
                    nursery.start_soon(take, allocator)
            assert len(handed) == len(set(handed)) == 3 * (BLOCK + 10)
            later = await ClusterProducerIds(clients[3]).allocate()
            assert later > max(handed)
        finally:
            for client in clients:
                client.close()

    run(main)
