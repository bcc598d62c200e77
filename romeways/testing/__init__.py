"""Testing helpers for romeways apps: ``ConnectorContract`` / ``check_connector`` check a
connector against the connector protocol."""

from ._contract import CONTRACT_CHECKS as CONTRACT_CHECKS
from ._contract import ConnectorContract as ConnectorContract
from ._contract import ContractError as ContractError
from ._contract import check_connector as check_connector

__all__ = [
    "CONTRACT_CHECKS",
    "ConnectorContract",
    "ContractError",
    "check_connector",
]
