"""A class that does not implement the connector protocol."""

import romeways


class Poller:
    def __init__(self, *, connector_config: object, queue_name: str, config: object) -> None:
        self.queue_name = queue_name

    def poll(self) -> list[bytes]:
        return []


config = romeways.GenericConnectorConfig(connector_name="poller")
romeways.App().connector_register(connector=Poller, config=config)  # expect: arg-type
