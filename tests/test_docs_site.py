"""The docs site's structure (issue 20, point 4): every docs/ page is in the mkdocs.yml nav and
every nav entry is a page; README.md's "Documentation" list links every page and only pages that
exist; `make test` builds the site in strict mode, offline. The build itself (broken links and
anchors, docstrings that do not render) is `make docs`, part of `make test`, not repeated here.
"""

from __future__ import annotations

import re

import griffe
from test_readme_blocks import DOCS, README, ROOT, nav_pages

PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
# Pages other branches write; listed, commented out, under "# FEATURES (enabled at merge)".
FEATURE_PAGES = [
    "retry-backoff.md",
    "dead-letter-queue.md",
    "batch-handlers.md",
    "concurrency.md",
    "opentelemetry.md",
    "asyncapi.md",
    "reload.md",
]


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_is_a_page() -> None:
    nav = nav_pages()
    assert len(nav) == len(set(nav)), f"a page is twice in the nav: {nav}"
    assert sorted(nav) == PAGES, (
        f"not in mkdocs.yml's nav: {sorted(set(PAGES) - set(nav))}; "
        f"in the nav with no page: {sorted(set(nav) - set(PAGES))}"
    )


def test_nav_parser_reads_nested_entries_and_skips_comments() -> None:
    nav = nav_pages()
    assert nav[0] == "index.md"
    assert "connectors/kafka.md" in nav and "reference/romeways.md" in nav
    assert set(FEATURE_PAGES) <= set(nav)


def test_feature_pages_are_in_the_features_section() -> None:
    text = (ROOT / "mkdocs.yml").read_text()
    block = text.split("\n  - Features:\n", 1)[1].split("\n  - ", 1)[0]
    for page in FEATURE_PAGES:
        assert (DOCS / page).exists(), page
        assert re.search(rf"^      - [^:]+: {re.escape(page)}$", block, re.M), page


def test_every_page_has_an_h1_title_first() -> None:
    bad = [p for p in PAGES if not (DOCS / p).read_text().startswith("# ")]
    assert not bad, f"pages whose first line is not a '# Title': {bad}"


def test_readme_links_every_docs_page_and_nothing_missing() -> None:
    text = README.read_text()
    section = text.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(docs/([^)#]+\.md)\)", section))
    wanted = set(PAGES) - {"index.md"}  # the site's home page repeats the README's start
    assert linked == wanted, (
        f"README's Documentation list misses {sorted(wanted - linked)}, "
        f"links missing pages {sorted(linked - wanted)}"
    )
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"


def test_make_test_builds_the_docs_strictly() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test = re.search(r"^test: (.+)$", makefile, re.M)
    assert test is not None and "docs" in test.group(1).split(), "make test must run docs"
    docs = makefile.split("\ndocs: ", 1)[1].split("\n\n", 1)[0]
    assert "mkdocs build --strict" in docs and "--site-dir site" in docs, docs
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()


def test_mkdocs_config_is_strict_and_needs_no_network() -> None:
    text = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^strict: true$", text, re.M)
    assert re.search(r"^theme:\n  name: material$", text, re.M)
    for rule in ("omitted_files", "not_found", "anchors", "unrecognized_links"):
        assert re.search(rf"^\s+{rule}: warn$", text, re.M), f"validation.{rule} must be warn"
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for needs_network in ("social", "inventories", "privacy", "git-revision"):
        assert needs_network not in live, f"{needs_network} needs the network at build time"


# The modules of the API reference: each has its page of ``::: module``.
REFERENCE = {
    "romeways": "reference/romeways.md",
    "romeways.testing": "reference/testing.md",
    **{
        f"romeways.connectors.{name}": f"reference/connectors/{name}.md"
        for name in ("memory", "support", "kafka", "redis", "rabbitmq", "nats")
    },
}


def test_every_connector_module_has_a_reference_page() -> None:
    connectors = ROOT / "romeways" / "connectors"
    found = {
        p.stem if p.is_file() else p.name
        for p in connectors.iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert {f"romeways.connectors.{name}" for name in found} <= set(REFERENCE), found
    for module, page in REFERENCE.items():
        assert f"\n::: {module}\n" in (DOCS / page).read_text(), f"{page} must render {module}"


def test_every_public_name_has_a_docstring_for_the_reference() -> None:
    """mkdocstrings shows only members with a docstring: a public name without one would be
    missing from the reference without a warning. Checked with griffe, the loader it uses."""
    package = griffe.load("romeways", search_paths=[str(ROOT)], resolve_aliases=True)
    missing: list[str] = []
    for dotted in REFERENCE:
        module = package if dotted == "romeways" else package[dotted.removeprefix("romeways.")]
        exports = module.exports
        names = (
            [str(name) for name in exports]
            if exports is not None
            else [  # no __all__: its public classes and functions
                n
                for n, m in module.members.items()
                if not n.startswith("_") and not m.is_alias and (m.is_class or m.is_function)
            ]
        )
        assert names, f"{dotted} exports nothing"
        missing += [f"{dotted}.{name}" for name in names if not module[name].docstring]
    assert not missing, f"public names without a docstring: {missing}"
