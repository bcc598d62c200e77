"""Secret fields are masked in the repr of every config, not only Kafka's: the two config bases
mask what ``secret_fields`` lists (a subclass's own and its bases')."""

from __future__ import annotations

from typing import ClassVar

import romeways

CANARY = "canary-T0ken-5ecret"


class TokenConnectorConfig(romeways.GenericConnectorConfig):
    """A connector config of a user's own, with a token."""

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)
    api_token: str | None = None
    region: str = "eu"


class SignedConnectorConfig(TokenConnectorConfig):
    """Adds a secret; the base's stays masked."""

    secret_fields: ClassVar[tuple[str, ...]] = ("signing_key",)
    signing_key: str = ""


class PasswordQueueConfig(romeways.GenericQueueConfig):
    """A queue config with a password of its own."""

    secret_fields: ClassVar[tuple[str, ...]] = ("password",)
    password: str | None = None


def test_a_connector_config_subclass_masks_its_secret_fields_in_repr() -> None:
    config = TokenConnectorConfig(connector_name="c", api_token=CANARY)
    assert repr(config) == "TokenConnectorConfig(connector_name='c', api_token='***', region='eu')"
    assert CANARY not in str(config)
    assert CANARY not in repr(config.__rich_repr__())
    assert dict(config.__rich_repr__())["region"] == "eu"
    # Unset (None) is shown as it is: nothing to hide.
    assert "api_token=None" in repr(TokenConnectorConfig(connector_name="c"))


def test_a_subclass_of_a_subclass_keeps_its_bases_secrets_masked() -> None:
    config = SignedConnectorConfig(connector_name="c", api_token=CANARY, signing_key=CANARY)
    text = repr(config)
    assert CANARY not in text
    assert "api_token='***'" in text and "signing_key='***'" in text


def test_a_queue_config_subclass_masks_its_secret_fields_in_repr() -> None:
    config = PasswordQueueConfig(connector_name="c", password=CANARY)
    text = repr(config)
    assert CANARY not in text and "password='***'" in text
    assert text.startswith("PasswordQueueConfig(connector_name='c', frequency=1.0,")
