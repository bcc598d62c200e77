"""dead_letter takes an async hook or a DeadLetterQueue: a queue name alone is refused."""

import romeways

app = romeways.App()
config = romeways.GenericQueueConfig(connector_name="mem")


@app.queue_consumer(queue_name="q", config=config, dead_letter="q.dlq")  # expect: arg-type
async def handle(message: romeways.Message[str]) -> None: ...
