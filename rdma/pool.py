"""The sidecar's buffer pool: slots of one /dev/shm file, who holds them, and who waits.

A read needs a *slot* to land in. The slot is held by an :class:`Account` — one client of the
sidecar: a gRPC connection (every stream and call on it), or the HTTP API — from the moment the
read starts until it is given back: at once for a read that copies its bytes out, or when the
consumer releases it for a zero-copy read, which *lends* the slot under a :class:`Loan`.

The rules, all enforced here:

* **Giving back never waits.** :meth:`BufferPool.give_back`, :meth:`~BufferPool.release`,
  :meth:`~BufferPool.end_scope`, :meth:`~BufferPool.close_account` and
  :meth:`~BufferPool.reap` are synchronous, like ``trio.CapacityLimiter.release``: they are
  safe in a ``finally`` that a cancellation is unwinding, and a freed slot is handed straight
  to the first waiter that may take it (first come, first served).
* **UCX may still write.** A GET whose waiter was cancelled can still be moving bytes into its
  slot. :meth:`~BufferPool.ucx_begin` / :meth:`~BufferPool.ucx_settled` bracket each GET: a slot
  given back while one is pending stops counting against its holder at once, but joins the
  free list only when UCX lets go of it, so nobody ever reads another read's late bytes.
* **Fair shares.** An account holds at most ``share`` slots at once (reads in progress plus
  loans; default half the pool), and ``reserve`` slots (default 1) are kept for HTTP ``/read``:
  gRPC reads never take the last ``reserve`` free slots while HTTP holds fewer than that.
  So one client's never-released loans cannot starve another client or ``/read``.
* **Loans are owned.** A loan belongs to the account that took it and to a *scope* (the gRPC
  stream it was taken on, or the connection itself for a unary ``Read``); it comes back when
  its owner releases it, when the scope or the connection ends, or ``lend_s`` after it was made
  — whichever is first. Only the owning account may release it; handles are 63 random bits, so
  nobody can guess another client's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import outcome
import trio

log = logging.getLogger("kelp.sidecar")

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "kelp-sidecar-"


class ReleaseRefused(Exception):
    """A release that did not give anything back; ``status`` is HTTP's (403: the loan is
    another client's, 404: nothing is lent under that handle)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PoolConfigError(ValueError):
    """Pool sizes that cannot work together (the message names the flags)."""


def resolve_shares(count: int, size: int, share: int | None,
                   reserve: int | None) -> tuple[int, int]:
    """Check the pool's sizes; returns (share, reserve) with the defaults filled in: half the
    buffers per client, one buffer kept for HTTP (none when there is only one)."""
    if count < 1:
        raise PoolConfigError(f"--buffers must be at least 1, not {count}")
    if size < 1:
        raise PoolConfigError(f"--buffer-bytes must be at least 1, not {size}")
    if reserve is None:
        reserve = 1 if count > 1 else 0
    if not 0 <= reserve < count:
        raise PoolConfigError(f"--http-reserve must be in 0..{count - 1} (below --buffers "
                              f"{count}, so gRPC reads keep a buffer), not {reserve}")
    if share is None:
        share = max(1, count // 2)
    if not 1 <= share <= count:
        raise PoolConfigError(f"--client-buffers must be in 1..{count} (--buffers), "
                              f"not {share}")
    return share, reserve


class Account:
    """One client of the pool: a gRPC connection, or the HTTP API.

    ``alive`` (if given) says whether the client is still there; once it says no, the pool's
    :meth:`BufferPool.reap` takes back everything the account has lent.
    """

    def __init__(self, name: str, *, http: bool = False,
                 alive: Callable[[], bool] | None = None) -> None:
        self.name = name
        self.http = http
        self.alive = alive
        self.held = 0  # slots held: reads in progress plus loans
        self.loans: dict[int, Loan] = {}
        self.closed = False

    def __repr__(self) -> str:
        return f"<Account {self.name} held={self.held} lent={len(self.loans)}>"


@dataclass(eq=False)
class Slot:
    index: int
    view: memoryview
    holder: Account | None = None
    loan: Loan | None = None
    ucx_pending: int = 0  # GETs into this slot UCX has not finished with
    orphaned: bool = False  # given back while a GET was pending: free once they settle


@dataclass(eq=False)
class Loan:
    handle: int
    slot: Slot
    account: Account
    scope: object  # the stream (or connection) whose end gives it back
    deadline: float


class BufferPool:
    """``count`` slots of ``size`` bytes in one /dev/shm file (registered with UCX when it is in
    use, so GETs land in them directly), shared fairly between accounts."""

    def __init__(self, count: int, size: int, *, share: int | None = None,
                 reserve: int | None = None, directory: Path = SHM_DIR) -> None:
        share, reserve = resolve_shares(count, size, share, reserve)
        self.count, self.size = count, size
        self.share, self.reserve = share, reserve
        self.path = directory / f"{SHM_PREFIX}{os.getpid()}"
        _sweep_stale_buffers(directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, count * size)
            self.memory = mmap.mmap(fd, count * size)
        finally:
            os.close(fd)
        self._whole = memoryview(self.memory)
        self.slots = [Slot(i, self._whole[i * size:(i + 1) * size]) for i in range(count)]
        self._free: list[Slot] = list(reversed(self.slots))  # pop() hands out slot 0 first
        self._waiters: collections.OrderedDict[Any, Account] = collections.OrderedDict()
        self._loans: dict[int, Loan] = {}
        self._watch = trio.Event()  # set by each loan and account: wakes an idle reaper
        self._accounts: dict[object, Account] = {}
        self.http = Account("http", http=True)
        self.region: Any = None  # rdma.ucx.MemoryRegion once registered
        self.counters = {"buffers_reclaimed": 0,  # loans taken back after --lend-ms
                         "loans_returned_on_close": 0,  # their stream or connection ended
                         "releases_refused": 0,  # another client's handle
                         "releases_unknown": 0}  # nothing lent under that handle

    # -- accounts -----------------------------------------------------------------------------

    def account_for(self, key: object, name: Callable[[], str],
                    alive: Callable[[], bool] | None = None) -> Account:
        """The account of client ``key`` (e.g. a gRPC connection), made (and named by
        ``name()``) on first use."""
        account = self._accounts.get(key)
        if account is None or account.closed:
            account = self._accounts[key] = Account(name(), alive=alive)
            self._watch.set()
        return account

    def existing_account(self, key: object) -> Account | None:
        """Client ``key``'s open account, if it has one (never makes one)."""
        account = self._accounts.get(key)
        return None if account is None or account.closed else account

    def close_account(self, account: Account) -> int:
        """The client went away: take back everything it has lent; returns how many."""
        account.closed = True
        for key in [k for k, a in self._accounts.items() if a is account]:
            del self._accounts[key]
        returned = self._give_back_loans(list(account.loans.values()))
        self.counters["loans_returned_on_close"] += returned
        return returned

    # -- taking and giving back ---------------------------------------------------------------

    def _may_take(self, account: Account) -> bool:
        free = len(self._free)
        if free == 0:
            return False
        if account.http:
            return account.held < max(self.share, self.reserve)
        return account.held < self.share and free > max(0, self.reserve - self.http.held)

    def _take(self, account: Account) -> Slot:
        slot = self._free.pop()
        slot.holder = account
        account.held += 1
        return slot

    def take_now(self, account: Account) -> Slot | None:
        """A slot for ``account`` if :meth:`acquire` would take one without waiting, else
        None (nothing taken)."""
        return self._take(account) if self._may_take(account) else None

    async def acquire(self, account: Account) -> Slot:
        """A slot for ``account``, waiting (first come, first served) while the pool or the
        account's share is exhausted. Cancellable; give the slot back with :meth:`give_back`
        (or lend it) in a ``finally`` that starts right after this returns.

        A slot that is free now is taken without a schedule point (a cancelled caller still
        raises): a read is a few of these steps, and each trip through trio's scheduler costs
        a local reader tens of microseconds. The read itself yields once, at the least."""
        await trio.lowlevel.checkpoint_if_cancelled()
        # After every change _dispatch has served whoever could be served, so a newcomer that
        # may take a slot jumps nobody.
        slot = self.take_now(account)
        if slot is not None:
            return slot
        task = trio.lowlevel.current_task()
        self._waiters[task] = account

        def abort(_: Any) -> trio.lowlevel.Abort:
            del self._waiters[task]
            return trio.lowlevel.Abort.SUCCEEDED

        # _dispatch reschedules us with the slot already ours: once that happened, a
        # cancellation can no longer intervene, so the slot cannot be lost in between.
        slot: Slot = await trio.lowlevel.wait_task_rescheduled(abort)
        return slot

    def _dispatch(self) -> None:
        for task, account in list(self._waiters.items()):
            if not self._free:
                return
            if self._may_take(account):
                del self._waiters[task]
                trio.lowlevel.reschedule(task, outcome.Value(self._take(account)))

    def give_back(self, slot: Slot) -> None:
        """The holder is done with ``slot`` (a loan ends too). Synchronous; idempotent."""
        account = slot.holder
        if account is None:
            return
        slot.holder = None
        account.held -= 1
        loan = slot.loan
        if loan is not None:
            slot.loan = None
            self._loans.pop(loan.handle, None)
            account.loans.pop(loan.handle, None)
        if slot.ucx_pending:
            slot.orphaned = True  # UCX may still write into it: free once it settles
        else:
            self._free.append(slot)
        self._dispatch()

    def ucx_begin(self, slot: Slot) -> None:
        """A GET into ``slot`` is about to be posted."""
        slot.ucx_pending += 1

    def ucx_settled(self, slot: Slot) -> None:
        """UCX is done with one GET into ``slot`` (completed, failed or cancelled)."""
        slot.ucx_pending -= 1
        if slot.ucx_pending == 0 and slot.orphaned:
            slot.orphaned = False
            self._free.append(slot)
            self._dispatch()

    # -- loans --------------------------------------------------------------------------------

    def lend(self, slot: Slot, scope: object, lend_s: float) -> Loan:
        """Lend the held ``slot`` to its holder's consumer, until it is released, ``scope`` ends
        (see :meth:`end_scope`), the account closes, or ``lend_s`` seconds pass."""
        account = slot.holder
        assert account is not None and slot.loan is None, "lend a slot you hold, once"
        handle = secrets.randbits(63)
        while handle == 0 or handle in self._loans:
            handle = secrets.randbits(63)
        loan = Loan(handle, slot, account, scope, trio.current_time() + lend_s)
        slot.loan = self._loans[handle] = account.loans[handle] = loan
        self._watch.set()
        return loan

    @property
    def watching(self) -> bool:
        """Whether :meth:`reap` has anything to look at: loans, or clients that may leave."""
        return bool(self._loans) or any(a.alive is not None for a in self._accounts.values())

    async def wait_watching(self) -> None:
        """Until :attr:`watching` (at once if it is)."""
        while not self.watching:
            await self._watch.wait()
            self._watch = trio.Event()

    def release(self, handle: int, account: Account) -> None:
        """``account`` gives loan ``handle`` back; raises :class:`ReleaseRefused` if nothing is
        lent under it or it is another client's (which then stays lent, bytes untouched)."""
        loan = self._loans.get(handle)
        if loan is None:
            self.counters["releases_unknown"] += 1
            raise ReleaseRefused(404, f"no buffer is lent under handle {handle} (released "
                                 "already, or taken back after --lend-ms or when the stream "
                                 "or connection that took it ended)")
        if loan.account is not account:
            self.counters["releases_refused"] += 1
            raise ReleaseRefused(403, f"handle {handle} is lent to another client; only the "
                                 "connection that took a buffer may release it")
        self.give_back(loan.slot)

    def end_scope(self, account: Account, scope: object) -> int:
        """``scope`` (a stream) ended: take back what was lent on it; returns how many."""
        returned = self._give_back_loans(
            [loan for loan in account.loans.values() if loan.scope is scope])
        self.counters["loans_returned_on_close"] += returned
        return returned

    def _give_back_loans(self, loans: list[Loan]) -> int:
        for loan in loans:
            self.give_back(loan.slot)
        return len(loans)

    def reap(self) -> int:
        """Take back loans past their deadline and everything lent to clients that are gone;
        returns how many loans came back."""
        returned = 0
        for account in list(self._accounts.values()):
            if account.alive is not None and not account.alive():
                returned += self.close_account(account)
        # A read that finished just as its client went away lent to a closed account.
        late = [loan for loan in self._loans.values() if loan.account.closed]
        returned += self._give_back_loans(late)
        self.counters["loans_returned_on_close"] += len(late)
        now = trio.current_time()
        overdue = [loan for loan in self._loans.values() if loan.deadline <= now]
        if overdue:
            log.warning("zero-copy buffers not released in time: taken back",
                        extra={"count": len(overdue),
                               "clients": sorted({loan.account.name for loan in overdue})})
        self.counters["buffers_reclaimed"] += self._give_back_loans(overdue)
        return returned + len(overdue)

    # -- state --------------------------------------------------------------------------------

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def lent(self) -> int:
        return len(self._loans)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def describe(self, account: Account) -> str:
        return (f"{account.name} holds {account.held} of its {self.share} buffers "
                f"(--client-buffers); {len(self._free)} of {self.count} free, "
                f"{self.reserve} kept for HTTP /read")

    def stats(self) -> dict[str, int]:
        return {**self.counters, "buffers": self.count, "buffers_free": len(self._free),
                "buffers_lent": len(self._loans),
                "buffers_ucx_pending": sum(1 for slot in self.slots if slot.orphaned),
                "buffer_waiters": len(self._waiters), "clients": len(self._accounts)}

    def close(self) -> None:
        if self.region is not None:
            self.region.close()
            self.region = None
        for slot in self.slots:
            slot.view.release()
        self._whole.release()
        # A view of a slot can outlive its read (kept by a traceback, or by a GET UCX never
        # finished before its worker closed): then the mapping goes with the process.
        with contextlib.suppress(BufferError):
            self.memory.close()
        self.path.unlink(missing_ok=True)


def _sweep_stale_buffers(directory: Path) -> None:
    """Remove pool files of sidecars that died without cleaning up (SeaweedFS leaked its
    temp files until a cleanup endpoint was called)."""
    for path in directory.glob(f"{SHM_PREFIX}*"):
        pid_text = path.name.removeprefix(SHM_PREFIX)
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's
