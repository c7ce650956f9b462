"""kelp.mux: replies reach their waiters, cancelled callers leak nothing, the bound holds."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from kelp.mux import Multiplexed
from kelp.rpc.sidecar import v1 as pb
from tests.unit.cancel_points import cancel_at_every_point, settle


class FakeStream:
    """A client stream whose peer is the test: what was sent, and replies to hand back."""

    def __init__(self) -> None:
        self.sent: list[pb.ReadRequest] = []
        self._replies_in, self._replies = trio.open_memory_channel[pb.ReadReply | None](64)

    def send(self, message: pb.ReadRequest, size: int = 0) -> None:
        self.sent.append(message)

    async def recv(self) -> pb.ReadReply | None:
        return await self._replies.receive()

    def reply(self, request_id: int, **fields: Any) -> None:
        self._replies_in.send_nowait(pb.ReadReply(request_id=request_id, **fields))

    def end(self) -> None:
        self._replies_in.send_nowait(None)


def connected(max_outstanding: int = 8, **kwargs: Any
              ) -> tuple[Multiplexed[pb.ReadRequest, pb.ReadReply], FakeStream]:
    mux: Multiplexed[pb.ReadRequest, pb.ReadReply] = Multiplexed(
        max_outstanding=max_outstanding, **kwargs)
    stream = FakeStream()
    mux.stream = stream  # type: ignore[assignment]
    return mux, stream


async def test_replies_in_any_order_reach_their_callers() -> None:
    mux, stream = connected()
    got: dict[str, int] = {}

    async def read(name: str) -> None:
        reply = await mux.call(pb.ReadRequest(file_id=name))
        got[name] = reply.status

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.deliver_replies, stream)
        for name in ("a", "b", "c"):
            nursery.start_soon(read, name)
        await settle()
        ids = {request.file_id: request.request_id for request in stream.sent}
        assert len(set(ids.values())) == 3 and mux.outstanding == 3
        for name, status in (("c", 416), ("a", 200), ("b", 404)):
            stream.reply(ids[name], status=status)
        await settle()
        assert got == {"a": 200, "b": 404, "c": 416} and mux.outstanding == 0
        stream.end()


async def test_a_call_cancelled_at_every_point_is_forgotten_and_its_reply_unclaimed() -> None:
    unclaimed: list[pb.ReadReply] = []
    answered: list[int] = []
    mux, stream = connected(unclaimed=unclaimed.append)

    async def answer_everything() -> None:  # the peer: answers each request a little later
        answered = 0
        while True:
            await trio.sleep(0.001)
            for request in stream.sent[answered:]:
                if request.size:  # not a cancel
                    stream.reply(request.request_id, status=200)
            answered = len(stream.sent)

    async def read() -> pb.ReadReply:
        return await mux.call(pb.ReadRequest(file_id="x", size=1),
                              cancel=lambda request_id: pb.ReadRequest(request_id=request_id))

    async def check(completed: bool, outcome: Any) -> None:
        assert mux.outstanding == 0  # forgotten at once, not when its reply comes
        sent = len([r for r in stream.sent if r.size])
        cancels = [r.request_id for r in stream.sent if not r.size]
        await trio.sleep(0.01)  # the late replies come
        if isinstance(outcome, pb.ReadReply):  # (the cancel may have come after it did)
            answered.append(outcome.request_id)
        assert outcome is not None or not completed
        # Every reply reached its caller or ``unclaimed``; a caller cancelled before its reply
        # came also cancelled the request at the peer.
        assert len(unclaimed) + len(answered) == sent
        assert set(cancels) <= {reply.request_id for reply in unclaimed}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.deliver_replies, stream)
        nursery.start_soon(answer_everything)
        assert await cancel_at_every_point(read, check, min_points=1) >= 1
        nursery.cancel_scope.cancel()


async def test_a_reply_that_comes_as_its_caller_is_cancelled_is_unclaimed() -> None:
    """Cancelled first, answered in the same step: the caller raises Cancelled with its reply
    already taken off the table, so the reply (a loan, for the mount) must go to
    ``unclaimed`` rather than vanish."""
    unclaimed: list[pb.ReadReply] = []
    mux, stream = connected(unclaimed=unclaimed.append)
    scope = trio.CancelScope()

    async def read() -> None:
        with scope:
            await mux.call(pb.ReadRequest(file_id="x", size=1))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await settle()
        scope.cancel()
        mux.deliver(pb.ReadReply(request_id=stream.sent[0].request_id, status=200))
    assert [reply.request_id for reply in unclaimed] == [stream.sent[0].request_id]
    assert mux.outstanding == 0


async def test_submitted_requests_count_until_answered_and_the_bound_parks_callers() -> None:
    mux, stream = connected(max_outstanding=2)
    waiters = [mux.submit(pb.ReadRequest(file_id=str(n))) for n in range(2)]
    passed: list[int] = []
    scopes = [trio.CancelScope() for _ in range(3)]

    async def wait_then_go(number: int) -> None:
        with scopes[number]:
            await mux.wait_for_room()
            passed.append(number)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.deliver_replies, stream)
        for number in range(3):
            nursery.start_soon(wait_then_go, number)
        await settle()
        assert mux.room.statistics().tasks_waiting == 3
        scopes[0].cancel()
        scopes[2].cancel()
        await settle()
        assert mux.room.statistics().tasks_waiting == 1  # the cancelled ones left the lot
        stream.reply(stream.sent[0].request_id, status=200)
        await settle()
        assert passed == [1]  # one answer, room for one
        assert (await waiters[0].wait()).status == 200 and mux.outstanding == 1
        stream.end()


async def test_a_failed_stream_fails_every_waiter_and_frees_the_bound() -> None:
    mux, _stream = connected(max_outstanding=1)
    errors: list[BaseException] = []
    woke = trio.Event()

    async def read() -> None:
        try:
            await mux.call(pb.ReadRequest(file_id="x"))
        except ConnectionError as exc:
            errors.append(exc)

    async def parked() -> None:
        await mux.wait_for_room()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await settle()
        nursery.start_soon(parked)
        await settle()
        assert not woke.is_set()
        mux.fail(ConnectionError("gone"))
        await settle()
    assert [str(e) for e in errors] == ["gone"] and woke.is_set() and mux.outstanding == 0


async def test_submit_without_a_stream_is_refused() -> None:
    mux: Multiplexed[pb.ReadRequest, pb.ReadReply] = Multiplexed(max_outstanding=1)
    with pytest.raises(trio.ClosedResourceError):
        mux.submit(pb.ReadRequest())
    assert mux.outstanding == 0


# -- serve_each: the server's side ---------------------------------------------------------------

async def test_serve_each_runs_each_request_cancels_by_id_and_refuses_past_its_limit():
    from kelp.mux import serve_each
    from kelp.rpc.broker import v1 as broker_pb

    requests_in, requests = trio.open_memory_channel[broker_pb.ReplicaFetchRequest | None](16)
    release = trio.Event()
    finished: list[int] = []
    cancelled: list[int] = []
    refused: list[int] = []

    async def run(request: broker_pb.ReplicaFetchRequest) -> None:
        try:
            await release.wait()
            finished.append(request.request_id)
        except trio.Cancelled:
            cancelled.append(request.request_id)
            raise

    def send(request_id: int, cancel: bool = False) -> None:
        requests_in.send_nowait(broker_pb.ReplicaFetchRequest(request_id=request_id,
                                                              cancel=cancel))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_each(requests.receive, run, limit=3,
                                              refuse=lambda r: refused.append(r.request_id)))
        for request_id in (1, 2, 3):
            send(request_id)
        send(4)  # a fourth while three run
        send(2)  # an id still running
        send(2, cancel=True)
        send(9, cancel=True)  # no such request: nothing happens
        await trio.testing.wait_all_tasks_blocked()
        assert refused == [4, 2] and cancelled == [2]
        send(5)  # 2's place is free again
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(finished) == [1, 3, 5]
        release = trio.Event()
        send(6)  # parked when the stream ends: cancelled with it
        await trio.testing.wait_all_tasks_blocked()
        requests_in.send_nowait(None)
    assert refused == [4, 2] and cancelled == [2, 6] and sorted(finished) == [1, 3, 5]


async def test_a_reply_delivered_during_the_send_is_returned_without_waiting() -> None:
    """``sent`` runs right after the request is queued (the mount waits for its reply in
    place there): a reply it delivers is the call's answer, with no further wait, even for a
    caller whose scope was cancelled meanwhile (the reply is in: dropping it would lose it)."""
    mux, stream = connected()

    def answer_at_once() -> None:
        (request,) = stream.sent
        mux.deliver(pb.ReadReply(request_id=request.request_id, status=200))

    with trio.CancelScope() as scope:
        scope.cancel()
        reply = await mux.call(pb.ReadRequest(file_id="1,ab", size=1), sent=answer_at_once)
    assert reply.status == 200 and mux.outstanding == 0
