"""Secret fields of the Kafka connector config (``secret_fields``): a canary value in each of them
never shows through any validation error (message, args, traceback, nor the locals of romeways'
frames it passes, which error trackers record), nor in the config's repr."""

from __future__ import annotations

import ssl
import traceback
from pathlib import Path
from typing import Any, ClassVar

import pytest

import romeways
from romeways._config import require
from romeways.connectors.kafka import KafkaConnectorConfig

CANARY = "canary-S3cret-91ab7c"
ROMEWAYS_DIR = str(Path(romeways.__file__).resolve().parent)
SECRET_WORDS = ("password", "secret", "token", "oauth", "credential")

# Valid configs holding the canary in their secret fields.
BASES: dict[str, dict[str, Any]] = {
    "sasl": {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": CANARY,
    },
    "ssl": {
        "security_protocol": "SSL",
        "ssl_certfile": "c.pem",
        "ssl_keyfile": "k.pem",
        "ssl_password": CANARY,
    },
    "sasl_ssl": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": CANARY,
        "ssl_keyfile": "k.pem",
        "ssl_password": CANARY,
    },
}

# One override per validation rule of KafkaConnectorConfig, each failing on the field named.
BREAKERS: list[tuple[dict[str, Any], str]] = [
    ({"connector_name": " "}, "connector_name"),
    ({"bootstrap_server": "no-port"}, "bootstrap_server"),
    ({"client_id": ""}, "client_id"),
    ({"security_protocol": "TLS"}, "security_protocol"),
    ({"sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
    ({"startup_timeout": float("nan")}, "startup_timeout"),
    ({"request_timeout_ms": 0}, "request_timeout_ms"),
    ({"retry_backoff_ms": -1}, "retry_backoff_ms"),
]

# The secret fields' own error paths: set where they must not be, or beside an ssl_context.
OWN_PATHS: list[tuple[dict[str, Any], str]] = [
    ({"sasl_plain_password": CANARY}, "sasl_plain_password"),
    ({"ssl_password": CANARY}, "ssl_password"),
    (
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
         "sasl_plain_username": "svc", "sasl_plain_password": CANARY, "ssl_password": CANARY},
        "ssl_password",
    ),
    (
        {"security_protocol": "SSL", "ssl_context": ssl.create_default_context(),
         "ssl_password": CANARY},
        "ssl_context",
    ),
    (
        {"security_protocol": "SASL_PLAINTEXT", "sasl_plain_username": "svc",
         "sasl_plain_password": CANARY},
        "sasl_mechanism",
    ),
    (
        {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
         "sasl_plain_password": CANARY},
        "sasl_plain_username",
    ),
]  # fmt: skip


def make(**fields: Any) -> KafkaConnectorConfig:
    return KafkaConnectorConfig(
        **{"connector_name": "k", "bootstrap_server": "127.0.0.1:9092", **fields}
    )


def leaks(exc: BaseException) -> list[str]:
    """Where the canary shows in an error: its text, repr, args, formatted traceback (causes
    included), and the repr of every local of each romeways frame it was raised through."""
    found = []
    texts = {
        "str": str(exc),
        "repr": repr(exc),
        "args": repr(exc.args),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    found += [where for where, text in texts.items() if CANARY in text]
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename.startswith(ROMEWAYS_DIR):
            for name, value in frame.f_locals.items():
                if CANARY in repr(value):
                    found.append(f"local {name!r} of {frame.f_code.co_name}()")
    return found


def test_every_field_named_like_a_secret_is_declared_secret() -> None:
    declared = set(KafkaConnectorConfig.secret_fields)
    assert {"sasl_plain_password", "ssl_password"} <= declared
    named = {f for f in KafkaConnectorConfig.__struct_fields__ if any(w in f for w in SECRET_WORDS)}
    assert named <= declared, f"undeclared secret fields: {named - declared}"
    assert declared <= set(KafkaConnectorConfig.__struct_fields__)


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize(("override", "field"), BREAKERS, ids=[f for _, f in BREAKERS])
def test_no_validation_error_shows_a_secret(
    base: str, override: dict[str, Any], field: str
) -> None:
    """Every other field's rule, failing while the secret fields hold the canary."""
    with pytest.raises(romeways.ConfigError, match=rf"KafkaConnectorConfig\.{field}=") as info:
        make(**{**BASES[base], **override})
    assert leaks(info.value) == [], str(info.value)


@pytest.mark.parametrize(("fields", "field"), OWN_PATHS, ids=[f for _, f in OWN_PATHS])
def test_a_secret_fields_own_error_names_it_and_masks_it(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(romeways.ConfigError, match=rf"KafkaConnectorConfig\.{field}=") as info:
        make(**fields)
    assert leaks(info.value) == [], str(info.value)
    if field in KafkaConnectorConfig.secret_fields:
        assert f"{field}='***' is invalid" in str(info.value)


@pytest.mark.parametrize("base", list(BASES))
def test_repr_masks_every_secret_field(base: str) -> None:
    config = make(**BASES[base])
    rich = dict(config.__rich_repr__())
    for text in (repr(config), str(config), f"{config!r}", repr([config]), repr(rich)):
        assert CANARY not in text
    for name in KafkaConnectorConfig.secret_fields:
        if getattr(config, name) is not None:
            assert f"{name}='***'" in repr(config)
    assert "svc" in repr(config) or base == "ssl"  # the rest is shown as it is


class TokenConfig(KafkaConnectorConfig, frozen=True, kw_only=True):
    """A connector config of a user's own with one more secret, checked by ``require``."""

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)
    api_token: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "api_token", self.api_token is None or len(self.api_token) > 40, "too short")


def test_a_subclass_adds_secret_fields_and_keeps_its_bases() -> None:
    config = TokenConfig(**{**BASES["sasl"], "connector_name": "k", "bootstrap_server": "h:1"})
    assert "sasl_plain_password='***'" in repr(config)
    with pytest.raises(romeways.ConfigError, match=r"TokenConfig\.api_token='\*\*\*' is") as info:
        TokenConfig(connector_name="k", bootstrap_server="h:1", api_token=CANARY)
    assert leaks(info.value) == []
    assert CANARY not in repr(
        TokenConfig(connector_name="k", bootstrap_server="h:1", api_token=CANARY * 3)
    )
