"""The Kafka page's example (docs/connectors/kafka.md), run as a script against the broker, on
messages produced before the consumer started; stopped with SIGTERM, it exits 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from broker import create_topic, produce

from .conftest import ConsumerProcess, run_async

README_EXAMPLE = """
import asyncio
import os

import romeways

config_q = romeways.KafkaQueueConfig(topic=os.environ["TOPIC"], group_id=os.environ["GROUP"],
                                     connector_name="kafka-dev1",
                                     frequency=1, max_chunk_size=10, sequential=False)

@romeways.queue_consumer(queue_name="queue.payment.done", config=config_q)
async def controller(message: romeways.Message):
    print(message)

config_p = romeways.KafkaConnectorConfig(connector_name="kafka-dev1",
                                         bootstrap_server=os.environ["BOOTSTRAP"], client_id="1")
romeways.connector_register(connector=romeways.KafkaQueueConnector, config=config_p,
                            spawn_process={spawn})
asyncio.run(romeways.start())
"""


@pytest.mark.parametrize("spawn_process", [True, False], ids=["spawn_process", "in_process"])
def test_readme_example(
    spawn_process: bool,
    tmp_path: Path,
    kafka_bootstrap: str,
    names: Callable[[str], str],
    processes: Callable[..., ConsumerProcess],
) -> None:
    topic, group = names("readme"), names("readme-group")
    run_async(create_topic(kafka_bootstrap, topic, partitions=1))
    payloads = [f"payment {i} done" for i in range(5)]
    run_async(produce(kafka_bootstrap, topic, [p.encode() for p in payloads]))

    script = tmp_path / "readme_example.py"
    script.write_text(README_EXAMPLE.replace("{spawn}", str(spawn_process)))
    consumer = processes(
        [str(script)], env={"TOPIC": topic, "GROUP": group, "BOOTSTRAP": kafka_bootstrap}
    )
    for payload in payloads:
        consumer.wait_for_output(f"payload={payload!r}", timeout=40)

    code = consumer.terminate()
    output = consumer.output()
    assert code == 0, output
    for payload in payloads:
        assert output.count(f"Message(payload={payload!r}, rw_resend_times=0)") == 1, output
    assert "Traceback" not in output, output
