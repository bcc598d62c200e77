"""Fixtures of the Redis tests: the server (the machine's shared Redis 7, or the one
``ROMEWAYS_TEST_REDIS_URL`` names; a private ``redis-server`` when neither answers), and
uniquely named streams deleted after each test. Never flushes or reconfigures the server.

No ``__init__.py`` here: a package named ``redis`` would shadow redis-py itself."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS = str(Path(__file__).resolve().parent.parent)
if TESTS not in sys.path:  # for faults.redishelp and broker, as the packaged suites import them
    sys.path.insert(0, TESTS)

from faults.redishelp import (  # noqa: E402  # needs the path above
    RedisServer,
    delete_streams,
    run,
    shared_url,
    unique,
)


def _answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as probe:
            return bool(probe.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = shared_url()
    if _answers(url):
        yield url
        return
    if not RedisServer.available():
        pytest.fail(f"no Redis answers at {url} and redis-server is not installed")
    with RedisServer(tmp_path_factory.mktemp("redis-session")) as server:
        yield server.url


@pytest.fixture
def streams(redis_url: str) -> Iterator[Callable[[str], str]]:
    """``streams("what")`` gives a unique stream name; every one is deleted after the test."""
    made: list[str] = []

    def make(prefix: str) -> str:
        name = unique(prefix)
        made.append(name)
        return name

    yield make
    run(delete_streams(redis_url, *made))
