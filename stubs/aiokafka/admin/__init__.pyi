from .client import AIOKafkaAdminClient as AIOKafkaAdminClient
from .new_topic import NewTopic as NewTopic
