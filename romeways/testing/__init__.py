"""Testing helpers for romeways apps: ``TestKit`` runs an App's handlers in-process;
``ConnectorContract`` / ``check_connector`` check a connector against the connector protocol."""

from ._contract import CONTRACT_CHECKS as CONTRACT_CHECKS
from ._contract import ConnectorContract as ConnectorContract
from ._contract import ContractError as ContractError
from ._contract import check_connector as check_connector
from ._kit import DeliveryReport as DeliveryReport
from ._kit import PayloadError as PayloadError
from ._kit import TestKit as TestKit

__all__ = [
    "CONTRACT_CHECKS",
    "ConnectorContract",
    "ContractError",
    "DeliveryReport",
    "PayloadError",
    "TestKit",
    "check_connector",
]
