"""A user's own queue config subclass without its required field."""

import romeways


class RegionQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    region: str


config = RegionQueueConfig(connector_name="sqs", frequency=2.0)  # expect: call-arg
