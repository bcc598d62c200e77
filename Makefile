# Every target bootstraps its virtual environment by itself; only python3 (>= 3.11) and make are
# needed. `make test`, `make demo` and `make bench` install exactly what uv.lock pins (hashes
# checked); uv itself comes from PyPI, pinned with hashes in requirements/uv.txt. Nothing here
# ever rewrites the lock: `make lock` does, on purpose.
PYTHON ?= python3
# Every optional extra of pyproject.toml (test-latest installs them all).
EXTRAS := kafka,prometheus,redis,rabbitmq,nats,reload,asyncapi,otel
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What the tool targets need first; the test-latest/test-lowest runs clear it for their own venv.
NEED = $(STAMP)
# uv never downloads a Python of its own, and never touches the lock unless asked.
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
# pyright: the release bundled in the locked wheel, on the locked Node.js (see docs/development.md).
export PYRIGHT_PYTHON_GLOBAL_NODE := 0
export PYRIGHT_PYTHON_IGNORE_WARNINGS := 1
unexport PYRIGHT_PYTHON_FORCE_VERSION

.PHONY: demo test lint typecheck docs pytest bench soak lock test-latest test-lowest test-pythons clean

$(STAMP): pyproject.toml uv.lock requirements/uv.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		--require-hashes -r requirements/uv.txt
	$(BIN)/uv sync --quiet --locked --all-extras --python $(BIN)/python
	touch $(STAMP)

demo: $(NEED)
	$(BIN)/romeways demo

lint: $(NEED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(NEED)
	$(BIN)/mypy --strict romeways tests

# Most tests wait on brokers, group joins and timeouts rather than the CPU: four workers (one
# test file each at a time, each with its own broker) cut the wall time about fourfold.
pytest: $(NEED)
	$(BIN)/pytest -q -n 4 --dist loadfile

# The docs site (mkdocs.yml): strict, so a broken link or anchor, or a page missing from the nav,
# fails the build. Offline: nothing in it fetches from the network.
docs: $(NEED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint typecheck docs pytest

bench: $(NEED)
	$(BIN)/python -m bench

soak: $(NEED)
	$(BIN)/python -m bench.soak

# Refresh uv.lock to the newest releases the bounds in pyproject.toml allow (then run make test).
lock: $(STAMP)
	$(BIN)/uv lock --upgrade

# The whole suite against the newest release of every dependency, in its own environment, so
# a new msgspec, aiokafka, mypy or pyright is noticed on purpose (not part of `make test`).
test-latest: $(STAMP)
	rm -rf .venv-latest
	$(BIN)/uv venv --quiet --python $(PYTHON) .venv-latest
	$(BIN)/uv pip install --quiet --python .venv-latest/bin/python --upgrade --no-cache \
		-e '.[$(EXTRAS)]' --group dev
	.venv-latest/bin/uv pip list --python .venv-latest/bin/python
	$(MAKE) --no-print-directory BIN=.venv-latest/bin NEED= lint typecheck pytest

# The lowest version of each runtime dependency that pyproject.toml declares, beside the locked
# development tools: the declared bounds are tested, not guessed.
test-lowest: $(STAMP)
	rm -rf .venv-lowest
	$(BIN)/uv venv --quiet --python $(PYTHON) .venv-lowest
	$(BIN)/uv export --quiet --locked --all-extras --no-emit-project --no-hashes \
		-o .venv-lowest/locked.txt
	$(BIN)/uv pip compile --quiet --python .venv-lowest/bin/python --resolution lowest-direct \
		--no-deps --no-header --no-annotate pyproject.toml --all-extras -o .venv-lowest/lowest.txt
	$(BIN)/uv pip install --quiet --python .venv-lowest/bin/python -r .venv-lowest/locked.txt \
		-e . --overrides .venv-lowest/lowest.txt
	# The tests' OpenTelemetry SDK (dev) must be the release of the API it runs on.
	$(BIN)/uv pip install --quiet --python .venv-lowest/bin/python \
		"opentelemetry-sdk==$$(sed -n 's/^opentelemetry-api==//p' .venv-lowest/lowest.txt)"
	cat .venv-lowest/lowest.txt
	$(MAKE) --no-print-directory BIN=.venv-lowest/bin NEED= typecheck pytest

# The runtime suite on each other Python this machine has (3.11 is `make test`'s), locked set.
# A pyenv shim that is not the active version fails: then its own interpreter is used.
PYTHONS ?= 3.12 3.13
test-pythons: $(NEED)
	set -e; for v in $(PYTHONS); do \
		py=python$$v; $$py -c pass 2>/dev/null || \
			py=$$(ls $(HOME)/.pyenv/versions/$$v*/bin/python$$v 2>/dev/null | tail -n 1); \
		test -n "$$py" || { echo "no Python $$v on this machine"; exit 1; }; \
		UV_PROJECT_ENVIRONMENT=.venv-$$v $(BIN)/uv sync --quiet --locked --all-extras \
			--python $$py; \
		.venv-$$v/bin/python --version; \
		.venv-$$v/bin/pytest -q -n 4 --dist loadfile -p no:cacheprovider; \
	done

clean:
	rm -rf $(VENV) .venv-latest .venv-lowest .venv-3.* build dist *.egg-info .mypy_cache \
		.pytest_cache .ruff_cache site
