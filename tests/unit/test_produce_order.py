"""An idempotent producer's batches keep their order through a gateway across a leader change
(gateway.produce_order)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from gateway.produce_order import BLOCK_LIFETIME_S, MAX_CHAINS, ProduceOrder, Ticket, producer_of
from kelp import recordbatch, records

OLD, NEW = object(), object()  # two leaders
PID, EPOCH = 7, 0


def admitted(result: Ticket | str) -> Ticket:
    assert isinstance(result, Ticket), result
    return result


def test_batches_to_one_leader_pass_and_leave_no_state() -> None:
    order = ProduceOrder()
    tickets = [admitted(order.admit("t", 0, (PID, EPOCH, seq), OLD, 0.0)) for seq in (0, 3, 6)]
    for ticket in tickets:
        order.finished(ticket, ErrorCode.none, 1.0)
    assert len(order) == 0 and order.refused == 0


def test_a_later_batch_waits_for_the_retry_of_a_failed_one() -> None:
    order = ProduceOrder()
    first = admitted(order.admit("t", 0, (PID, EPOCH, 10), OLD, 0.0))
    second = admitted(order.admit("t", 0, (PID, EPOCH, 13), OLD, 0.0))
    order.finished(first, ErrorCode.not_leader_or_follower, 1.0)   # the leader died
    order.finished(second, ErrorCode.not_leader_or_follower, 1.0)
    # Sent before the client saw the failures: it must not reach the new leader first.
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 16), NEW, 1.1), str)
    # Another partition, or another producer, is not held up.
    admitted(order.admit("t", 1, (PID, EPOCH, 16), NEW, 1.1))
    admitted(order.admit("t", 0, (PID + 1, 0, 0), NEW, 1.1))
    # The client retries in order: the failed batch first, then the rest.
    retry = admitted(order.admit("t", 0, (PID, EPOCH, 10), NEW, 1.2))
    admitted(order.admit("t", 0, (PID, EPOCH, 13), NEW, 1.2))
    admitted(order.admit("t", 0, (PID, EPOCH, 16), NEW, 1.2))
    order.finished(retry, ErrorCode.none, 1.3)


def test_no_batch_overtakes_those_outstanding_at_the_previous_leader() -> None:
    order = ProduceOrder()
    first = admitted(order.admit("t", 0, (PID, EPOCH, 10), OLD, 0.0))
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.1), str)
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 16), NEW, 0.1), str)
    order.finished(first, ErrorCode.none, 0.2)  # the old leader answered after all
    # The refused batch is the one to come again first.
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 16), NEW, 0.3), str)
    admitted(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.3))


def test_the_earliest_failure_is_the_one_to_retry_first() -> None:
    order = ProduceOrder()
    first = admitted(order.admit("t", 0, (PID, EPOCH, 10), OLD, 0.0))
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.1), str)  # blocks at 13
    order.finished(first, ErrorCode.request_timed_out, 0.2)                  # now at 10
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.3), str)
    admitted(order.admit("t", 0, (PID, EPOCH, 10), NEW, 0.3))


def test_sequences_compare_across_the_wrap() -> None:
    order = ProduceOrder()
    late = (1 << 31) - 2
    first = admitted(order.admit("t", 0, (PID, EPOCH, late), OLD, 0.0))
    second = admitted(order.admit("t", 0, (PID, EPOCH, 1), OLD, 0.0))  # after the wrap
    order.finished(second, ErrorCode.not_leader_or_follower, 0.1)
    order.finished(first, ErrorCode.not_leader_or_follower, 0.1)
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 1), NEW, 0.2), str)
    admitted(order.admit("t", 0, (PID, EPOCH, late), NEW, 0.2))


def test_errors_the_client_does_not_retry_do_not_block() -> None:
    order = ProduceOrder()
    first = admitted(order.admit("t", 0, (PID, EPOCH, 10), OLD, 0.0))
    order.finished(first, ErrorCode.message_too_large, 0.1)
    admitted(order.admit("t", 0, (PID, EPOCH, 13), OLD, 0.2))


def test_a_new_epoch_or_time_lifts_a_block() -> None:
    order = ProduceOrder()
    order.not_sent("t", 0, (PID, EPOCH, 10), None, 0.0)  # no leader reachable
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 13), NEW, 1.0), str)
    admitted(order.admit("t", 0, (PID, EPOCH + 1, 0), NEW, 1.0))  # the client bumped its epoch
    order.not_sent("t", 1, (PID, EPOCH, 10), None, 0.0)
    admitted(order.admit("t", 1, (PID, EPOCH, 13), NEW, BLOCK_LIFETIME_S + 1))


def test_chains_per_connection_are_bounded() -> None:
    order = ProduceOrder()
    for partition in range(MAX_CHAINS + 100):
        order.not_sent("t", partition, (PID, EPOCH, 10), None, 0.0)
    assert len(order) == MAX_CHAINS


def test_producer_fields_come_from_the_first_batch_header() -> None:
    batch = bytearray(records.build_batch([(b"k", b"v")], 0))
    assert producer_of(bytes(batch)) is None  # not idempotent: producer id -1
    recordbatch.set_producer(batch, 42, 3, 0)
    batch[recordbatch.BASE_SEQUENCE:recordbatch.BASE_SEQUENCE + 4] = (17).to_bytes(4, "big")
    assert producer_of(bytes(batch)) == (42, 3, 17)
    assert producer_of(bytes(batch[:20])) is None  # malformed: left to the broker


def test_out_of_order_behind_a_failed_batch_is_retried_not_resequenced() -> None:
    """The leader refused the first batch (not leader yet) and then took the second as leader,
    seeing a gap: the client is told to retry the second after the first, not that
    sequences were lost (librdkafka bumps its epoch on that)."""
    order = ProduceOrder()
    first = admitted(order.admit("t", 0, (PID, EPOCH, 10), NEW, 0.0))
    second = admitted(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.0))
    # The second's answer may be handled first: the first is still pending then.
    assert order.finished(second, ErrorCode.out_of_order_sequence_number, 0.1) == \
        ErrorCode.not_leader_or_follower
    assert order.finished(first, ErrorCode.not_leader_or_follower, 0.1) == \
        ErrorCode.not_leader_or_follower
    assert isinstance(order.admit("t", 0, (PID, EPOCH, 13), NEW, 0.2), str)
    admitted(order.admit("t", 0, (PID, EPOCH, 10), NEW, 0.2))
    assert order.reordered == 1


def test_a_first_batch_out_of_order_is_passed_on() -> None:
    order = ProduceOrder()
    only = admitted(order.admit("t", 0, (PID, EPOCH, 10), NEW, 0.0))
    assert order.finished(only, ErrorCode.out_of_order_sequence_number, 0.1) == \
        ErrorCode.out_of_order_sequence_number
