"""Fixtures of the unit tests: an OpenAI-compatible HTTP server on loopback that misbehaves on purpose."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from testkit.chat_stub import ChatStub, serving


@pytest.fixture
def serve_fake_llm() -> Iterator[Callable[[ChatStub], str]]:
    """Start a ChatStub on a free loopback port; yields a function (stub) -> base_url."""
    with serving() as start:
        yield start
