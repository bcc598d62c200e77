import ssl

class AIOKafkaConnection:
    def close(self, reason: int | None = None, exc: BaseException | None = None) -> None: ...

async def create_conn(
    host: str,
    port: int,
    *,
    client_id: str = "aiokafka",
    request_timeout_ms: int = 40000,
    ssl_context: ssl.SSLContext | None = None,
    security_protocol: str = "PLAINTEXT",
    max_idle_ms: int | None = None,
    sasl_mechanism: str | None = None,
    sasl_plain_username: str | None = None,
    sasl_plain_password: str | None = None,
) -> AIOKafkaConnection: ...
