"""Testing helpers for romeways apps: ``TestKit`` runs an App's handlers in-process;
``ConnectorContract`` / ``check_connector`` check a connector against the connector protocol;
``RecordingConnector`` records, as typed events, what romeways asks of a connector."""

from ._contract import CONTRACT_CHECKS as CONTRACT_CHECKS
from ._contract import ConnectorContract as ConnectorContract
from ._contract import ContractError as ContractError
from ._contract import check_connector as check_connector
from ._kit import DeliveryReport as DeliveryReport
from ._kit import PayloadError as PayloadError
from ._kit import TestKit as TestKit
from ._recording import Acked as Acked
from ._recording import Closed as Closed
from ._recording import ConnectorEvent as ConnectorEvent
from ._recording import Fetched as Fetched
from ._recording import Published as Published
from ._recording import RecordingConnector as RecordingConnector
from ._recording import Resent as Resent
from ._recording import Sent as Sent
from ._recording import Started as Started

__all__ = [
    "Acked",
    "CONTRACT_CHECKS",
    "Closed",
    "ConnectorContract",
    "ConnectorEvent",
    "ContractError",
    "DeliveryReport",
    "Fetched",
    "PayloadError",
    "Published",
    "RecordingConnector",
    "Resent",
    "Sent",
    "Started",
    "TestKit",
    "check_connector",
]
