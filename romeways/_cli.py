"""The ``romeways`` command: ``romeways run MODULE[:APP] [--reload]``, ``romeways asyncapi
MODULE[:APP]``, ``romeways replay MODULE[:APP] QUEUE`` and ``romeways demo``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import math
import os
import sys
from collections.abc import Sequence

from . import __version__, default_app
from ._app import App, is_app
from ._errors import RomewaysError
from ._logging import configure
from ._reload import follow_parent, note_loaded, run_reload
from ._telemetry import add_run_options, run_with_options

logger = logging.getLogger("romeways")


def load_app(target: str) -> App:
    """Import ``MODULE[:APP]`` and return its App: the named attribute, else ``app``, else the
    default app the module-level ``romeways.queue_consumer`` registered on."""
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise RomewaysError(f"{target!r}: give a module, as in 'romeways run myapp.consumers:app'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the target itself or a parent package of it missing is a path problem; any
        # other missing module is an import inside the target: its traceback says where.
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise RomewaysError(
                f"cannot import module {module_name!r} (from {target!r}): no module named "
                f"{exc.name!r}; run from the directory that contains it or set PYTHONPATH"
            ) from exc
        raise
    if attr:
        found = getattr(module, attr, None)
        if not is_app(found):
            apps = [n for n, v in vars(module).items() if is_app(v)]
            raise RomewaysError(
                f"{module_name}:{attr} is {'missing' if found is None else type(found).__name__}, "
                f"not a romeways.App (Apps in {module_name}: {', '.join(apps) or 'none'})"
            )
        return found
    found = getattr(module, "app", None)
    if is_app(found):
        return found
    if default_app.routes:
        return default_app
    raise RomewaysError(
        f"module {module_name!r} registers no consumers: decorate handlers with "
        "@romeways.queue_consumer, or name an App as MODULE:APP"
    )


def _seconds(text: str) -> float:
    """``--shutdown-timeout``: a finite number of seconds > 0, as ``App()`` requires."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds > 0")
    return seconds


def _count(text: str) -> int:
    """``--limit``: a whole number >= 1."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1")
    return count


def _replay(app: App, queue: str, limit: int | None) -> int:
    from ._dead_letters import ReplayResult, replay_dead_letters

    async def replay() -> ReplayResult:
        try:
            return await replay_dead_letters(app, queue, limit=limit)
        finally:
            await app.close_publishers()

    result = asyncio.run(replay())
    print(f"replayed {result.replayed} dead letter(s) from {queue!r}; {result.skipped} left on it")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="romeways", description=__doc__)
    parser.add_argument("--version", action="version", version=f"romeways {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the consumers a module registers until SIGTERM")
    run.add_argument("target", metavar="MODULE[:APP]")
    demo = commands.add_parser("demo", help="run a self-contained memory-queue demo")
    demo.add_argument("--messages", type=int, default=20_000, help="how many messages to send")
    replay = commands.add_parser(
        "replay", help="put the dead letters of a dead-letter queue back on their source queues"
    )
    replay.add_argument("target", metavar="MODULE[:APP]")
    replay.add_argument("queue", metavar="DEAD_LETTER_QUEUE")
    replay.add_argument("--limit", type=_count, metavar="N", help="replay at most N messages")
    for sub, level in ((run, "INFO"), (demo, "CRITICAL"), (replay, "INFO")):
        sub.add_argument("--log-level", default=level, type=str.upper)
        sub.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument(
        "--shutdown-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="override the App's shutdown timeout (seconds > 0)",
    )
    add_run_options(run)
    run.add_argument(
        "--reload",
        action="store_true",
        help="development only: run the app in a child process and restart it whenever a .py "
        "file under --reload-dir changes (needs romeways[reload])",
    )
    run.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="a directory --reload watches (repeatable; default: the current directory)",
    )
    spec = commands.add_parser(
        "asyncapi", help="write the AsyncAPI 3.0.0 document of a module's app (JSON or YAML)"
    )
    spec.add_argument("target", metavar="MODULE[:APP]")
    spec.add_argument("--format", choices=("json", "yaml"), default="json")
    spec.add_argument("--output", metavar="FILE", help="write it to FILE (default: stdout)")
    spec.add_argument("--title", help="info.title (default: MODULE[:APP] as given)")
    spec.add_argument(
        "--api-version", default="0.0.0", help="info.version: your app's interface version"
    )
    spec.add_argument("--log-level", default="WARNING", type=str.upper)
    spec.add_argument("--log-format", choices=("text", "json"), default="text")
    return parser


def _write_asyncapi(args: argparse.Namespace) -> int:
    """``romeways asyncapi``: the document of the target's app, to stdout or ``--output``."""
    import msgspec

    from ._asyncapi import asyncapi_document

    app = load_app(args.target)
    document = asyncapi_document(app, title=args.title or args.target, version=args.api_version)
    if args.format == "yaml":
        # msgspec.yaml imports PyYAML when first used: say what to do before that.
        try:
            importlib.import_module("yaml")
        except ImportError:
            raise RomewaysError(
                "--format yaml needs PyYAML; install it with: pip install 'romeways[asyncapi]' "
                "(or use --format json)"
            ) from None
        data = msgspec.yaml.encode(document)
    else:
        data = msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            with open(args.output, "wb") as out:
                out.write(data)
        except OSError as exc:
            raise RomewaysError(f"--output {args.output!r}: cannot write it: {exc}") from exc
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.reload_dir and not args.reload:
        parser.error("--reload-dir is only for --reload")
    configure(args.log_level, args.log_format)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(messages=args.messages)
        if args.command == "asyncapi":
            return _write_asyncapi(args)
        if args.command == "replay":
            return _replay(load_app(args.target), args.queue, args.limit)
        if args.reload:
            return run_reload(sys.argv[1:] if argv is None else argv, args.reload_dir or [])
        follow_parent()
        app = load_app(args.target)
        if args.shutdown_timeout is not None:
            app.shutdown_timeout = args.shutdown_timeout
        note_loaded(app.shutdown_timeout)
        asyncio.run(run_with_options(app, args))
    except RomewaysError as exc:
        print(f"romeways: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
