"""An asyncio error that nothing handled (grpclib's "Unclosed connection" from a channel's
``__del__``, seen after an etcd restart) is logged by kelp's processes, which go on serving.
trio-asyncio's own default handler raises it into the loop: the process ended."""

from __future__ import annotations

import asyncio
import logging

import pytest
import trio
import trio_asyncio

from kelp import process

UNCLOSED = {"message": "Unclosed connection: Channel('127.0.0.1', 2379, ..., path=None)"}


async def test_trio_asyncios_default_handler_ends_the_loop() -> None:
    with pytest.raises(BaseExceptionGroup) as raised:
        async with trio_asyncio.open_loop() as loop:
            loop.call_exception_handler(UNCLOSED)
            await trio.sleep(1)
    assert raised.group_contains(RuntimeError, match="Unclosed connection", depth=None)


async def test_kelps_loop_logs_the_error_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="kelp.process"):
        async with process.asyncio_loop() as loop:
            loop.call_exception_handler(UNCLOSED)
            loop.call_exception_handler({"message": "Task exception was never retrieved",
                                         "exception": ValueError("boom")})
            await trio.sleep(0.05)
            assert await trio_asyncio.aio_as_trio(asyncio.sleep)(0, "still serving") == (
                "still serving")
    assert "Unclosed connection" in caplog.text
    assert "Task exception was never retrieved" in caplog.text and "boom" in caplog.text
