"""A group whose protocol type is not "consumer" passes through the coordinator untouched.

Schema Registry (and Karapace) elect a leader with a JoinGroup of protocol type ``sr`` whose
metadata is their own JSON. Here two raw members (requests encoded by kio, each on its own
connection, both with the same client id) join such a group at several version sets: the leader
must receive both members' metadata byte-exact, and SyncGroup must hand each member exactly the
bytes the leader chose for it — also to a follower that asked before the leader had answered.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import struct
import sys
import threading
import time
import uuid

import pytest
from kio.index import load_request_schema
from kio.schema.errors import ErrorCode

from tests.kafka_raw import RawClient
from tests.kelp_procs import Cluster

JOIN, SYNC, HEARTBEAT, LEAVE, DESCRIBE, LIST, API_VERSIONS = 11, 14, 12, 13, 15, 16, 18
APIS = (JOIN, SYNC, HEARTBEAT, LEAVE, DESCRIBE, LIST)
PROTOCOL_TYPE, PROTOCOL_NAME = "sr", "v0"
SESSION = datetime.timedelta(seconds=10)
REBALANCE = datetime.timedelta(seconds=10)
LEADER_SYNC_DELAY_S = 0.5
WAIT_S = 30.0

# (JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DescribeGroups, ListGroups); None = the newest
# version both the gateway advertises and kio knows.
VERSION_SETS = [
    pytest.param((0, 0, 0, 0, 0, 0), id="v0"),
    pytest.param((5, 3, 3, 1, 4, 3), id="librdkafka-aiokafka"),
    pytest.param((7, 5, 4, 5, 5, 4), id="kafka-python"),
    pytest.param((None,) * 6, id="newest"),
]
KIO_MAX = {JOIN: 9, SYNC: 5, HEARTBEAT: 4, LEAVE: 5, DESCRIBE: 6, LIST: 5}




def mk(entity_type: type, **fields: object) -> object:
    names = {f.name for f in dataclasses.fields(entity_type)}
    return entity_type(**{k: v for k, v in fields.items() if k in names})


def nested(entity_type: type, name: str) -> type:
    return getattr(sys.modules[entity_type.__module__], name)


def advertised(bootstrap: str) -> dict[int, tuple[int, int]]:
    client = RawClient(bootstrap)
    try:
        response = client.request(load_request_schema(API_VERSIONS, 0)())
    finally:
        client.close()
    return {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}


def assignment_for(metadata: bytes) -> bytes:
    """What the leader hands a member: derived from the metadata the leader received."""
    return b"\x00\xffassigned:" + metadata[::-1]


class RawMember(threading.Thread):
    def __init__(self, bootstrap: str, group: str, versions: dict[int, int], metadata: bytes,
                 ) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(bootstrap, timeout=REBALANCE.total_seconds() + 10)
        self.group, self.v, self.metadata = group, versions, metadata
        self.member_id = ""
        self.done = threading.Event()
        self.error: str | None = None
        self.joins: list[object] = []          # every JoinGroup response, in order
        self.led: dict[int, dict[str, bytes]] = {}   # generation -> members the leader saw
        self.synced: tuple[int, bytes, object, float] | None = None  # gen, bytes, resp, took

    def request(self, api: int, **fields: object) -> object:
        return self.client.request(mk(load_request_schema(api, self.v[api]), **fields))

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _loop(self) -> None:
        join_type = load_request_schema(JOIN, self.v[JOIN])
        protocol = mk(nested(join_type, "JoinGroupRequestProtocol"), name=PROTOCOL_NAME,
                      metadata=self.metadata)
        deadline = time.monotonic() + WAIT_S
        while not self.done.is_set():
            assert time.monotonic() < deadline, "no stable generation in time"
            join = self.request(JOIN, group_id=self.group, session_timeout=SESSION,
                                rebalance_timeout=REBALANCE, member_id=self.member_id,
                                group_instance_id=None, protocol_type=PROTOCOL_TYPE,
                                protocols=(protocol,), reason="test")
            self.joins.append(join)
            if join.error_code == ErrorCode.member_id_required:
                self.member_id = join.member_id
                continue
            assert join.error_code == ErrorCode.none, join
            self.member_id = join.member_id
            generation = join.generation_id
            sync_type = load_request_schema(SYNC, self.v[SYNC])
            assignments: tuple = ()
            if join.leader == self.member_id:
                seen = {m.member_id: m.metadata for m in join.members}
                self.led[generation] = seen
                assignments = tuple(
                    mk(nested(sync_type, "SyncGroupRequestAssignment"), member_id=member_id,
                       assignment=assignment_for(metadata))
                    for member_id, metadata in seen.items())
                time.sleep(LEADER_SYNC_DELAY_S)  # followers' SyncGroups must park meanwhile
            started = time.monotonic()
            sync = self.request(SYNC, group_id=self.group, generation_id=generation,
                                member_id=self.member_id, group_instance_id=None,
                                protocol_type=PROTOCOL_TYPE, protocol_name=PROTOCOL_NAME,
                                assignments=assignments)
            if sync.error_code == ErrorCode.rebalance_in_progress:
                continue
            assert sync.error_code == ErrorCode.none, sync
            self.synced = (generation, sync.assignment, sync, time.monotonic() - started)
            while not self.done.wait(0.2):
                beat = self.request(HEARTBEAT, group_id=self.group, generation_id=generation,
                                    member_id=self.member_id, group_instance_id=None)
                if beat.error_code == ErrorCode.rebalance_in_progress:
                    break
                assert beat.error_code == ErrorCode.none, beat

    def leave(self) -> None:
        response = self.request(LEAVE, group_id=self.group, member_id=self.member_id)
        assert response.error_code == ErrorCode.none, response


def describe(client: RawClient, version: int, group: str) -> object:
    request_type = load_request_schema(DESCRIBE, version)
    (found,) = client.request(mk(request_type, groups=(group,),
                                 include_authorized_operations=False)).groups
    assert found.error_code == ErrorCode.none, found
    return found


@pytest.mark.parametrize("chosen", VERSION_SETS)
def test_sr_protocol_type_passes_through(group_cluster: Cluster, chosen: tuple) -> None:
    bootstrap = group_cluster.bootstrap
    ranges = advertised(bootstrap)
    versions = {}
    for api, version in zip(APIS, chosen, strict=True):
        assert api in ranges, f"API {api} is not advertised"
        low, high = ranges[api]
        versions[api] = min(high, KIO_MAX[api]) if version is None else version
        assert low <= versions[api] <= high, \
            f"API {api} v{versions[api]} outside the advertised {ranges[api]}"

    group = f"sr-{uuid.uuid4().hex[:10]}"
    metadatas = [json.dumps({"host": f"registry-{i}", "port": 8081, "master_eligibility": True,
                             "scheme": "http", "version": 2}).encode() + b"\x00\xff" +
                 os.urandom(32) for i in range(2)]
    members = [RawMember(bootstrap, group, versions, metadata) for metadata in metadatas]
    observer = RawClient(bootstrap)
    try:
        for member in members:
            member.start()

        def settled() -> tuple[int, RawMember] | None:
            for member in members:
                assert member.error is None, member.error
            synced = [m.synced for m in members]
            if None in synced or len({s[0] for s in synced}) != 1:
                return None
            generation = synced[0][0]
            leaders = [m for m in members if len(m.led.get(generation, {})) == 2]
            return (generation, leaders[0]) if leaders else None

        deadline = time.monotonic() + WAIT_S
        while (found := settled()) is None:
            assert time.monotonic() < deadline, (
                f"no common generation: synced={[m.synced and m.synced[:2] for m in members]}"
                f" joins={[m.joins[-1:] for m in members]}")
            time.sleep(0.05)
        generation, leader = found
        follower = next(m for m in members if m is not leader)

        # KIP-394: v4+ first answers MEMBER_ID_REQUIRED with the id to use; older versions not
        for member in members:
            first = member.joins[0]
            if versions[JOIN] >= 4:
                assert first.error_code == ErrorCode.member_id_required, first
                assert first.member_id and first.member_id == member.member_id
            else:
                assert first.error_code != ErrorCode.member_id_required, first
        assert leader.member_id != follower.member_id  # same client id, distinct members

        # the leader saw every member's metadata byte for byte; the follower saw no members
        assert leader.led[generation] == {m.member_id: m.metadata for m in members}
        final_follower_join = follower.joins[-1]
        assert final_follower_join.generation_id == generation
        assert final_follower_join.leader == leader.member_id
        assert list(final_follower_join.members) == []
        for member in members:
            join = member.joins[-1]
            assert join.protocol_name == PROTOCOL_NAME
            if versions[JOIN] >= 7:
                assert join.protocol_type == PROTOCOL_TYPE

        # SyncGroup handed each member exactly what the leader sent (the follower had parked)
        for member in members:
            _gen, assignment, sync, _took = member.synced
            assert assignment == assignment_for(member.metadata), (member is leader, sync)
            if versions[SYNC] >= 5:
                assert (sync.protocol_type, sync.protocol_name) == (PROTOCOL_TYPE,
                                                                    PROTOCOL_NAME)
        print(f"\nfollower SyncGroup v{versions[SYNC]} parked {follower.synced[3]:.3f} s "
              f"for the leader's assignment")

        # DescribeGroups and ListGroups show the group as it is
        described = describe(observer, versions[DESCRIBE], group)
        assert (described.group_state, described.protocol_type, described.protocol_data) == (
            "Stable", PROTOCOL_TYPE, PROTOCOL_NAME)
        assert {m.member_id: (m.member_metadata, m.member_assignment, m.client_id)
                for m in described.members} == {
            m.member_id: (m.metadata, assignment_for(m.metadata), "raw-test") for m in members}
        list_type = load_request_schema(LIST, versions[LIST])
        listing = observer.request(mk(list_type, states_filter=(), types_filter=()))
        assert listing.error_code == ErrorCode.none
        assert (group, PROTOCOL_TYPE) in {(g.group_id, g.protocol_type) for g in listing.groups}

        # leave: LeaveGroup v3+ removes both members in one request
        for member in members:
            member.done.set()
        for member in members:
            member.join(REBALANCE.total_seconds() + 10)
            assert not member.is_alive()
            assert member.error is None, member.error
        if versions[LEAVE] >= 3:
            leave_type = load_request_schema(LEAVE, versions[LEAVE])
            identity = nested(leave_type, "MemberIdentity")
            response = observer.request(mk(leave_type, group_id=group, members=tuple(
                mk(identity, member_id=m.member_id, group_instance_id=None, reason="done")
                for m in members)))
            assert response.error_code == ErrorCode.none, response
            assert {(r.member_id, r.error_code) for r in response.members} == {
                (m.member_id, ErrorCode.none) for m in members}
        else:
            for member in members:
                member.leave()
        empty = describe(observer, versions[DESCRIBE], group)
        assert (empty.group_state, list(empty.members)) == ("Empty", [])
    finally:
        for member in members:
            member.done.set()
        for member in members:
            if member.is_alive():
                member.join(REBALANCE.total_seconds() + 10)
            member.client.close()
        observer.close()


def test_unknown_member_and_stale_generation_are_refused(group_cluster: Cluster) -> None:
    """Heartbeat/SyncGroup from a member the group does not know, or from an old generation."""
    bootstrap = group_cluster.bootstrap
    group = f"sr-{uuid.uuid4().hex[:10]}"
    versions = {JOIN: 5, SYNC: 3, HEARTBEAT: 3, LEAVE: 1, DESCRIBE: 4, LIST: 3}
    member = RawMember(bootstrap, group, versions, b"only")
    try:
        member.start()
        deadline = time.monotonic() + WAIT_S
        while member.synced is None:
            assert member.error is None, member.error
            assert time.monotonic() < deadline, member.joins
            time.sleep(0.05)
        generation = member.synced[0]
        other = RawClient(bootstrap)  # the member's own connection is busy heartbeating
        try:
            heartbeat_type = load_request_schema(HEARTBEAT, 3)
            unknown = other.request(mk(heartbeat_type, group_id=group, generation_id=generation,
                                       member_id="nobody", group_instance_id=None))
            assert unknown.error_code == ErrorCode.unknown_member_id, unknown
            stale = other.request(mk(heartbeat_type, group_id=group,
                                     generation_id=generation - 1,
                                     member_id=member.member_id, group_instance_id=None))
            assert stale.error_code == ErrorCode.illegal_generation, stale
        finally:
            other.close()
    finally:
        member.done.set()
        member.join(REBALANCE.total_seconds() + 10)
        member.client.close()


def test_a_member_whose_connection_is_reset_does_not_stop_the_gateway(
        group_cluster: Cluster) -> None:
    """A consumer that crashes mid-group (its socket reset, as the kernel does for a killed
    process with unread data) must leave the gateway, and the rest of its group, running."""
    bootstrap = group_cluster.bootstrap
    group = f"sr-{uuid.uuid4().hex[:10]}"
    versions = {JOIN: 5, SYNC: 3, HEARTBEAT: 3, LEAVE: 1, DESCRIBE: 4, LIST: 3}
    survivor = RawMember(bootstrap, group, versions, b"survivor")
    crashed = RawClient(bootstrap)
    try:
        survivor.start()
        deadline = time.monotonic() + WAIT_S
        while survivor.synced is None:
            assert survivor.error is None, survivor.error
            assert time.monotonic() < deadline, survivor.joins
            time.sleep(0.05)
        # the crashing client: asks for something, then resets without reading the answer
        crashed.send(mk(load_request_schema(API_VERSIONS, 0)))
        time.sleep(0.2)
        crashed.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        crashed.close()
        time.sleep(1.0)
        assert group_cluster.gateway.popen.poll() is None, (
            "the gateway exited after one client reset its connection:\n"
            + group_cluster.gateway.log_text()[-3000:])
        assert advertised(bootstrap)  # new connections are served
        assert survivor.error is None, survivor.error  # its heartbeats still succeed
    finally:
        survivor.done.set()
        survivor.join(REBALANCE.total_seconds() + 10)
        survivor.client.close()
        crashed.close()
