"""Every ```python block of README.md and of every docs/ page passes ``mypy --strict`` and
pyright strict (issues 14 and 20).

The files are read in order: README.md, then the docs pages in the order of the mkdocs.yml nav,
then any page not (yet) in the nav, by path. Each block becomes a module of its own in a temporary
directory, with a minimal preamble: for every name the block uses but neither defines nor
imports, an import from the nearest earlier block that defines it (as a reader takes it), else
the test's ``FIXTURES`` entry of that name (a stand-in stated here, resolved the same way). One
mypy run and one pyright run cover all blocks of all files.

A line of a block that ends in ``# error: ...`` shows a misuse on purpose: both checkers must
report an error on it (and on no other line). A block preceded by
``<!-- readme-check: skip (why) -->`` is not checked; the reason is required.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
_NAV_PAGE = re.compile(r"^\s*-\s+(?:[^:#]+:\s+)?(?P<page>[\w./-]+\.md)\s*$")


def nav_pages() -> list[str]:
    """The pages of mkdocs.yml's nav, in order (commented-out entries are not pages yet)."""
    text = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1]
    return [m.group("page") for line in text.splitlines() if (m := _NAV_PAGE.match(line))]


def doc_files() -> list[Path]:
    """README.md, the nav's pages in order, then the other pages of docs/ by path."""
    pages = [DOCS / page for page in nav_pages()]
    others = sorted(set(DOCS.rglob("*.md")) - set(pages))
    return [README, *pages, *others]


def all_blocks() -> list[Block]:
    """The python blocks of every doc file, numbered across all of them in reading order."""
    blocks: list[Block] = []
    for path in doc_files():
        for block in readme_blocks(path.read_text(), path.relative_to(ROOT).as_posix()):
            block.number = len(blocks) + 1
            blocks.append(block)
    return blocks


_SKIP = re.compile(r"<!--\s*readme-check:\s*skip\s*(?:\((?P<why>[^)]*)\))?\s*-->")
_EXPECT_ERROR = re.compile(r"#\s*error:")

# Stand-ins for what doc blocks take as given. Each value is source code; the names it uses
# are resolved like a block's.
FIXTURES: dict[str, str] = {
    "asyncio": "import asyncio",
    "dataclasses": "import dataclasses",
    "msgspec": "import msgspec",
    "os": "import os",
    "romeways": "import romeways",
    "Queue": "from multiprocessing import Queue",
    "TestKit": "from romeways.testing import TestKit",
    "asyncpg": "import asyncpg",  # the module below: asyncpg is not installed here
    "statsd": "import statsd",  # likewise
    "tracer": "from otel_stand_in import tracer",
    "DSN": 'DSN = "postgresql://localhost/app"',
    "app": "app = romeways.App()",
    "Order": "class Order(msgspec.Struct):\n    id: int\n    amount: float",
    "Refund": "class Refund(msgspec.Struct, tag=True):\n    order_id: int",
    "Charge": "class Charge(msgspec.Struct, tag=True):\n    cents: int",
    "money_config": (
        'money_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())'
    ),
    "Invoice": "class Invoice(msgspec.Struct):\n    number: str",
    "config_q": 'config_q = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())',
    "config_p": 'config_p = romeways.MemoryConnectorConfig(connector_name="mem")',
    "orders_config": (
        'orders_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())'
    ),
    "audit_config": (
        'audit_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())'
    ),
    "handle_order": (
        '@app.queue_consumer(queue_name="orders", config=orders_config)\n'
        "async def handle_order(message: romeways.Message[Order]) -> None:\n"
        "    print(message.payload)"
    ),
    "my_dead_letter_store": "my_dead_letter_store: asyncio.Queue[bytes] = asyncio.Queue()",
}

# Modules the fixtures import, written beside the blocks.
STAND_IN_MODULES: dict[str, str] = {
    "asyncpg": '''\
"""A typed stand-in for the part of asyncpg the docs use."""

from __future__ import annotations

from types import TracebackType


class Connection:
    async def execute(self, query: str, *args: object) -> str:
        return query


class _Acquire:
    async def __aenter__(self) -> Connection:
        return Connection()

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class Pool:
    def acquire(self) -> _Acquire:
        return _Acquire()

    async def close(self) -> None:
        return None


async def create_pool(dsn: str) -> Pool:
    return Pool()
''',
    "statsd": '''\
"""A typed stand-in for a statsd client."""


def timing(name: str, value: float) -> None:
    print(name, value)
''',
    "otel_stand_in": '''\
"""A typed stand-in for an OpenTelemetry tracer."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext


class Span:
    def set_attribute(self, name: str, value: str) -> None:
        print(name, value)


class Tracer:
    def start_as_current_span(self, name: str) -> AbstractContextManager[Span]:
        return nullcontext(Span())


tracer = Tracer()
''',
}


@dataclass
class Block:
    number: int  # 1-based, in reading order
    heading: str
    line: int  # line of the block's first code line in its file
    source: str
    skip: str | None = None  # the reason, when marked to be skipped
    path: str = "README.md"  # the file, relative to the repository root
    module: str = ""
    offset: int = 0  # module line = file line + offset
    expected: set[int] = field(default_factory=set[int])  # file lines that must error

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} (block {self.number}, under {self.heading!r})"


def readme_blocks(text: str, path: str = "README.md") -> list[Block]:
    """The python blocks of one Markdown file (``path`` names it in messages)."""
    blocks: list[Block] = []
    heading = "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            start = i
            end = start + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            if line.strip() == "```python":
                previous = next((x for x in reversed(lines[:start]) if x.strip()), "")
                mark = _SKIP.search(previous)
                skip = None if mark is None else (mark.group("why") or "").strip()
                source = "\n".join(lines[start + 1 : end]) + "\n"
                number = len(blocks) + 1
                blocks.append(Block(number, heading, start + 2, source, skip, path))
            i = end + 1
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        i += 1
    return blocks


def _names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The names a piece of code reads, and those it binds (anywhere, an approximation)."""
    used: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return used, bound


def _top_level_names(tree: ast.Module) -> set[str]:
    """What a block defines for later blocks: its classes, functions and variables."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            continue  # modules come from FIXTURES, not from the block that imported them
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
    return names


def _has_top_level_await(tree: ast.Module) -> bool:
    def visit(node: ast.AST) -> bool:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if isinstance(node, ast.Await | ast.AsyncFor | ast.AsyncWith):
            return True
        return any(visit(child) for child in ast.iter_child_nodes(node))

    return any(visit(node) for node in tree.body)


def _parse(source: str) -> ast.Module:
    return ast.parse(source)  # top-level await parses; only compiling it fails


def _preamble(
    block: Block, tree: ast.Module, defined_by: dict[str, Block]
) -> tuple[dict[str, list[str]], list[str]]:
    """What ``block`` needs first: imports from earlier blocks (module -> names) and fixtures."""
    builtin_names = set(dir(builtins))
    imports: dict[str, list[str]] = {}
    preamble: list[str] = []
    done: set[str] = set()

    def need(snippet: ast.AST) -> None:
        used, bound = _names(snippet)
        for name in sorted(used - bound - builtin_names):
            if name in done:
                continue
            done.add(name)
            if name in defined_by:
                imports.setdefault(defined_by[name].module, []).append(name)
            elif name in FIXTURES:
                fixture = FIXTURES[name]
                need(_parse(fixture))
                preamble.append(fixture)
            else:
                pytest.fail(
                    f"{block.where} uses {name!r}, which no earlier block defines and "
                    "tests/test_readme_blocks.py has no FIXTURES entry for"
                )

    need(tree)
    return imports, preamble


def build_modules(blocks: list[Block], directory: Path) -> list[Block]:
    """Write one module per checked block (and the stand-ins); returns the checked blocks."""
    for name, source in STAND_IN_MODULES.items():
        (directory / f"{name}.py").write_text(source)
    defined_by: dict[str, Block] = {}  # name -> the latest block defining it at top level
    checked: list[Block] = []
    for block in blocks:
        if block.skip is not None:
            assert block.skip, f"{block.where}: say why the block is skipped"
            continue
        try:
            tree = _parse(block.source)
        except SyntaxError as exc:
            pytest.fail(f"{block.where}: not valid Python: {exc}")
        wrapped = _has_top_level_await(tree)
        imports, preamble = _preamble(block, tree, defined_by)
        head = [f"# {block.where}"]
        head += [f"from {module} import {', '.join(names)}" for module, names in imports.items()]
        head += preamble
        head_text = "\n".join(head) + "\n"
        body = block.source
        if wrapped:  # top-level await: the block runs as the body of a coroutine
            head_text += "\n\nasync def doc_block() -> None:\n"
            body = "".join(
                f"    {line}" if line.strip() else line for line in body.splitlines(True)
            )
        block.module = f"doc_block_{block.number:03d}"
        block.offset = head_text.count("\n") + 1 - block.line
        (directory / f"{block.module}.py").write_text(head_text + body)
        block.expected = {
            block.line + n
            for n, text in enumerate(block.source.splitlines())
            if _EXPECT_ERROR.search(text)
        }
        if not wrapped:
            for name in _top_level_names(tree):
                defined_by[name] = block
        checked.append(block)
    return checked


def _file_line(blocks: list[Block], module: str, line: int) -> tuple[Block, int] | None:
    for block in blocks:
        if block.module == module:
            return block, line - block.offset
    return None


def test_doc_blocks_parse_and_name_a_reason_when_skipped() -> None:
    blocks = all_blocks()
    assert len(blocks) >= 25, "the docs have their code blocks"
    files = {block.path for block in blocks}
    assert {"README.md", "docs/index.md", "docs/connectors/kafka.md"} <= files, files
    for block in blocks:
        if block.skip is not None:
            assert block.skip, f"{block.where}: give the reason in the skip marker"


def test_block_parser_finds_headings_skips_and_expected_errors(tmp_path: Path) -> None:
    text = (
        "# Title\n\n## Part\n\n```python\nx: int = 1\n```\n\n"
        "<!-- readme-check: skip (shows a traceback) -->\n```python\nboom(\n```\n\n"
        "```sh\nls\n```\n\n```python\ny: str = x  # error: int is not str\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.heading, b.line, b.skip) for b in blocks] == [
        ("Part", 6, None),
        ("Part", 11, "shows a traceback"),
        ("Part", 19, None),
    ]
    checked = build_modules(blocks, tmp_path)
    assert [b.number for b in checked] == [1, 3]
    assert checked[1].expected == {19}
    module = (tmp_path / "doc_block_003.py").read_text().splitlines()
    assert "from doc_block_001 import x" in module
    assert module[19 + checked[1].offset - 1].startswith("y: str = x")


@pytest.fixture(scope="module")
def checked_blocks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Block]]:
    directory = tmp_path_factory.mktemp("docblocks")
    return directory, build_modules(all_blocks(), directory)


def _compare(blocks: list[Block], errors: dict[tuple[str, int], list[str]], tool: str) -> str:
    problems: list[str] = []
    for block in blocks:
        for line in sorted(block.expected):
            if (block.module, line + block.offset) not in errors:
                problems.append(
                    f"{block.where}: line {line} is marked '# error:' but {tool} accepts it"
                )
    for (module, line), messages in sorted(errors.items()):
        found = _file_line(blocks, module, line)
        if found is None:
            problems.append(f"{module}:{line}: {' | '.join(messages)}")
            continue
        block, file_line = found
        if file_line < block.line:
            problems.append(f"{block.where}: in the preamble (line {line}): {messages}")
        elif file_line not in block.expected:
            problems.append(f"{block.path}:{file_line} ({block.heading!r}): {' | '.join(messages)}")
    return "\n".join(problems)


def test_mypy_strict_accepts_every_doc_block(checked_blocks: tuple[Path, list[Block]]) -> None:
    directory, blocks = checked_blocks
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-pretty",
            "--no-error-summary",
            "--hide-error-context",
            "--no-color-output",
            "--no-incremental",
            *sorted(str(p) for p in directory.glob("*.py")),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": f"{ROOT / 'stubs'}{os.pathsep}{directory}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr or proc.stdout
    errors: dict[tuple[str, int], list[str]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<msg>.*)$", line)
        if match:
            key = (Path(match.group("path")).stem, int(match.group("line")))
            errors.setdefault(key, []).append(match.group("msg"))
    problems = _compare(blocks, errors, "mypy")
    assert not problems, "mypy --strict over the docs' code blocks:\n" + problems


def test_pyright_strict_accepts_every_doc_block(
    checked_blocks: tuple[Path, list[Block]],
) -> None:
    directory, blocks = checked_blocks
    config = {
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "extraPaths": [str(ROOT), str(directory)],
        "stubPath": str(ROOT / "stubs"),
        # A snippet may name a value to show what it is (orders = app.publisher(...)).
        "reportUnusedVariable": "none",
    }
    (directory / "pyrightconfig.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "pyright", "--outputjson", "--project", str(directory)]
    command += ["--pythonpath", sys.executable, str(directory)]
    proc = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    try:
        report: Any = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    errors: dict[tuple[str, int], list[str]] = {}
    for diag in report["generalDiagnostics"]:
        if diag["severity"] == "error":
            key = (Path(diag["file"]).stem, int(diag["range"]["start"]["line"]) + 1)
            errors.setdefault(key, []).append(f"{diag.get('rule', '')}: {diag['message']}")
    problems = _compare(blocks, errors, "pyright")
    assert not problems, "pyright strict over the docs' code blocks:\n" + problems


def test_the_ten_line_example_runs_as_written(tmp_path: Path) -> None:
    """Typing the example must not break running it (a module-level ``Queue[bytes]`` would:
    multiprocessing.Queue is a function at run time). The docs' home page shows it too, the same."""
    (block,) = [b for b in readme_blocks(README.read_text()) if b.heading.endswith("ten lines")]
    (page,) = [
        b for b in readme_blocks((DOCS / "index.md").read_text()) if b.heading.endswith("ten lines")
    ]
    assert page.source == block.source, "README.md and docs/index.md show different examples"
    script = tmp_path / "ten_lines.py"
    script.write_text(block.source)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:  # still consuming, as it should be: stop it gracefully
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
