# Hand-written stubs for the subset of aiokafka (>= 0.14) that romeways and its tests use.
# Check them against the installed aiokafka (only omitted optional parameters may be reported):
#   MYPYPATH=stubs python -m mypy.stubtest aiokafka --ignore-missing-stub
from .abc import ConsumerRebalanceListener as ConsumerRebalanceListener
from .consumer import AIOKafkaConsumer as AIOKafkaConsumer
from .producer import AIOKafkaProducer as AIOKafkaProducer
from .structs import ConsumerRecord as ConsumerRecord
from .structs import OffsetAndMetadata as OffsetAndMetadata
from .structs import TopicPartition as TopicPartition

__version__: str
