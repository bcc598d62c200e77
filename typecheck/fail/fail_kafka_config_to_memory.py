"""The issue's example: a Kafka connector config given to the memory connector."""

import romeways

kafka = romeways.KafkaConnectorConfig(connector_name="kafka", bootstrap_server="localhost:9092")
app = romeways.App()
app.connector_register(connector=romeways.MemoryQueueConnector, config=kafka)  # expect: misc
