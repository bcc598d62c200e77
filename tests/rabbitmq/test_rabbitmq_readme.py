"""The RabbitMQ page's example, taken from docs/connectors/rabbitmq.md and run as written (a
worker process) against the test session's vhost, on messages published before it started;
SIGTERM ends it with exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from faults.rabbithelp import delete_queue, publish, run

ROOT = Path(__file__).resolve().parent.parent.parent


def page_example() -> str:
    section = (ROOT / "docs" / "connectors" / "rabbitmq.md").read_text()
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```\n", start)]


def test_the_page_example_runs_as_written(rabbit_url: str, tmp_path: Path) -> None:
    source = page_example()
    assert 'queue="payments"' in source and "asyncio.run(romeways.start())" in source
    script = tmp_path / "payments.py"
    script.write_text(source)
    payments = [msgspec.json.encode({"id": i, "amount": 9.5 + i}) for i in range(3)]
    run(publish(rabbit_url, "payments", payments))
    log = tmp_path / "out.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env={**os.environ, "AMQP_URL": rabbit_url, "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 30
            while log.read_text().count("Payment(") < 3:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        output = log.read_text()
        assert code == 0, output
        for i in range(3):
            assert output.count(f"Payment(id={i}, amount={9.5 + i})") == 1, output
        assert "Traceback" not in output, output
    finally:
        run(delete_queue(rabbit_url, "payments"))
