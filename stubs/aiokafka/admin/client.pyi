from typing import Any

from .new_topic import NewTopic

class AIOKafkaAdminClient:
    def __init__(
        self,
        *,
        bootstrap_servers: str | list[str] = ...,
        client_id: str = ...,
        request_timeout_ms: int = ...,
    ) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def create_topics(
        self, new_topics: list[NewTopic], timeout_ms: int | None = ..., validate_only: bool = ...
    ) -> Any: ...
