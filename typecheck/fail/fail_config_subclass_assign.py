"""Assigning a field of a plain config subclass: configs are frozen, subclasses too."""

from multiprocessing import Queue

import romeways


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str = "eu"


config = RegionQueueConfig(connector_name="mem", queue=Queue())
config.region = "us"  # expect: misc
