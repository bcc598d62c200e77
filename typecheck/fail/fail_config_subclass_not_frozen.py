"""A config subclass that asks to be mutable: a config must not change under a running worker."""

import romeways


class MutableQueueConfig(romeways.GenericQueueConfig, frozen=False):  # expect: misc
    region: str = "eu"
