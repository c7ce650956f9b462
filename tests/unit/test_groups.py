"""The group coordinator driven directly: rebalances, departures, expiry, static members."""

from __future__ import annotations

import trio
from kio.schema.errors import ErrorCode

from broker.groups import Coordinator, JoinResult, State
from broker.log import LogConfig
from broker.offsets import Committed, OffsetStore


def coordinator(tmp_path, delay: float = 0.0, *, durable: bool = False) -> Coordinator:
    store = OffsetStore(tmp_path / "offsets", LogConfig(compacted=True))
    c = Coordinator(store, initial_rebalance_delay_s=delay,
                    state_dir=tmp_path if durable else None)
    c.load_groups()
    return c


async def join(c: Coordinator, member: str = "", instance: str | None = None,
               protocols=(("range", b"m"),), session_ms: int = 6000) -> JoinResult:
    result = await c.join("g", member, instance, "consumer", list(protocols), session_ms,
                          10_000, True, "client", "127.0.0.1")
    if result.error == ErrorCode.member_id_required:
        result = await c.join("g", result.member_id, instance, "consumer", list(protocols),
                              session_ms, 10_000, True, "client", "127.0.0.1")
    return result


async def test_two_members_rebalance_and_leader_assigns(tmp_path):
    c = coordinator(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        first = await join(c)
        assert first.error == ErrorCode.none and first.leader == first.member_id
        results: dict[str, JoinResult] = {}

        async def rejoin_first() -> None:
            results["first"] = await join(c, first.member_id)

        async def second() -> None:
            results["second"] = await join(c)

        async with trio.open_nursery() as joins:
            joins.start_soon(second)
            await trio.sleep(0.05)
            joins.start_soon(rejoin_first)
        leader, follower = results["first"], results["second"]
        assert leader.generation == follower.generation == first.generation + 1
        assert len(leader.members) == 2 and follower.members == []  # only the leader sees them

        synced: dict[str, bytes] = {}

        async def sync_follower() -> None:
            error, assignment, _, _ = await c.sync("g", follower.generation, follower.member_id,
                                                   None, "consumer", "range", {})
            assert error == ErrorCode.none
            synced["follower"] = assignment

        async with trio.open_nursery() as syncs:
            syncs.start_soon(sync_follower)  # parks until the leader's plan arrives
            await trio.sleep(0.05)
            assert "follower" not in synced
            await c.sync("g", leader.generation, leader.member_id, None, "consumer", "range",
                         {leader.member_id: b"p0", follower.member_id: b"p1"})
        assert synced["follower"] == b"p1" and c.groups["g"].state == State.STABLE

        # The follower leaves: the leader's next heartbeat says rebalance.
        c.leave("g", [(follower.member_id, None)])
        assert c.heartbeat("g", leader.generation, leader.member_id, None) == \
            ErrorCode.rebalance_in_progress
        nursery.cancel_scope.cancel()


async def test_a_silent_member_expires(tmp_path):
    c = coordinator(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        member = await join(c, session_ms=6000)
        c.groups["g"].members[member.member_id].deadline = trio.current_time() + 0.05
        c._poke()
        with trio.fail_after(2):
            while c.groups["g"].members:
                await trio.sleep(0.02)
        assert c.groups["g"].state == State.EMPTY
        nursery.cancel_scope.cancel()


async def test_static_member_returns_without_a_rebalance(tmp_path):
    c = coordinator(tmp_path)
    first = await join(c, instance="pod-1")
    await c.sync("g", first.generation, first.member_id, "pod-1", "consumer", "range",
                 {first.member_id: b"mine"})
    again = await join(c, instance="pod-1")  # restarted: no member id, same instance id
    assert again.error == ErrorCode.none and again.generation == first.generation
    assert again.member_id != first.member_id
    error, assignment, _, _ = await c.sync("g", again.generation, again.member_id, "pod-1",
                                           "", "", {})
    assert (error, assignment) == (ErrorCode.none, b"mine")
    assert c.heartbeat("g", first.generation, first.member_id, "pod-1") == \
        ErrorCode.fenced_instance_id


async def test_commits_survive_a_restart(tmp_path):
    c = coordinator(tmp_path)
    results = await c.commit("g", -1, "", None, {("t", 0): Committed(7, -1, "meta", 1)})
    assert results == {("t", 0): ErrorCode.none}
    c.store.close()
    again = coordinator(tmp_path)
    assert again.fetch_offsets("g", [("t", 0), ("t", 1)]) == {
        ("t", 0): Committed(7, -1, "meta", 1), ("t", 1): None}
    assert again.groups["g"].state == State.EMPTY
    assert await again.delete_group("g") == ErrorCode.none
    assert again.fetch_offsets("g", None) == {}
    again.store.close()


async def test_a_restarted_coordinator_keeps_the_stable_generation(tmp_path):
    """After a broker restart members carry on: the same generation, the same assignments,
    and a newcomer's rebalance still waits for the old members to give theirs up."""
    c = coordinator(tmp_path, durable=True)
    first = await join(c, instance="pod-1")
    await c.sync("g", first.generation, first.member_id, "pod-1", "consumer", "range",
                 {first.member_id: b"all six"})
    c.store.close()
    (tmp_path / "consumer-groups.json").write_text("{}")
    again = coordinator(tmp_path, durable=True)
    group = again.groups["g"]
    assert group.state == State.STABLE and group.generation == first.generation
    assert again.heartbeat("g", first.generation, first.member_id, "pod-1") == ErrorCode.none
    error, assignment, _, _ = await again.sync("g", first.generation, first.member_id, "pod-1",
                                               "", "", {})
    assert (error, assignment) == (ErrorCode.none, b"all six")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(again.run)
            nursery.start_soon(join, again)  # a newcomer parks until the old member rejoins
            await trio.sleep(0.05)
            assert group.state == State.PREPARING
            assert again.heartbeat("g", first.generation, first.member_id, "pod-1") == \
                ErrorCode.rebalance_in_progress
            nursery.cancel_scope.cancel()
    again.store.close()
    (tmp_path / "classic-groups.json").write_text('{"g": {"generation": "x"}, "h": []}')
    damaged = coordinator(tmp_path, durable=True)  # damaged entries skipped, start goes on
    assert damaged.groups == {}
    damaged.store.close()


async def test_an_emptied_group_leaves_the_group_file(tmp_path):
    c = coordinator(tmp_path, durable=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        member = await join(c)
        await c.sync("g", member.generation, member.member_id, None, "consumer", "range",
                     {member.member_id: b"p"})
        assert '"g"' in (tmp_path / "classic-groups.json").read_text()
        c.leave("g", [(member.member_id, None)])
        with trio.fail_after(2):
            while (tmp_path / "classic-groups.json").read_text() != "{}":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    c.store.close()


async def test_a_group_is_capped_at_a_thousand_members(tmp_path):
    c = coordinator(tmp_path, delay=60.0)
    async with trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(join, c)
        await trio.sleep(0.1)
        assert len(c.groups["g"].members) == 1000
        assert (await join(c)).error == ErrorCode.group_max_size_reached
        nursery.cancel_scope.cancel()
    c.store.close()


def test_offsets_replay_skips_records_it_cannot_read(tmp_path, caplog):
    from kelp import records

    store = OffsetStore(tmp_path / "offsets", LogConfig(compacted=True))
    good = records.build_batch([(b'["g","t",0]', b'{"o":5,"e":-1,"m":null,"ts":1}')], 1)
    bad_json = records.build_batch([(b"not json", b"{}"), (b'["g","t",1]', b"[1]")], 1)
    store.log.append(bad_json)
    store.log.append(good)
    # A CRC-valid batch whose gzip body is garbage: written straight to the segment, as a
    # damaged disk or an old bug would leave it.
    poisoned = bytearray(records.build_batch([(b'["g","t",2]', b"{}")], 1))
    poisoned[22] |= 1  # attributes: gzip
    import struct

    import crc32c
    struct.pack_into(">I", poisoned, 17, crc32c.crc32c(bytes(poisoned[21:])))
    struct.pack_into(">q", poisoned, 0, store.log.high_watermark)
    segment = store.log.active
    import os
    os.pwrite(segment.fd, bytes(poisoned), segment.size)
    store.log.close()
    reopened = OffsetStore(tmp_path / "offsets", LogConfig(compacted=True))
    assert reopened.get("g") == {("t", 0): Committed(5, -1, None, 1)}
    assert "skipping unreadable record" in caplog.text
    reopened.close()


def _subscription(*topics: str) -> bytes:
    """Consumer-protocol subscription metadata: version, [topic], user data."""
    out = b"\x00\x01" + len(topics).to_bytes(4, "big")
    for topic in topics:
        out += len(topic).to_bytes(2, "big") + topic.encode()
    return out + b"\xff\xff\xff\xff"


def test_protocol_vote_and_subscribed_topics() -> None:
    from broker.group_state import (
        Group,
        Member,
        choose_protocol,
        common_protocols,
        subscribed_topics,
    )

    def member(name: str, protocols: list[tuple[str, bytes]]) -> Member:
        return Member(name, None, "client", "127.0.0.1", 10.0, 10.0, protocols)

    group = Group("g", state=State.STABLE, protocol_type="consumer")
    group.members = {
        "a": member("a", [("range", _subscription("t1")), ("sticky", b"")]),
        "b": member("b", [("sticky", b""), ("range", _subscription("t2", "t3"))]),
        "c": member("c", [("sticky", b""), ("range", b"garbage")]),
    }
    assert common_protocols(group, [("range", b""), ("other", b"")]) == {"range"}
    assert choose_protocol(group) == "sticky"  # two of three prefer it
    group.protocol_name = "range"
    assert subscribed_topics(group) == {"t1", "t2", "t3"}  # unreadable metadata is skipped
    group.state = State.EMPTY
    assert subscribed_topics(group) == set()
