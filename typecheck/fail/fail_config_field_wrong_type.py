"""A config field of the wrong type: msgspec builds the Struct without checking it."""

import romeways

config = romeways.GenericQueueConfig(connector_name="mem", max_chunk_size=2.5)  # expect: arg-type
