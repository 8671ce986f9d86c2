"""HL7 area fixtures: the ANS referencing messages and a running MLLP server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from appliance.hl7.messages import Report
from appliance.hl7.mllp import MllpServer
from tests.hl7.helpers import Recorder, ans_files


@pytest.fixture(scope="session")
def ans_messages(conformance_dir: Path) -> dict[str, str]:
    """File name -> message text (CR separators, placeholders still in)."""
    return {name: f.read_bytes().decode("utf-8") for name, f in ans_files(conformance_dir).items()}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


ServerFactory = Callable[..., Awaitable[MllpServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[ServerFactory]:
    """``await start_server(handler, **kwargs)`` -> a started MllpServer on a free port."""
    servers: list[MllpServer] = []

    async def factory(handler: Callable[[Report], Awaitable[None]], **kwargs: object) -> MllpServer:
        server = MllpServer("127.0.0.1", 0, handler, **kwargs)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield factory
    for s in servers:
        await s.stop()
