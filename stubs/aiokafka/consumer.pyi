import ssl
from collections.abc import Iterable, Mapping

from .abc import ConsumerRebalanceListener
from .structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

class AIOKafkaConsumer:
    def __init__(
        self,
        *topics: str,
        bootstrap_servers: str | list[str] = ...,
        client_id: str = ...,
        group_id: str | None = ...,
        fetch_max_wait_ms: int = ...,
        fetch_max_bytes: int = ...,
        fetch_min_bytes: int = ...,
        max_partition_fetch_bytes: int = ...,
        request_timeout_ms: int = ...,
        retry_backoff_ms: int = ...,
        auto_offset_reset: str = ...,
        enable_auto_commit: bool = ...,
        metadata_max_age_ms: int = ...,
        max_poll_interval_ms: int = ...,
        rebalance_timeout_ms: int | None = ...,
        session_timeout_ms: int = ...,
        heartbeat_interval_ms: int = ...,
        max_poll_records: int | None = ...,
        ssl_context: ssl.SSLContext | None = ...,
        security_protocol: str = ...,
        isolation_level: str = ...,
        sasl_mechanism: str = ...,
        sasl_plain_password: str | None = ...,
        sasl_plain_username: str | None = ...,
    ) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def subscribe(
        self,
        topics: Iterable[str] = ...,
        pattern: str | None = ...,
        listener: ConsumerRebalanceListener | None = ...,
    ) -> None: ...
    def assign(self, partitions: Iterable[TopicPartition]) -> None: ...
    def assignment(self) -> frozenset[TopicPartition]: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]: ...
    async def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = ...
    ) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def topics(self) -> set[str]: ...
