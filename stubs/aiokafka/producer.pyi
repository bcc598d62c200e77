import ssl
from collections.abc import Sequence

from .structs import RecordMetadata

class AIOKafkaProducer:
    def __init__(
        self,
        *,
        bootstrap_servers: str | list[str] = ...,
        client_id: str | None = ...,
        metadata_max_age_ms: int = ...,
        request_timeout_ms: int = ...,
        acks: int | str = ...,
        compression_type: str | None = ...,
        max_batch_size: int = ...,
        max_request_size: int = ...,
        linger_ms: int = ...,
        retry_backoff_ms: int = ...,
        security_protocol: str = ...,
        ssl_context: ssl.SSLContext | None = ...,
        enable_idempotence: bool = ...,
        sasl_mechanism: str = ...,
        sasl_plain_password: str | None = ...,
        sasl_plain_username: str | None = ...,
    ) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = ...,
        key: bytes | None = ...,
        partition: int | None = ...,
        timestamp_ms: int | None = ...,
        headers: Sequence[tuple[str, bytes]] | None = ...,
    ) -> RecordMetadata: ...
