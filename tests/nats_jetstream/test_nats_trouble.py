"""NATS connector trouble, on private ``nats-server -js`` processes of the tests: no server at
start (retried, then a ConnectorError), a server arriving late, refused logins (user/password,
token, a password in the URL) failing at once without showing the secret, TLS (server checked
against a CA, mutual TLS, a server the client cannot verify), a server restarted mid-run (the
consumer resumes; a pull subscription that stops delivering is made afresh: the guard against
nats.py #504), a close while the server is away, and credentials without nkeys."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from faults.kafkahelp import BlackholeProxy
from faults.natshelp import PrivateServer, free_port, make_certs, run

import romeways
from romeways.connectors.nats import NatsQueueConnector

from .conftest import configs, connector_for

pytestmark = pytest.mark.timeout(90)

CANARY = "canary-Wr0ng-pw-2b7d"


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run(test(*args, **kwargs), timeout=80)

    return wrapper


def shown(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


class Consuming:
    """A started connector fetching (and acking) in a task of its own; ``got`` collects what
    it was handed."""

    def __init__(self, connector: NatsQueueConnector) -> None:
        self.connector = connector
        self.got: list[bytes] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Consuming:
        await self.connector.on_start()
        self.task = asyncio.ensure_future(self._run())
        return self

    async def _run(self) -> None:
        while True:
            chunk = await self.connector.get_messages(10)
            if chunk:
                first = len(self.got)
                self.got += chunk
                await self.connector.ack(range(first, first + len(chunk)))

    async def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.got) < count:
            assert self.task is not None and not self.task.done(), self.task
            assert time.monotonic() < deadline, f"got {len(self.got)} of {count}: {self.got}"
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.connector.close()


@in_loop
async def test_no_server_at_start_is_retried_then_fails_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    cc, qc = configs(
        f"nats://svc:{CANARY}@127.0.0.1:{port}", "ABSENT", connector={"startup_timeout": 2.5}
    )
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="romeways"):
        with pytest.raises(romeways.ConnectorError) as info:
            await connector_for(cc, qc).on_start()
    took = time.monotonic() - started
    assert 2.0 < took < 5.0, took
    text = str(info.value)
    assert f"could not reach the NATS server at nats://svc:***@127.0.0.1:{port}" in text
    assert "startup_timeout=2.5s" in text
    retries = [r for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(retries) >= 2
    assert CANARY not in shown(info.value) + caplog.text


@in_loop
async def test_a_server_arriving_late_is_reached(tmp_path: Path) -> None:
    server = PrivateServer(tmp_path / "late")
    cc, qc = configs(server.url, "LATE", connector={"startup_timeout": 20.0})
    connector = connector_for(cc, qc)
    starting = asyncio.ensure_future(connector.on_start())
    await asyncio.sleep(1.5)
    assert not starting.done()
    await asyncio.to_thread(server.start)
    try:
        async with Consuming(connector) as consuming:
            await starting
            await connector.send_messages(b"after-a-late-start")
            await consuming.wait_for(1, 10)
    finally:
        server.kill()


@in_loop
async def test_refused_logins_fail_at_once_without_showing_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PrivateServer(
        tmp_path / "auth", args=["--user", "svc", "--pass", "right-pw-123"]
    ) as server:
        server.start()
        wrong = [
            {"user": "svc", "password": CANARY},
            {"servers": f"nats://svc:{CANARY}@127.0.0.1:{server.port}"},
            {},  # no login at all
        ]
        for fields in wrong:
            cc, qc = configs(server.url, "AUTH", connector={"startup_timeout": 20.0, **fields})
            started = time.monotonic()
            with caplog.at_level(logging.DEBUG):
                with pytest.raises(romeways.ConnectorError, match="refused") as info:
                    await connector_for(cc, qc).on_start()
            refused_in = time.monotonic() - started
            assert refused_in < 3.0, "a refused login was retried"
            print(f"refused login {sorted(fields) or ['none']}: failed in {refused_in:.2f}s")
            assert "not retried" in str(info.value)
            if "user" in fields:
                assert "the login of user 'svc'" in str(info.value)
            assert CANARY not in shown(info.value) + caplog.text
        cc, qc = configs(server.url, "AUTH", connector={"user": "svc", "password": "right-pw-123"})
        async with Consuming(connector_for(cc, qc)) as consuming:
            await consuming.connector.send_messages(b"logged-in")
            await consuming.wait_for(1, 10)
    with PrivateServer(tmp_path / "token", args=["--auth", "tok-right-456"]) as server:
        server.start()
        cc, qc = configs(server.url, "TOKEN", connector={"token": CANARY, "startup_timeout": 20.0})
        with pytest.raises(romeways.ConnectorError, match="refused the token") as info:
            await connector_for(cc, qc).on_start()
        assert CANARY not in shown(info.value)
        cc, qc = configs(server.url, "TOKEN", connector={"token": "tok-right-456"})
        async with Consuming(connector_for(cc, qc)) as consuming:
            await consuming.connector.send_messages(b"token-ok")
            await consuming.wait_for(1, 10)


@in_loop
async def test_tls_checks_the_server_and_presents_a_client_certificate(tmp_path: Path) -> None:
    certs = await asyncio.to_thread(make_certs, tmp_path / "certs")
    args = [
        "--tls",
        "--tlscert", str(certs["server_cert"]),
        "--tlskey", str(certs["server_key"]),
        "--tlsverify",
        "--tlscacert", str(certs["ca"]),
    ]  # fmt: skip
    with PrivateServer(tmp_path / "tls", args=args) as server:
        server.start()
        mutual = {
            "tls": True,
            "tls_cafile": str(certs["ca"]),
            "tls_certfile": str(certs["client_cert"]),
            "tls_keyfile": str(certs["client_key"]),
        }
        cc, qc = configs(server.url, "TLS", connector=mutual)
        async with Consuming(connector_for(cc, qc)) as consuming:
            await consuming.connector.send_messages(b"over-tls")
            await consuming.wait_for(1, 10)
        unverified = {"tls": True, "startup_timeout": 20.0}  # the system's CAs: not ours
        cc, qc = configs(server.url, "TLS", connector=unverified)
        started = time.monotonic()
        with pytest.raises(romeways.ConnectorError, match="TLS connection"):
            await connector_for(cc, qc).on_start()
        assert time.monotonic() - started < 3.0, "a failed certificate check was retried"
        missing = {**mutual, "tls_cafile": str(tmp_path / "no-such-ca.pem")}
        cc, qc = configs(server.url, "TLS", connector=missing)
        with pytest.raises(romeways.ConnectorError, match="could not load its TLS files"):
            await connector_for(cc, qc).on_start()


@in_loop
async def test_a_server_restart_resumes_and_a_subscription_that_stops_delivering_is_renewed(
    private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is restarted (same store) under a consuming connector: it logs the outage
    and the return, and consumes what is published after. Then the server forgets the pull
    subscription's interest while the client still has it (what nats.py #504 reports after
    reboots): the connector's checks see messages waiting and none delivered, and subscribe
    afresh, so every message is consumed."""
    cc, qc = configs(
        private_server.url, "RESTART", connector={"reconnect_time_wait": 0.5}, frequency=0.3
    )
    with caplog.at_level(logging.INFO, logger="romeways"):
        async with Consuming(connector_for(cc, qc)) as consuming:
            connector = consuming.connector
            for i in range(5):
                await connector.send_messages(f"before-{i}".encode())
            await consuming.wait_for(5, 10)
            await asyncio.to_thread(private_server.restart, 1.0)
            for i in range(5):
                await connector.send_messages(f"after-{i}".encode())
            await consuming.wait_for(10, 15)
            messages = [r.getMessage() for r in caplog.records]
            assert sum("lost contact with the NATS server" in m for m in messages) == 1
            assert any("reached the NATS server" in m and "again" in m for m in messages)
            # The fault: the server no longer delivers to the subscription's inbox.
            client, puller = connector._link.client, connector._fetcher.puller
            assert client is not None and puller is not None and puller.subscription is not None
            await client._send_unsubscribe(puller.subscription._id)
            await client.flush()
            for i in range(5):
                await connector.send_messages(f"stuck-{i}".encode())
            stuck_at = time.monotonic()
            await consuming.wait_for(15, 20)
            print(f"#504 guard: the stuck messages came {time.monotonic() - stuck_at:.1f}s later")
    assert sorted(consuming.got) == sorted(
        [f"{kind}-{i}".encode() for kind in ("before", "after", "stuck") for i in range(5)]
    )
    assert any("subscribing afresh" in r.getMessage() for r in caplog.records)


@in_loop
async def test_close_while_the_server_is_away_is_bounded(
    private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    cc, qc = configs(private_server.url, "AWAY")
    connector = connector_for(cc, qc)
    await connector.on_start()
    await connector.send_messages(b"held")
    assert await connector.get_messages(10) == [b"held"]
    private_server.kill()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="romeways"):
        await connector.close()
    assert time.monotonic() - started < 4.0
    assert "delivered again after ack_wait" in caplog.text


@in_loop
async def test_a_close_whose_acks_cannot_reach_the_server_says_so(
    private_server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Acks are fire-and-forget: close() flushes them (a PING/PONG) and so finds out when they
    did not get through. Through a proxy that silently drops everything, it logs that the ack
    and the nak did not reach the server (both messages come again after ack_wait) instead of
    closing as if they had, and still returns within its 3 s bound."""
    port = free_port()
    proxy = BlackholeProxy(port, private_server.port)
    try:
        cc, qc = configs(f"nats://127.0.0.1:{port}", "FLUSH")
        connector = connector_for(cc, qc)
        await connector.on_start()
        await connector.send_messages(b"one")
        await connector.send_messages(b"two")
        got = list(await connector.get_messages(10))
        got += await connector.get_messages(10)
        assert got == [b"one", b"two"]
        proxy.cut()
        await connector.ack([0])
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="romeways"):
            await connector.close()
        assert time.monotonic() - started < 4.0
        assert "could not flush its acks and nak 1 unfinished message(s)" in caplog.text
    finally:
        proxy.close()


@in_loop
async def test_a_credentials_file_needs_nkeys(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n")
    cc, qc = configs("nats://127.0.0.1:1", "CREDS", connector={"credentials": str(creds)})
    if importlib.util.find_spec("nkeys") is not None:  # pragma: no cover - not in the lock
        pytest.skip("nkeys is installed: the message for its absence cannot show")
    with pytest.raises(romeways.ConnectorError, match="pip install nkeys"):
        await connector_for(cc, qc).on_start()
    cc, qc = configs(
        "nats://127.0.0.1:1", "CREDS", connector={"credentials": str(tmp_path / "missing")}
    )
    with pytest.raises(romeways.ConnectorError, match=r"nkeys|cannot read its credentials"):
        await connector_for(cc, qc).on_start()
