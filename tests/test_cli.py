"""The ``romeways`` command: demo to completion, run MODULE[:APP], and its errors."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from romeways._cli import _parser, main
from romeways._demo import run_demo
from romeways._logging import JsonFormatter

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_to_completion_and_every_count_adds_up() -> None:
    out = io.StringIO()
    assert run_demo(messages=2_000, out=out) == 0
    text = out.getvalue()
    assert "summary: handled 1998, resent 50, dead-lettered 2" in text
    assert "every count adds up" in text


def test_demo_console_script_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "romeways", "demo", "--messages", "500"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "every count adds up" in result.stdout


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "romeways", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.strip().startswith("romeways 0.")


def test_run_bad_paths_exit_2_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "noapp.py").write_text("x = 1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cases = {
        "no_such_module_here": "cannot import module 'no_such_module_here'",
        "noapp:app": "noapp:app is missing, not a romeways.App",
        "noapp": "registers no consumers",
    }
    for target, expected in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "romeways", "run", target],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 2, (target, result.stderr)
        assert expected in result.stderr, (target, result.stderr)


def test_run_module_app_until_sigterm_with_json_logs(tmp_path: Path) -> None:
    (tmp_path / "consumers.py").write_text(
        textwrap.dedent(
            """
            import multiprocessing
            import romeways

            queue = multiprocessing.Queue()
            for i in range(3):
                queue.put(f"m{i}".encode())
            app = romeways.App(shutdown_timeout=3)
            config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.1)

            @app.queue_consumer(queue_name="q", config=config)
            async def handle(message: romeways.Message) -> None:
                print("handled", message.payload, flush=True)

            app.connector_register(
                connector=romeways.MemoryQueueConnector,
                config=romeways.MemoryConnectorConfig(connector_name="mem"),
                spawn_process=True,
            )
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "romeways", "run", "consumers:app", "--log-format", "json"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline().strip() for _ in range(3)]
        assert seen == ["handled m0", "handled m1", "handled m2"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [msgspec.json.decode(line) for line in err.splitlines() if line.startswith("{")]
    consuming = [rec for rec in lines if "consuming queue" in rec["message"]]
    assert consuming and consuming[0]["queue"] == "q" and consuming[0]["connector"] == "mem"


def test_json_formatter_keeps_context_fields() -> None:
    import logging

    record = logging.LogRecord("romeways", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.queue = "orders"
    record.connector = "kafka-1"
    line = msgspec.json.decode(JsonFormatter().format(record))
    assert line["message"] == "boom x"
    assert line["queue"] == "orders" and line["connector"] == "kafka-1"
    assert line["level"] == "ERROR"
    assert line["time"].endswith("Z")


def test_main_returns_2_on_bad_target() -> None:
    assert main(["run", "definitely_not_a_module_xyz"]) == 2


def test_run_an_app_whose_config_is_invalid_names_the_field_and_never_shows_a_secret(
    tmp_path: Path,
) -> None:
    """A ConfigError at import: exit 2, the field named, the secret's value nowhere (stderr,
    stdout); one module per secret field of KafkaConnectorConfig."""
    canary = "canary-CLI-s3cret-5e2d"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for field in ("sasl_plain_password", "ssl_password"):
        (tmp_path / f"bad_{field}.py").write_text(
            textwrap.dedent(
                f"""
                import romeways

                app = romeways.App()
                config = romeways.KafkaConnectorConfig(
                    connector_name="kafka",
                    bootstrap_server="127.0.0.1:9092",
                    {field}={canary!r},  # no SASL/SSL security_protocol: invalid
                )
                """
            )
        )
        result = subprocess.run(
            [sys.executable, "-m", "romeways", "run", f"bad_{field}:app", "--log-level", "DEBUG"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )
        assert result.returncode == 2, result.stderr
        assert f"KafkaConnectorConfig.{field}='***' is invalid" in result.stderr, result.stderr
        assert canary not in result.stderr + result.stdout, result.stderr


def test_run_reports_an_import_error_inside_the_module_as_it_is(tmp_path: Path) -> None:
    """``pkg_mod`` imports a missing module ``pkg`` (a prefix of its name): that import error is
    reported with the line that raised it, not as "run from the directory that contains it",
    which is only said when the target module or one of its parent packages is missing."""
    (tmp_path / "pkg_mod.py").write_text("import romeways\nimport pkg  # missing\n")
    (tmp_path / "present").mkdir()
    (tmp_path / "present" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}

    def run(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "romeways", "run", target],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )

    inner = run("pkg_mod:app")
    assert inner.returncode != 0
    assert "run from the directory" not in inner.stderr, inner.stderr
    assert "No module named 'pkg'" in inner.stderr, inner.stderr
    assert "import pkg  # missing" in inner.stderr, inner.stderr  # where it was raised
    for target, missing in {
        "pkg_mod_absent": "pkg_mod_absent",
        "absent_pkg.consumers": "absent_pkg",
        "present.absent": "present.absent",
    }.items():
        result = run(target)
        assert result.returncode == 2, (target, result.stderr)
        assert f"no module named {missing!r}; run from the directory" in result.stderr, (
            target,
            result.stderr,
        )


def test_shutdown_timeout_must_be_a_finite_number_of_seconds_above_zero(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As App() has it: -1, 0, nan (which SIGKILLed workers at once) and inf are refused before
    anything is imported, with an error naming the option; exit code 2."""
    for bad in ("-1", "0", "nan", "inf", "-inf", "soon"):
        with pytest.raises(SystemExit) as info:
            main(["run", "definitely_not_a_module_xyz", f"--shutdown-timeout={bad}"])
        assert info.value.code == 2, bad
        err = capsys.readouterr().err
        assert "--shutdown-timeout" in err and repr(bad) in err, err
        assert "finite number of seconds > 0" in err, err
        assert "cannot import" not in err, err
    args = _parser().parse_args(["run", "m", "--shutdown-timeout", "2.5"])
    assert args.shutdown_timeout == 2.5
