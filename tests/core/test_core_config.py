"""Config validation: nonsense values fail at construction naming the field; configs are frozen
keyword-only Structs that users can subclass."""

from __future__ import annotations

from multiprocessing import Queue
from typing import Any

import msgspec
import pytest

import romeways


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_chunk_size", 0),
        ("max_chunk_size", -5),
        ("frequency", -0.1),
        ("frequency", float("nan")),
        ("frequency", float("inf")),
        ("retries", -1),
        ("connector_name", ""),
        ("connector_name", "   "),
        ("handler_timeout", 0),
        ("handler_timeout", -1.0),
    ],
)
def test_queue_config_rejects_nonsense_naming_the_field(field: str, value: Any) -> None:
    options: dict[str, Any] = {"connector_name": "c", field: value}
    with pytest.raises(romeways.ConfigError) as info:
        romeways.GenericQueueConfig(**options)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert f"GenericQueueConfig.{field}=" in text
    assert repr(value) in text


def test_queue_config_accepts_edge_values() -> None:
    config = romeways.GenericQueueConfig(
        connector_name="c", frequency=0, max_chunk_size=1, retries=0, handler_timeout=0.01
    )
    assert (config.frequency, config.max_chunk_size, config.retries) == (0, 1, 0)


def test_queue_config_defaults() -> None:
    config = romeways.GenericQueueConfig(connector_name="c")
    assert config.frequency == 1.0
    assert config.max_chunk_size == 10
    assert config.sequential is False
    assert config.retries == 3
    assert config.handler_timeout is None


def test_connector_config_rejects_empty_name() -> None:
    with pytest.raises(romeways.ConfigError, match=r"GenericConnectorConfig\.connector_name="):
        romeways.GenericConnectorConfig(connector_name="")
    with pytest.raises(romeways.ConfigError, match=r"MemoryConnectorConfig\.connector_name="):
        romeways.MemoryConnectorConfig(connector_name=" ")


def test_memory_queue_config_validates_generic_fields_and_queue() -> None:
    with pytest.raises(romeways.ConfigError, match=r"MemoryQueueConfig\.max_chunk_size=0"):
        romeways.MemoryQueueConfig(connector_name="m", queue=Queue(), max_chunk_size=0)
    not_a_queue: Any = [1, 2]
    with pytest.raises(romeways.ConfigError, match=r"MemoryQueueConfig\.queue="):
        romeways.MemoryQueueConfig(connector_name="m", queue=not_a_queue)


class MyQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    region: str


class PlainSubclassConfig(romeways.GenericQueueConfig):
    """The issue's spelling, without repeating frozen/kw_only: they are inherited at runtime."""

    region: str


@pytest.mark.parametrize("cls", [MyQueueConfig, PlainSubclassConfig])
def test_subclassed_queue_config_works_and_is_validated(
    cls: type[MyQueueConfig] | type[PlainSubclassConfig],
) -> None:
    config = cls(connector_name="c", region="eu-west-1", retries=1)
    assert config.region == "eu-west-1"
    assert config.retries == 1
    assert isinstance(config, romeways.GenericQueueConfig)
    with pytest.raises(AttributeError):
        config.region = "us"  # type: ignore[misc]
    with pytest.raises(romeways.ConfigError, match=rf"{cls.__name__}\.retries=-1"):
        cls(connector_name="c", region="eu", retries=-1)
    positional: Any = cls
    with pytest.raises(TypeError):
        positional("c", "eu")  # keyword-only


def test_configs_are_frozen() -> None:
    queue_config = romeways.GenericQueueConfig(connector_name="c")
    with pytest.raises(AttributeError):
        queue_config.retries = 10  # type: ignore[misc]
    connector_config = romeways.MemoryConnectorConfig(connector_name="m")
    with pytest.raises(AttributeError):
        connector_config.connector_name = "n"  # type: ignore[misc]
    memory_config = romeways.MemoryQueueConfig(connector_name="m", queue=Queue())
    with pytest.raises(AttributeError):
        memory_config.max_chunk_size = 3  # type: ignore[misc]
    # Rebuilding with a change re-validates.
    with pytest.raises(romeways.ConfigError, match="max_chunk_size"):
        msgspec.structs.replace(queue_config, max_chunk_size=0)
