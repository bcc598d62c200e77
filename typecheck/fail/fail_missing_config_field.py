"""A queue config without its required field (the memory connector's queue)."""

import romeways

config = romeways.MemoryQueueConfig(connector_name="mem")  # expect: call-arg
