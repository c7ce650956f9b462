"""kelp.toml: broker configs by Kafka's names (bare dotted or quoted) and process flags."""

from __future__ import annotations

import pytest

from kelp.upconfig import UpConfigError, parse


def test_broker_configs_and_flags():
    config = parse("""
[broker]
num.partitions = 3
"log.cleanup.policy" = ["compact", "delete"]
[broker.flags]
retention-check-ms = 1000
[sidecar.flags]
no-ucx = true
debug = ["a=1", "b=2"]
quiet = false
""")
    assert config.broker_configs == ["num.partitions=3", "log.cleanup.policy=compact,delete"]
    assert config.flags["broker"] == ["--retention-check-ms", "1000"]
    assert config.flags["sidecar"] == ["--no-ucx", "--debug", "a=1", "--debug", "b=2"]
    assert config.flags["gateway"] == []


@pytest.mark.parametrize("text", ["[brokr]\nx = 1", "[gateway]\nmax = 1", "broker = 1",
                                  "[broker\n", "[broker.flags]\nx = {a = 1}"])
def test_mistakes_are_named(text: str):
    with pytest.raises(UpConfigError):
        parse(text)
