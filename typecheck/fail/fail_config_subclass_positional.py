"""A positional argument to a plain config subclass: its fields are keyword-only, its own too."""

from multiprocessing import Queue

import romeways


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str


config = RegionQueueConfig("mem", region="eu", queue=Queue())  # expect: call-arg
