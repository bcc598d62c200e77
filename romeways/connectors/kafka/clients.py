"""Starting and stopping the Kafka connector's aiokafka clients: start-up with retry (a refused
SASL login told apart from an unreachable cluster, and not retried), and stops bounded in time
that never cut a client's own stop short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from ..._errors import ConnectorError
from ..support import describe_exception, start_stopping, start_with_retry, wait_stopped
from .config import KafkaConnectorConfig, bootstrap_servers

# How long a failed start's stop takes at most (close() has its own deadline, see connector).
STOP_TIMEOUT: Final = 3.0
# How long a broker has to answer a probe: the login check here, the connector's idle probe.
PROBE_TIMEOUT: Final = 3.0

# Errors worth retrying at start-up: the cluster may still be coming up.
RETRIABLE_AT_START: Final = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    OSError,
)
# A refused login: no retry mends it.
LOGIN_REFUSED: Final = (
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
)

# The loggers of aiokafka, whose records the connector keeps its secrets out of.
AIOKAFKA_LOGGERS: Final = (
    "aiokafka",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.consumer.subscription_state",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
)

Client = AIOKafkaConsumer | AIOKafkaProducer


async def start_clients(
    config: KafkaConnectorConfig,
    options: dict[str, Any],
    new_consumer: Callable[[], AIOKafkaConsumer],
    new_producer: Callable[[], AIOKafkaProducer],
    *,
    where: str,
    failed: Callable[[], None],
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    """Start a consumer (joining the group) and a producer, retrying with backoff while the
    cluster is unreachable, up to ``startup_timeout``; ``failed`` is called after each failed
    attempt (to forget what a half-started consumer was assigned). ``options`` are the
    clients' (``config.client_options()``): they hold the password, never log them."""
    servers = ",".join(bootstrap_servers(config.bootstrap_server))
    deadline = time.monotonic() + config.startup_timeout
    started: list[Client] = []  # the clients of the attempt in flight, until it ends

    async def stop_started() -> None:
        clients, started[:] = list(started), []
        await stop_quietly(*clients)
        failed()

    async def attempt() -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
        consumer, producer = new_consumer(), new_producer()
        started[:] = [consumer, producer]
        try:
            await consumer.start()
            await producer.start()
        except LOGIN_REFUSED as exc:
            await stop_started()
            raise login_refused(config, where, servers, exc) from exc
        except RETRIABLE_AT_START:
            raise  # stopped by after_failure, outside the attempt's time limit
        except KafkaError as exc:
            await stop_started()
            raise ConnectorError(
                f"{where} could not start against {servers}: {describe_exception(exc)}; check "
                "the security settings (security_protocol, sasl_*, ssl_*) and the ACLs of the "
                "topic and group"
            ) from exc
        except Exception as exc:  # aiokafka fails some handshakes with bare errors
            await stop_started()
            raise ConnectorError(
                f"{where} could not start against {servers}: {describe_exception(exc)}; check "
                "the security settings (security_protocol, sasl_*, ssl_*): a failed "
                "authentication can end this way"
            ) from exc
        except BaseException:  # cancelled: by the attempt's time limit, or the worker's stop
            await stop_started()
            raise
        started[:] = []
        return consumer, producer

    async def after_failure(exc: BaseException) -> None:
        await stop_started()
        # aiokafka reports a refused login while bootstrapping as a connection error.
        refused = await refused_login(config, options, deadline)
        if refused is not None:
            raise login_refused(config, where, servers, refused) from refused

    return await start_with_retry(
        attempt,
        timeout=config.startup_timeout,
        retriable=RETRIABLE_AT_START,
        where=where,
        target=f"the Kafka cluster at {servers}",
        hint="check that the broker is running and that bootstrap_server and the security "
        "settings are right, or raise startup_timeout",
        after_failure=after_failure,
    )


async def refused_login(
    config: KafkaConnectorConfig, options: dict[str, Any], deadline: float
) -> KafkaError | None:
    """After a start that could not connect over SASL: log in to each bootstrap server once,
    as the clients do, to tell a refused login (aiokafka's bootstrap reports it as "Unable to
    bootstrap") from an unreachable cluster. The first refusal, or None."""
    if not str(options["security_protocol"]).startswith("SASL_"):
        return None
    for server in bootstrap_servers(config.bootstrap_server):
        host, _, port = server.rpartition(":")
        timeout = min(config.request_timeout_ms / 1000, PROBE_TIMEOUT)
        timeout = max(0.1, min(timeout, deadline - time.monotonic()))
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host.strip("[]"),
                    int(port),
                    client_id=config.client_id,
                    request_timeout_ms=config.request_timeout_ms,
                    ssl_context=options.get("ssl_context"),
                    security_protocol=options["security_protocol"],
                    sasl_mechanism=options["sasl_mechanism"],
                    sasl_plain_username=options["sasl_plain_username"],
                    sasl_plain_password=options["sasl_plain_password"],
                ),
                timeout,
            )
        except LOGIN_REFUSED as exc:
            return exc
        except (KafkaError, OSError, TimeoutError):
            continue  # this server is not reachable either: try the next
        conn.close()
        return None  # logged in: the start failed for another reason
    return None


def login_refused(
    config: KafkaConnectorConfig, where: str, servers: str, exc: KafkaError
) -> ConnectorError:
    """The error for a login the broker refused: names the user and mechanism, never the
    password."""
    return ConnectorError(
        f"{where} could not log in to the Kafka cluster at {servers}: the broker refused the "
        f"SASL {config.sasl_mechanism} login of user {config.sasl_plain_username!r} "
        f"({describe_exception(exc)}); check sasl_plain_username, sasl_plain_password and "
        "sasl_mechanism (not retried: a wrong login stays wrong)"
    )


def start_stopping_clients(*clients: Client | None, where: str | None) -> list[asyncio.Task[None]]:
    """Start stopping the clients, each in a task of its own, never cancelled (see
    ``support.start_stopping``)."""
    return start_stopping(
        (
            ("consumer" if isinstance(client, AIOKafkaConsumer) else "producer", client.stop)
            for client in clients
            if client is not None
        ),
        where=where,
    )


async def stop_quietly(*clients: Client | None, where: str | None = None) -> None:
    """Stop clients concurrently within STOP_TIMEOUT; errors are logged, not raised."""
    deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
    await wait_stopped(start_stopping_clients(*clients, where=where), deadline, where=where)
