"""The public API surface: ``__all__`` is sorted and complete, every name in it imports, and the
names romeways 0.2 users rely on are still there."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types
import typing
from typing import Any

import typing_extensions

import romeways
import romeways.otel
import romeways.testing

NAMES_FROM_0_2 = (
    "AQueueConnector",
    "GenericConnectorConfig",
    "GenericQueueConfig",
    "MemoryConnectorConfig",
    "MemoryQueueConfig",
    "MemoryQueueConnector",
    "Message",
    "ResendException",
    "connector_register",
    "queue_consumer",
    "start",
)


def _is_api(name: str, value: object) -> bool:
    """Whether a module attribute is something users import (not a helper the module uses)."""
    if name.startswith("_") or isinstance(value, types.ModuleType):
        return False
    if isinstance(value, typing.TypeVar | typing_extensions.TypeVar):
        return False  # TypeVars used in signatures; users write their own
    module = getattr(value, "__module__", None)
    if value is typing.TYPE_CHECKING or name == "annotations":
        return False
    return module is None or module.split(".")[0] not in ("typing", "collections", "__future__")


def _public(module: types.ModuleType, lazy: tuple[str, ...] = ()) -> set[str]:
    names = {n for n, v in vars(module).items() if _is_api(n, v)}
    return names | set(lazy)


def test_all_is_sorted_and_unique() -> None:
    for module in (romeways, romeways.testing, romeways.otel):
        assert module.__all__ == sorted(module.__all__), module.__name__
        assert len(set(module.__all__)) == len(module.__all__), module.__name__


def test_all_is_complete() -> None:
    # Kafka names load on first touch (module __getattr__), so they are not in vars() yet.
    kafka = ("KafkaConnectorConfig", "KafkaQueueConfig", "KafkaQueueConnector")
    missing = _public(romeways, kafka) - set(romeways.__all__)
    assert not missing, f"public in romeways but not in __all__: {sorted(missing)}"
    missing = _public(romeways.testing) - set(romeways.testing.__all__)
    assert not missing, f"public in romeways.testing but not in __all__: {sorted(missing)}"
    # romeways.otel re-exports nothing of opentelemetry's: only its own names are its API.
    own = {
        n for n in _public(romeways.otel) if getattr(romeways.otel, n).__module__ == "romeways.otel"
    }
    assert own == set(romeways.otel.__all__), sorted(own ^ set(romeways.otel.__all__))


def test_every_name_in_all_imports_and_is_documented() -> None:
    for module in (romeways, romeways.testing, romeways.otel):
        for name in module.__all__:
            value: Any = getattr(module, name)
            if typing.get_origin(value) is not None:
                continue  # a type alias such as DeadLetterHook
            if isinstance(value, type) or inspect.isfunction(value):
                assert (value.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"


def test_names_from_romeways_0_2_are_kept() -> None:
    assert set(NAMES_FROM_0_2) <= set(romeways.__all__)


def test_star_import_and_lazy_kafka_in_a_fresh_interpreter() -> None:
    code = (
        "import sys\n"
        "import romeways\n"
        "assert 'aiokafka' not in sys.modules, 'import romeways loaded aiokafka'\n"
        "assert 'opentelemetry' not in sys.modules, 'import romeways loaded opentelemetry'\n"
        "import romeways.testing\n"
        "assert 'pytest' not in sys.modules, 'romeways.testing must not need pytest'\n"
        "namespace = {}\n"
        "exec('from romeways import *', namespace)\n"
        "missing = [n for n in romeways.__all__ if n not in namespace]\n"
        "assert not missing, missing\n"
        "exec('from romeways.testing import *', namespace)\n"
        "missing = [n for n in romeways.testing.__all__ if n not in namespace]\n"
        "assert not missing, missing\n"
        "assert namespace['KafkaQueueConnector'].__module__ == 'romeways.connectors.kafka'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert romeways.__version__ == version("romeways")
