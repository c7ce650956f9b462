"""The registry's limits (registry.limits, work, the cache in core): the bracket scan
against real JSON nesting, the size/element/depth refusals and their Confluent codes, the time
budget that stops a parse in its worker, and the HTTP server's answer to an oversized body."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from typing import Any

import pytest
import trio
from google.protobuf import descriptor_pb2 as dpb
from hypothesis import given, settings
from hypothesis import strategies as st

from kelp import httpd
from registry import core, limits, protobuf
from registry.errors import RegistryError
from registry.limits import Budget, WorkStopped, check_body, json_shape, proto_shape
from registry.schema import SchemaError, SchemaTooLarge
from registry.state import RegistryState, SchemaVersion, schema_record
from registry.work import Workers

pytestmark = pytest.mark.timeout(120)


def true_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((true_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((true_depth(v) for v in value.values()), default=0)
    return 0


def elements(value: Any) -> int:
    """Containers plus separators: what json_shape counts as nodes."""
    if isinstance(value, list):
        return 1 + max(len(value) - 1, 0) + sum(elements(v) for v in value)
    if isinstance(value, dict):
        return 1 + max(len(value) - 1, 0) + sum(elements(v) for v in value.values())
    return 0


# Strings full of what the scan must not count: brackets, commas, quotes and backslashes.
tricky_text = st.text(alphabet='[]{},"\\ab \n\u00e9\U0001f600', max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=60)


# --- the scan ------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(value=json_values, indent=st.sampled_from([None, 0, 2]),
       ascii_only=st.booleans())
def test_shape_of_json_matches_the_decoded_value(value: Any, indent: Any,
                                                 ascii_only: bool) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    shape = json_shape(text)
    assert shape.depth == true_depth(value)
    assert shape.nodes == elements(value)


@settings(max_examples=200, deadline=None)
@given(depth=st.integers(0, 400), wrap=st.lists(st.sampled_from(["list", "dict"]),
                                                 min_size=1, max_size=3))
def test_deep_nesting_is_measured_exactly(depth: int, wrap: list[str]) -> None:
    value: Any = "x"
    for i in range(depth):
        value = [value] if wrap[i % len(wrap)] == "list" else {"k[": value}
    assert json_shape(json.dumps(value)).depth == depth
    if depth > limits.MAX_DEPTH:
        with pytest.raises(RegistryError) as caught:
            check_body(json.dumps(value))
        assert (caught.value.status, caught.value.code) == (422, 422)
    else:
        check_body(json.dumps(value))


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet='[]{},"\\: 1a', max_size=60))
def test_shape_never_underestimates_what_json_loads_reaches(text: str) -> None:
    """Any text at all, valid or not: what decodes is never deeper than the scan says."""
    try:
        value = json.loads(text)
    except ValueError:
        return
    assert json_shape(text).depth >= true_depth(value)


def test_unterminated_string_hides_the_rest() -> None:
    # json.loads reads nothing after an unterminated string; neither does the scan.
    assert json_shape('["abc' + "[" * 1000).depth == 1
    assert json_shape('["a\\"[[[", [[]]]').depth == 3


def test_hundred_thousand_levels_refused_quickly_without_recursion() -> None:
    depth = 100_000
    for text in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth,
                 "[" * depth):  # unbalanced: json.loads would still recurse all the way
        started = time.perf_counter()
        with pytest.raises(RegistryError) as caught:
            check_body(text)
        assert time.perf_counter() - started < 0.5
        assert caught.value.code == 422
        assert str(depth) in caught.value.message


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"schema": "[" * 10_000, "other": "{" * 10_000})
    check_body(text)
    assert json_shape(text) == limits.Shape(depth=1, nodes=2)


def test_proto_shape_skips_strings_and_comments() -> None:
    text = '''syntax = "proto3"; // {{{{ not counted
    /* {{{{ nor this ; */
    message A { string s = 1 [json_name = "{{;"]; message B { int32 x = 1; } }
    '''
    assert proto_shape(text) == limits.Shape(depth=2, nodes=2 + 3)  # { and ;
    assert proto_shape("message M {" * 100).depth == 100
    assert proto_shape("/* unterminated {{{{").depth == 0


# --- size, elements, depth of schema texts ---------------------------------------------------


def _wide_avro(fields: int) -> str:
    return json.dumps({"type": "record", "name": "Wide", "fields": [
        {"name": f"f{i}", "type": "string"} for i in range(fields)]})


def _parse_job(text: str, schema_type: str = "AVRO",
               refs: list[tuple[str, str]] | None = None) -> core.ParseJob:
    return core.ParseJob((schema_type, text, ()), refs or [])


def test_the_issue_schema_is_refused_in_well_under_a_second() -> None:
    text = _wide_avro(300_000)  # 12 MB, 300 000 fields
    started = time.perf_counter()
    with pytest.raises(RegistryError) as caught:
        core.request_schema(RegistryState(), {"schema": text})
    assert time.perf_counter() - started < 0.1
    assert (caught.value.status, caught.value.code) == (422, limits.TOO_LARGE)
    # The worker checks again (texts of references arrive there too).
    started = time.perf_counter()
    with pytest.raises(RegistryError) as caught:
        _parse_job(text).run()
    assert time.perf_counter() - started < 1
    assert caught.value.code == limits.TOO_LARGE


@pytest.mark.parametrize("text, code, words", [
    pytest.param(json.dumps({"type": "record", "name": "R", "fields": [
        {"name": f"f{i}", "type": ["null", "int"]} for i in range(45_000)]},
        separators=(",", ":")), limits.TOO_LARGE, "elements", id="elements"),
    pytest.param("[" * 65 + "]" * 65, limits.INVALID_SCHEMA, "nested 65 levels", id="depth"),
    pytest.param('"int"' + " " * (limits.MAX_SCHEMA_BYTES + 1), limits.TOO_LARGE, "bytes",
                 id="bytes"),
])
def test_schema_text_limits(text: str, code: int, words: str) -> None:
    started = time.perf_counter()
    with pytest.raises(RegistryError) as caught:
        _parse_job(text).run()
    assert time.perf_counter() - started < 1
    assert (caught.value.status, caught.value.code) == (422, code)
    assert words in caught.value.message


def test_references_count_toward_the_element_limit() -> None:
    half = json.dumps({"type": "enum", "name": "E", "symbols": [
        f"S{i}" for i in range(limits.MAX_NODES // 2 + 10)]})
    with pytest.raises(RegistryError) as caught:
        _parse_job(half.replace('"E"', '"F"'), refs=[("E", half)]).run()
    assert caught.value.code == limits.TOO_LARGE
    assert "with its references" in caught.value.message


def test_nesting_of_64_still_parses() -> None:
    schema: Any = "int"
    for _ in range(limits.MAX_DEPTH // 2 - 1):  # each array level is two JSON levels
        schema = {"type": "array", "items": schema}
    parsed = _parse_job(json.dumps(schema)).run()
    assert json_shape(parsed.canonical).depth <= limits.MAX_DEPTH


def test_protobuf_descriptor_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    fdp = dpb.FileDescriptorProto(name="deep.proto", syntax="proto3")
    message = fdp.message_type.add(name="M0")
    for i in range(1, limits.MAX_DEPTH + 2):
        message = message.nested_type.add(name=f"M{i}")
    text = base64.b64encode(fdp.SerializeToString()).decode()
    with pytest.raises(SchemaError, match="nested deeper"):
        protobuf.parse(text, [])
    wide = dpb.FileDescriptorProto(name="wide.proto", syntax="proto3")
    message = wide.message_type.add(name="W")
    for i in range(1, 50):
        message.field.add(name=f"f{i}", number=i, type=dpb.FieldDescriptorProto.TYPE_INT32)
    monkeypatch.setattr(limits, "MAX_NODES", 20)
    with pytest.raises(SchemaTooLarge):
        protobuf.parse(base64.b64encode(wide.SerializeToString()).decode(), [])


def test_a_schema_too_large_for_its_record_is_refused_as_confluent_does() -> None:
    state, cache = RegistryState(), core.ParsedCache()
    body = {"schema": _wide_avro(40_000)}  # under the text limit, over one _schemas record
    with pytest.raises(core.NotReady) as need:
        core.plan_registration(state, cache, "s", body, normalize=False)
    cache.store(need.value.job, need.value.job.run())
    with pytest.raises(RegistryError) as caught:
        core.plan_registration(state, cache, "s", body, normalize=False)
    assert caught.value.code == limits.TOO_LARGE
    assert "schema is too large" in caught.value.message
    small = {"schema": _wide_avro(10)}
    with pytest.raises(core.NotReady) as need:
        core.plan_registration(state, cache, "s", small, normalize=False)
    cache.store(need.value.job, need.value.job.run())
    assert core.plan_registration(state, cache, "s", small, normalize=False).records


# --- the event loop only reads the cache -----------------------------------------------------


def test_cache_misses_ask_for_work_and_hits_do_not() -> None:
    state, cache = RegistryState(), core.ParsedCache()
    old = SchemaVersion("s", 1, 1, "AVRO", _wide_avro(2), ())
    state.apply(0, *schema_record(old))
    body = {"schema": _wide_avro(3)}
    jobs = []
    while True:
        try:
            answer = core.compatibility_messages(
                "BACKWARD", cache.parse(state, "AVRO", body["schema"], ()).schema,
                [cache.of(state, old).schema], cache.compatibility_errors)
            break
        except core.NotReady as need:
            jobs.append(type(need.job).__name__)
            cache.store(need.job, need.job.run())
    assert jobs == ["ParseJob", "ParseJob", "CompatibilityJob"]
    assert len(answer) == 1 and "'f2' has no default" in answer[0]
    # Everything cached now: no more work.
    assert core.lookup(state, cache, "s", {"schema": _wide_avro(2)}, deleted=False,
                       normalize=False).version == 1


# --- the time budget -------------------------------------------------------------------------


def _exponential_defaults(levels: int = 12, width: int = 10) -> str:
    record: dict[str, Any] = {"type": "record", "name": "T0", "fields": [
        {"name": "x", "type": "int", "default": 0}]}
    for level in range(1, levels + 1):
        fields = [{"name": "f0", "type": record, "default": {}}]
        fields += [{"name": f"f{j}", "type": f"T{level - 1}", "default": {}}
                   for j in range(1, width)]
        record = {"type": "record", "name": f"T{level}", "fields": fields}
    return json.dumps(record)


def test_budget_stops_a_costly_parse_at_its_deadline() -> None:
    budget = Budget(0.3)
    started = time.perf_counter()
    with pytest.raises(WorkStopped) as caught, budget.active():
        _parse_job(_exponential_defaults()).run()
    assert caught.value.reason == "timeout"
    assert time.perf_counter() - started < 0.5


def test_budget_stop_from_another_thread_ends_the_parse() -> None:
    budget = Budget(60)
    outcome: list[BaseException] = []

    def parse() -> None:
        try:
            with budget.active():
                _parse_job(_exponential_defaults()).run()
        except WorkStopped as exc:
            outcome.append(exc)

    thread = threading.Thread(target=parse)
    thread.start()
    time.sleep(0.2)
    stopped = time.perf_counter()
    budget.stop()
    thread.join(2)
    assert not thread.is_alive()
    assert time.perf_counter() - stopped < 0.2
    assert [e.reason for e in outcome] == ["cancelled"]  # type: ignore[attr-defined]


def test_checkpoint_is_a_no_op_outside_a_worker() -> None:
    limits.checkpoint()


async def test_cancelled_request_leaves_no_thread_running() -> None:
    workers = Workers()
    running = threading.Event()
    finished = threading.Event()

    def forever() -> None:
        running.set()
        try:
            while True:
                limits.checkpoint()
        finally:
            finished.set()

    with trio.move_on_after(0.3) as scope:
        await workers.run(Budget(60), forever)
    assert scope.cancelled_caught and running.is_set()
    assert finished.is_set()  # stopped before run() returned, not some time later
    assert workers.limiter.borrowed_tokens == 0 or await _released(workers)


async def _released(workers: Workers) -> bool:
    with trio.fail_after(1):
        while workers.limiter.borrowed_tokens:
            await trio.sleep(0.01)
    return True


async def test_worker_timeout_raises_work_stopped() -> None:
    with pytest.raises(WorkStopped):
        await Workers().run(Budget(0.2), _parse_job(_exponential_defaults()).run)


async def test_cancelled_while_queued_never_starts() -> None:
    workers = Workers(threads=1)
    started: list[str] = []
    release = threading.Event()

    def blocker() -> None:
        while not release.is_set():
            limits.checkpoint()
            time.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(workers.run, Budget(60), blocker)
        await trio.sleep(0.05)
        with trio.move_on_after(0.1):
            await workers.run(Budget(60), started.append, "queued")
        release.set()
    assert started == []


# --- the HTTP answer to an oversized body ----------------------------------------------------


async def _echo(request: httpd.Request) -> httpd.Response:
    return httpd.Response.json({"body": len(request.body)})


def _too_large(reason: str) -> httpd.Response:
    return httpd.Response.json({"error_code": 42209, "message": reason}, 422)


def _post(port: int, data: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/up", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_oversized_body_is_drained_and_answered_with_the_apis_shape() -> None:
    server_limits = httpd.Limits(max_body_bytes=1024 * 1024, max_discard_bytes=32 * 1024 * 1024,
                                 discard_timeout=10, too_large=_too_large)
    routes = {"/up": httpd.Route(_echo, frozenset({"POST"}))}
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(httpd.serve_http, routes, "127.0.0.1", 0,
                                           limits=server_limits))
        # 12 MB sent whole before the client reads: it still gets the answer, not a reset.
        status, answer = await trio.to_thread.run_sync(_post, port, b"x" * 12_000_000)
        assert (status, answer["error_code"]) == (422, 42209)
        assert "12000000" in answer["message"]
        assert await trio.to_thread.run_sync(_post, port, b"y" * 1000) == (200, {"body": 1000})
        nursery.cancel_scope.cancel()


def test_registry_http_limits() -> None:
    from registry import api

    assert api.LIMITS.max_body_bytes == limits.MAX_BODY_BYTES
    assert api.LIMITS.too_large is not None
    answer = api.LIMITS.too_large("body of 5 bytes exceeds 4")
    assert answer.status == 422
    assert json.loads(answer.body)["error_code"] == limits.TOO_LARGE


def test_cache_is_bounded_by_text_size_and_keeps_what_it_just_stored() -> None:
    state = RegistryState()
    cache = core.ParsedCache(max_text_bytes=3 * len(_wide_avro(1000)) * 3)
    texts = [_wide_avro(1000).replace("Wide", f"Wide{i}") for i in range(6)]
    for text in texts:
        with pytest.raises(core.NotReady) as need:
            cache.parse(state, "AVRO", text, ())
        cache.store(need.value.job, need.value.job.run())
        assert cache.parse(state, "AVRO", text, ()).canonical  # just stored: a hit
    assert 1 <= len(cache) <= 3
    with pytest.raises(core.NotReady):
        cache.parse(state, "AVRO", texts[0], ())  # the oldest went first


def test_verdicts_go_with_their_schemas() -> None:
    import gc

    cache = core.ParsedCache()
    reader = _parse_job(_wide_avro(2)).run().schema
    writer = _parse_job(_wide_avro(3)).run().schema
    job = core.CompatibilityJob(reader, writer)
    cache.store(job, job.run())
    assert cache.compatibility_errors(reader, writer) == []
    del job, writer
    gc.collect()
    assert len(cache._compat.get(reader, {})) == 0
