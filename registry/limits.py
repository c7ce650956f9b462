"""What one registry request may cost, and the cheap checks that enforce it before parsing.

Every limit is answered in Confluent's error shape with HTTP 422:

* 42209 (Confluent's SCHEMA_TOO_LARGE): a body, schema text or reference set larger than the
  limits below, parsing and compatibility checking that take longer than ``WORK_TIMEOUT_S``,
  and a schema whose ``_schemas`` record would exceed ``MAX_RECORD_BYTES`` (Confluent answers
  42209 when its producer refuses the record as too large);
* 42201 (INVALID_SCHEMA): a schema text nested deeper than ``MAX_DEPTH``;
* 422 (Confluent's code for a request body it cannot map): a request body nested deeper than
  ``MAX_DEPTH``.

The sizes leave room above what the registry can store at all: a registered schema travels as
one record of ``_schemas``, and the broker's default ``max.message.bytes`` (1 MiB, Kafka's too)
bounds it; Confluent's registry is bound the same way by its producer's ``max.request.size``.

Nesting is measured on the *text*, by a scan of brackets outside strings, before ``json.loads``
(whose C parser recurses once per level) can see it, so a deep document is refused without any
recursion. The scan runs at C speed (two regular-expression passes), ~30 ns a character.

Parsing and comparing schemas run in worker threads (see ``work.py``). Python cannot stop a
thread, so the parsers stop themselves: their loops call :func:`checkpoint`, which raises
:class:`WorkStopped` once the request's time budget is spent or the request was cancelled (its
client went away, the handler timed out, the gateway is shutting down).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

from registry.errors import RegistryError

MAX_BODY_BYTES = 4 * 1024 * 1024  # an HTTP request body to the registry
MAX_SCHEMA_BYTES = 2 * 1024 * 1024  # one schema text (UTF-8)
MAX_TOTAL_BYTES = 8 * 1024 * 1024  # a schema plus everything it references, transitively
MAX_DEPTH = 64  # JSON nesting of a body or schema; brace nesting of a .proto text
# Elements of a schema plus its references: JSON objects, arrays and commas (one per member or
# item after the first), or for .proto text braces and semicolons (a message, enum or field).
MAX_NODES = 200_000
MAX_REFERENCES = 256  # schemas one schema references, transitively
# A registered schema's record in _schemas (key plus value): the broker's default
# max.message.bytes (1 MiB + 12) less room for the batch and record headers.
MAX_RECORD_BYTES = 1024 * 1024 - 1024
WORK_TIMEOUT_S = 20.0  # parsing and compatibility checking for one request, in total

TOO_LARGE = 42209
INVALID_SCHEMA = 42201
UNPROCESSABLE = 422


# --- shapes ------------------------------------------------------------------------------------

# A JSON string (to its closing quote, or to the end of the text if it has none: json.loads
# reads no further either) or a run of characters that are neither brackets, commas nor quotes.
_JSON_NOISE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^\[\]{}",]+', re.DOTALL)
# Likewise for .proto source: strings (either quote; they end at a newline), comments, and runs
# of everything else but braces and semicolons. An unterminated block comment runs to the end.
_PROTO_NOISE = re.compile(
    r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"?'
    r"|'[^'\\\n]*(?:\\.[^'\\\n]*)*'?"
    r"|//[^\n]*"
    r"|/\*[^*]*(?:\*(?!/)[^*]*)*(?:\*/)?"
    r"|[^{}\"';/]+"
    r"|/",
    re.DOTALL,
)
_JSON_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_PROTO_STEPS = bytes.maketrans(b"{}", b"\x01\xff")


@dataclass(frozen=True)
class Shape:
    """What a scan of a text found: how deep its brackets nest and how many elements it has."""

    depth: int
    nodes: int


def _depth(brackets: str, steps: bytes) -> int:
    """The deepest nesting in a string of only opening and closing brackets: exact when they
    balance; when they do not, never smaller than what a parser reaches (it stops at the first
    stray closer, the running count does not)."""
    return max(accumulate(array("b", brackets.encode("ascii").translate(steps))), default=0)


def json_shape(text: str) -> Shape:
    """Nesting depth and element count of JSON text, without parsing it (valid or not)."""
    skeleton = _JSON_NOISE.sub("", text)
    commas = skeleton.count(",")
    brackets = skeleton.replace(",", "") if commas else skeleton
    openers = brackets.count("[") + brackets.count("{")
    return Shape(_depth(brackets, _JSON_STEPS), openers + commas)


def proto_shape(text: str) -> Shape:
    """Brace nesting and declaration count (braces plus semicolons) of ``.proto`` source."""
    skeleton = _PROTO_NOISE.sub("", text)
    semicolons = skeleton.count(";")
    braces = skeleton.replace(";", "") if semicolons else skeleton
    openers = braces.count("{")
    return Shape(_depth(braces, _PROTO_STEPS), openers + semicolons)


def check_body_size(size: int) -> None:
    if size > MAX_BODY_BYTES:
        raise RegistryError(TOO_LARGE, f"Request body too large: {size} bytes, the limit is "
                            f"{MAX_BODY_BYTES} bytes")


def check_body(text: str) -> None:
    """Refuse a (decoded) request body that nests too deeply to hand to ``json.loads``."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # it cannot nest deeper than it opens: no scan needed (most requests)
    depth = json_shape(text).depth
    if depth > MAX_DEPTH:
        raise RegistryError(UNPROCESSABLE, f"Unprocessable request body: JSON nested "
                            f"{depth} levels deep, the limit is {MAX_DEPTH}")


def text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_schema_text(text: str, shape: Shape, what: str = "the schema") -> None:
    """Refuse one schema text by its size and shape (``shape`` from :func:`json_shape` or
    :func:`proto_shape`)."""
    size = text_bytes(text)
    if size > MAX_SCHEMA_BYTES:
        raise RegistryError(TOO_LARGE, f"Schema too large: {what} has {size} bytes, the limit "
                            f"is {MAX_SCHEMA_BYTES}")
    if shape.depth > MAX_DEPTH:
        raise RegistryError(INVALID_SCHEMA, f"Invalid schema: {what} is nested {shape.depth} "
                            f"levels deep, the limit is {MAX_DEPTH}")
    if shape.nodes > MAX_NODES:
        raise RegistryError(TOO_LARGE, f"Schema too large: {what} has {shape.nodes} elements "
                            f"(fields, types, values), the limit is {MAX_NODES}")


# --- time ------------------------------------------------------------------------------------


class WorkStopped(BaseException):
    """Raised by :func:`checkpoint` in a worker whose budget is spent or that was cancelled.

    A BaseException, so that no ``except Exception`` on the way (ours or a library's) turns it
    into an ordinary error and carries on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "timeout" or "cancelled"


class Budget:
    """A deadline plus a stop flag, shared by one request's worker and its trio task."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def check(self) -> None:
        if self._stopped.is_set():
            raise WorkStopped("cancelled")
        if time.monotonic() > self.deadline:
            raise WorkStopped("timeout")

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this the budget :func:`checkpoint` checks, in this thread."""
        token = _current.set(self)
        try:
            self.check()
            yield
        finally:
            _current.reset(token)


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "registry_budget", default=None)


def checkpoint() -> None:
    """Stop here if the current request's budget is spent or it was cancelled.

    Called from every loop of the parsers and compatibility checkers whose length the input
    controls; costs ~0.1 µs. Outside a worker (tests, tools) there is no budget: a no-op."""
    budget = _current.get()
    if budget is not None:
        budget.check()


def too_slow(seconds: float, what: str) -> RegistryError:
    return RegistryError(TOO_LARGE, f"Schema too large: {what} did not finish within the "
                         f"limit of {seconds:g} s")
