"""A plain config subclass (no class keywords, as docs/configs.md shows) is frozen and
keyword-only at run time, as mypy and pyright see it (issue 14, point 1)."""

from __future__ import annotations

import pickle
import types
from multiprocessing import Queue

import msgspec
import pytest

import romeways


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str = "eu"


class TenantConnectorConfig(romeways.GenericConnectorConfig):
    tenant: str


def test_plain_subclass_is_frozen() -> None:
    config = RegionQueueConfig(connector_name="mem", queue=Queue())
    with pytest.raises(AttributeError, match="immutable type: 'RegionQueueConfig'"):
        config.region = "us"  # type: ignore[misc]  # the misuse under test
    with pytest.raises(AttributeError):
        TenantConnectorConfig(connector_name="t", tenant="a").tenant = "b"  # type: ignore[misc]  # the misuse under test
    assert hash(config) == hash(msgspec.structs.replace(config))


def test_plain_subclass_is_keyword_only() -> None:
    with pytest.raises(TypeError, match="keyword arguments"):
        RegionQueueConfig("us", connector_name="mem", queue=Queue())  # type: ignore[misc]  # the misuse under test
    with pytest.raises(TypeError, match="keyword arguments"):
        TenantConnectorConfig("acme", connector_name="t")  # type: ignore[call-arg, misc]  # the misuse under test


def test_required_field_after_a_default_is_allowed() -> None:
    # Without keyword-only fields msgspec refuses this class ("cannot follow optional fields").
    class Sharded(RegionQueueConfig):
        shards: int

    config = Sharded(connector_name="mem", queue=Queue(), shards=3)
    assert (config.region, config.shards, config.retries) == ("eu", 3, 3)


@pytest.mark.parametrize("option", ["frozen", "kw_only"])
def test_asking_for_a_mutable_or_positional_config_is_refused(option: str) -> None:
    with pytest.raises(romeways.ConfigError, match=rf"class Loose\({option}=False\)"):
        types.new_class("Loose", (romeways.GenericQueueConfig,), {option: False})


def test_explicit_class_keywords_keep_working() -> None:
    class Explicit(romeways.MemoryQueueConfig, frozen=True, kw_only=True):
        zone: str

    config = Explicit(connector_name="mem", queue=Queue(), zone="a")
    with pytest.raises(AttributeError):
        config.zone = "b"  # type: ignore[misc]  # the misuse under test


def test_subclass_still_validates_encodes_and_pickles() -> None:
    with pytest.raises(romeways.ConfigError, match=r"RegionQueueConfig\.max_chunk_size=0"):
        RegionQueueConfig(connector_name="mem", queue=Queue(), max_chunk_size=0)
    config = TenantConnectorConfig(connector_name="t", tenant="acme")
    assert pickle.loads(pickle.dumps(config)) == config
    data = msgspec.json.encode(config)
    assert msgspec.json.decode(data, type=TenantConnectorConfig) == config
    assert {f.name for f in msgspec.structs.fields(TenantConnectorConfig)} == {
        "connector_name",
        "tenant",
    }
