"""The other way round: a memory connector config given to the Kafka connector."""

import romeways

memory = romeways.MemoryConnectorConfig(connector_name="memory")
app = romeways.App()
app.connector_register(connector=romeways.KafkaQueueConnector, config=memory)  # expect: misc
