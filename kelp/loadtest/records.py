"""What a load-test record looks like on the wire, and how to read one back.

Every value carries the record's identity, whatever the value type, so the accounting never
depends on optional features:

* ``run``: a random 32-bit nonce of this run (records of an earlier run on a reused topic are
  recognised and skipped, not miscounted),
* ``producer``: the producer's index, ``seq``: its sequence number (0, 1, 2, ...),
* ``sent_ns``: the wall clock (``time.time_ns``) when the producer handed the record to the
  client, from which consumers measure end-to-end latency. Producer and consumers share the
  host's clock, so no synchronisation is needed on loopback.

Value types: ``binary`` is a fixed 28-byte big-endian prefix then random bytes up to the size;
``json`` is a JSON object padded with random hex; ``avro`` is Confluent's wire format (magic byte,
4-byte schema id, Avro body) of :data:`AVRO_SCHEMA`, written by confluent-kafka's
``AvroSerializer`` against a schema registered beforehand. With ``--headers`` the identity is
repeated in Kafka headers, and consumers check that the headers arrived intact.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VALUE_TYPES = ("binary", "json", "avro")
AVRO_SCHEMA = json.dumps({
    "type": "record", "name": "LoadTestRecord", "namespace": "kelp.loadtest",
    "doc": "One kelp loadtest record: identity for exactly-once accounting, then padding.",
    "fields": [
        {"name": "run", "type": "long"},
        {"name": "producer", "type": "int"},
        {"name": "seq", "type": "long"},
        {"name": "sent_ns", "type": "long"},
        {"name": "payload", "type": "bytes"},
    ]})

_BINARY = struct.Struct(">4sIIQQ")
_BINARY_MAGIC = b"KLT1"
# Bytes of framing around the payload, so a record's value is about ``size`` bytes in all types.
_AVRO_OVERHEAD = 5 + 30           # magic + schema id, then four zigzag varints and a length
_JSON_OVERHEAD = 100
_POOL_BYTES = 1 << 20

HEADER_RUN, HEADER_PRODUCER, HEADER_SEQ, HEADER_SENT = "lt-run", "lt-producer", "lt-seq", "lt-sent"


@dataclass(frozen=True, slots=True)
class Identity:
    run: int
    producer: int
    seq: int
    sent_ns: int


class Padding:
    """Random filler, sliced from one pool so making a record costs a copy, not an RNG call."""

    def __init__(self, size: int, *, text: bool = False) -> None:
        self.size = max(0, size)
        raw = os.urandom((_POOL_BYTES + self.size) // (2 if text else 1) + 1)
        self._pool = raw.hex().encode() if text else raw

    def at(self, seq: int) -> bytes:
        # A prime stride walks the pool so neighbouring records differ (compression stays honest).
        start = (seq * 7919) % _POOL_BYTES
        return self._pool[start:start + self.size]


def headers_for(ident: Identity) -> list[tuple[str, bytes]]:
    return [(HEADER_RUN, b"%d" % ident.run), (HEADER_PRODUCER, b"%d" % ident.producer),
            (HEADER_SEQ, b"%d" % ident.seq), (HEADER_SENT, b"%d" % ident.sent_ns)]


def headers_match(headers: list[tuple[str, bytes]] | None, ident: Identity) -> bool:
    """Whether the identity headers (if the record has any) agree with the value's identity."""
    if not headers:
        return False
    seen = {key: value for key, value in headers}
    try:
        return (int(seen[HEADER_RUN]) == ident.run
                and int(seen[HEADER_PRODUCER]) == ident.producer
                and int(seen[HEADER_SEQ]) == ident.seq
                and int(seen[HEADER_SENT]) == ident.sent_ns)
    except (KeyError, TypeError, ValueError):
        return False


def key_for(producer: int, seq: int, keyspace: int = 1024) -> bytes:
    """A key that spreads a producer's records over ``keyspace`` keys (and so partitions)."""
    return b"p%d-k%d" % (producer, seq % keyspace)


# ---------------------------------------------------------------------------------------------
# encoders: (topic, identity) -> value bytes


Encoder = Callable[[str, Identity], bytes]
Decoder = Callable[[str, bytes], Identity]


def binary_encoder(size: int) -> Encoder:
    padding = Padding(size - _BINARY.size)

    def encode(topic: str, ident: Identity) -> bytes:
        return _BINARY.pack(_BINARY_MAGIC, ident.run, ident.producer, ident.seq,
                            ident.sent_ns) + padding.at(ident.seq)
    return encode


def binary_decode(topic: str, value: bytes) -> Identity:
    magic, run, producer, seq, sent_ns = _BINARY.unpack_from(value)
    if magic != _BINARY_MAGIC:
        raise ValueError(f"not a loadtest binary record (magic {magic!r})")
    return Identity(run, producer, seq, sent_ns)


def json_encoder(size: int) -> Encoder:
    padding = Padding(size - _JSON_OVERHEAD, text=True)

    def encode(topic: str, ident: Identity) -> bytes:
        head = (b'{"run":%d,"producer":%d,"seq":%d,"sent_ns":%d,"payload":"'
                % (ident.run, ident.producer, ident.seq, ident.sent_ns))
        return head + padding.at(ident.seq) + b'"}'
    return encode


def json_decode(topic: str, value: bytes) -> Identity:
    doc = json.loads(value)
    return Identity(int(doc["run"]), int(doc["producer"]), int(doc["seq"]), int(doc["sent_ns"]))


def avro_encoder(size: int, registry_url: str) -> Encoder:
    """AvroSerializer in schema-first mode: it looks up the id of the already registered schema
    (``auto.register.schemas=False``) and refuses to produce if it is not registered."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url}), AVRO_SCHEMA,
                                conf={"auto.register.schemas": False})
    padding = Padding(size - _AVRO_OVERHEAD)
    contexts: dict[str, Any] = {}

    def encode(topic: str, ident: Identity) -> bytes:
        ctx = contexts.get(topic)
        if ctx is None:
            ctx = contexts[topic] = SerializationContext(topic, MessageField.VALUE)
        value = serializer({"run": ident.run, "producer": ident.producer, "seq": ident.seq,
                            "sent_ns": ident.sent_ns, "payload": padding.at(ident.seq)}, ctx)
        assert value is not None
        return value
    return encode


def avro_decoder(registry_url: str) -> Decoder:
    """AvroDeserializer: reads the schema id after the magic byte and fetches that schema from
    the registry (once; the client caches it)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    contexts: dict[str, Any] = {}

    def decode(topic: str, value: bytes) -> Identity:
        ctx = contexts.get(topic)
        if ctx is None:
            ctx = contexts[topic] = SerializationContext(topic, MessageField.VALUE)
        doc = deserializer(value, ctx)
        if not isinstance(doc, dict):
            raise ValueError(f"Avro value decoded to {type(doc).__name__}, not a record")
        return Identity(doc["run"], doc["producer"], doc["seq"], doc["sent_ns"])
    return decode


def schema_id_of(value: bytes) -> int | None:
    """The schema id of a Confluent-framed value (magic byte 0, then a 4-byte big-endian id)."""
    if len(value) >= 5 and value[0] == 0:
        return int.from_bytes(value[1:5], "big")
    return None


def make_encoder(value_type: str, size: int, registry_url: str | None) -> Encoder:
    if value_type == "binary":
        return binary_encoder(size)
    if value_type == "json":
        return json_encoder(size)
    if value_type == "avro":
        if not registry_url:
            raise ValueError("avro values need a schema registry (--registry)")
        return avro_encoder(size, registry_url)
    raise ValueError(f"unknown value type {value_type!r}; expected one of {VALUE_TYPES}")


def make_decoder(value_type: str, registry_url: str | None) -> Decoder:
    if value_type == "binary":
        return binary_decode
    if value_type == "json":
        return json_decode
    if value_type == "avro":
        if not registry_url:
            raise ValueError("avro values need a schema registry (--registry)")
        return avro_decoder(registry_url)
    raise ValueError(f"unknown value type {value_type!r}; expected one of {VALUE_TYPES}")
