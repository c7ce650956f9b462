"""``kelp produce`` and ``kelp consume``."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import IO, Any

import click
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from rich.progress import Progress

from kelp.ops.app import TIMEOUT_S, cli, command, fail, settings
from kelp.ops.serde import Registry, decode, encode, plain
from kelp.ops.topics import pairs


@command(cli, "produce")
@click.argument("topic")
@click.option("-f", "--file", "source", type=click.Path(path_type=Path, exists=True,
                                                        dir_okay=False),
              default=None, help="records, one per line (default: standard input)")
@click.option("-K", "--key-separator", default=None,
              help="each line is KEY<sep>VALUE (default: the whole line is the value)")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="a header on every record (repeatable)")
@click.option("-p", "--partition", type=int, default=None)
@click.option("--value-format", type=click.Choice(["raw", "avro", "json"]), default="raw",
              help="avro/json: each value line is a JSON document, written in the registry's "
              "wire format under --schema-file (registered as TOPIC-value)")
@click.option("--schema-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None)
@click.option("--acks", type=click.Choice(["0", "1", "all"]), default="all")
def produce(topic: str, source: Path | None, key_separator: str | None,
            headers: tuple[str, ...], partition: int | None, value_format: str,
            schema_file: Path | None, acks: str) -> None:
    """Write records to TOPIC, one per line of the file or standard input."""
    header_list = list(pairs(headers, "--header").items())
    to_value = _value_encoder(topic, value_format, schema_file)
    producer = Producer(settings().client_config(acks=acks, **{"linger.ms": 5}))
    failures: list[str] = []
    written = 0

    def delivered(err: KafkaError | None, _message: Any) -> None:
        nonlocal written
        if err is not None:
            failures.append(err.str())
        else:
            written += 1

    stream: IO[str] = source.open() if source is not None else sys.stdin
    total = source.stat().st_size if source is not None else None
    show = total is not None and not settings().json and sys.stderr.isatty()
    with Progress(disable=not show, transient=True) as progress:
        task = progress.add_task(f"producing to {topic}", total=total)
        for line in stream:
            progress.update(task, advance=len(line))
            text = line.rstrip("\n")
            key = None
            if key_separator is not None:
                key, found, text = text.partition(key_separator)
                if not found:
                    fail(f"a line without the key separator {key_separator!r}: {line[:80]!r}")
            kwargs: dict[str, Any] = {"partition": partition} if partition is not None else {}
            while True:
                try:
                    producer.produce(topic, value=to_value(text), key=key,
                                     headers=header_list or None, on_delivery=delivered,
                                     **kwargs)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
    remaining = producer.flush(TIMEOUT_S * 4)
    result = {"topic": topic, "produced": written, "failed": len(failures) + remaining}
    click.echo(json.dumps(result) if settings().json
               else f"{written} records written to {topic}"
               + (f", {len(failures) + remaining} failed" if failures or remaining else ""))
    if failures or remaining:
        fail(f"{len(failures) + remaining} records not written"
             + (f": {failures[0]}" if failures else ""))


def _value_encoder(topic: str, value_format: str, schema_file: Path | None) -> Any:
    if value_format == "raw":
        return lambda text: text.encode()
    if schema_file is None:
        raise click.UsageError(f"--value-format {value_format} needs --schema-file")
    registry = Registry(settings().registry, settings().properties())
    kind = value_format.upper()
    schema_text = schema_file.read_text()
    schema_id = registry.register(f"{topic}-value", schema_text, kind)
    kind, schema = registry.schema(schema_id)

    def encoder(text: str) -> bytes:
        try:
            return encode(registry, schema_id, kind, schema, text)
        except (ValueError, TypeError) as exc:
            fail(f"a value does not fit the schema: {exc} ({text[:80]!r})")

    return encoder


@command(cli, "consume")
@click.argument("topic")
@click.option("-g", "--group", default=None,
              help="consume as this group member (committing offsets); default: read every "
              "partition without a group")
@click.option("-p", "--partition", type=int, default=None)
@click.option("--from-beginning", is_flag=True)
@click.option("--offset", type=int, default=None, help="start at this offset")
@click.option("--from-time", default=None, metavar="ISO8601|MS",
              help="start at the first record at or after this time")
@click.option("-n", "--max-records", type=int, default=None)
@click.option("-F", "--follow", is_flag=True, help="wait for new records (Ctrl-C stops)")
@click.option("--isolation", type=click.Choice(["read_committed", "read_uncommitted"]),
              default="read_committed")
@click.option("--decode/--no-decode", "decode_values", default=True,
              help="decode values in the registry's wire format (Avro, JSON Schema)")
def consume(topic: str, group: str | None, partition: int | None, from_beginning: bool,
            offset: int | None, from_time: str | None, max_records: int | None,
            follow: bool, isolation: str, decode_values: bool) -> None:
    """Read records of TOPIC: to the end (or --max-records), or on with --follow."""
    config = settings().client_config(**{
        "group.id": group or "kelp-cli", "enable.auto.commit": group is not None,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "isolation.level": isolation, "enable.partition.eof": True})
    consumer = Consumer(config)
    registry = Registry(settings().registry, settings().properties()) if decode_values else None
    try:
        assigned = _start(consumer, topic, group, partition, from_beginning, offset, from_time)
        _read(consumer, registry, assigned, max_records, follow)
    except KafkaException as exc:
        fail(exc.args[0].str())
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


def _start(consumer: Consumer, topic: str, group: str | None, partition: int | None,
           from_beginning: bool, offset: int | None, from_time: str | None) -> int:
    """Subscribe or assign; returns how many partitions are read (for the end condition)."""
    metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics.get(topic)
    if metadata is None or metadata.error is not None:
        fail(f"unknown topic {topic}")
    numbers = sorted(metadata.partitions) if partition is None else [partition]
    if group is not None and partition is None and offset is None and from_time is None:
        consumer.subscribe([topic])
        return len(numbers)
    if from_time is not None:
        wanted = [TopicPartition(topic, p, _millis(from_time)) for p in numbers]
        starts = consumer.offsets_for_times(wanted, timeout=TIMEOUT_S)
    else:
        start = (offset if offset is not None else
                 OFFSET_BEGINNING if from_beginning else OFFSET_END)
        starts = [TopicPartition(topic, p, start) for p in numbers]
    consumer.assign(starts)
    return len(numbers)


def _millis(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is neither ISO 8601 nor milliseconds",
                                 param_hint="--from-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def _read(consumer: Consumer, registry: Registry | None, partitions: int,
          max_records: int | None, follow: bool) -> None:
    at_end: set[int] = set()
    count = 0
    while max_records is None or count < max_records:
        message = consumer.poll(0.5)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                if not follow and len(at_end) >= partitions:
                    return
                continue
            fail(error.str())
        at_end.discard(message.partition())
        count += 1
        _print(message, registry)


def _print(message: Any, registry: Registry | None) -> None:
    value = message.value()
    shown = (decode(registry, value) if registry is not None and value is not None
             else plain(value))
    key = plain(message.key())
    if settings().json:
        click.echo(json.dumps({
            "topic": message.topic(), "partition": message.partition(),
            "offset": message.offset(), "timestamp": message.timestamp()[1], "key": key,
            "value": shown, "headers": {k: plain(v) for k, v in (message.headers() or [])}},
            default=str))
    else:
        text = shown if isinstance(shown, str) else json.dumps(shown, default=str)
        prefix = f"{message.partition()}:{message.offset()}"
        click.echo(f"{prefix}\t{key}\t{text}" if key is not None else f"{prefix}\t{text}")
