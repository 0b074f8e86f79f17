# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench docs clean check-templates lambda-package lock lock-check

# uv installs the venv from uv.lock (exact versions, every file checked against its hash) and
# `make lock` writes the lock: docs/building.md. uv itself is the version the lock names.
UV := $(BIN)/uv
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"$$/\1/p;}' uv.lock)
$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

# --locked: a pyproject.toml the lock does not match stops here (run `make lock`).
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --quiet --locked --all-extras
	touch $(STAMP)

setup: $(STAMP)

# The demo runs at a virtual time (its December window and the year-end freeze after it); set
# PATCHPILOT_VIRTUAL_START to another ISO time, or to nothing for the real clock.
demo: export PATCHPILOT_VIRTUAL_START ?= 2026-12-01T00:00:00+00:00
demo: setup
	$(BIN)/patchpilot validate --policy examples/policy.yaml --inventory examples/fleet.json
	$(BIN)/patchpilot schedule --policy examples/policy.yaml --count 3
	$(BIN)/patchpilot plan --policy examples/policy.yaml --inventory examples/fleet.json
	$(BIN)/patchpilot run --policy examples/policy.yaml --inventory examples/fleet.json --state-dir .patchpilot/demo

# Azurite, the Storage emulator the Azure tests start (tests/azurite.py); 3.35.0 is the last
# release for Node 20. Installed once, into build/ (`make clean` removes it).
AZURITE := build/azurite/node_modules/.bin/azurite
$(AZURITE):
	npm install --no-audit --no-fund --prefix build/azurite azurite@3.35.0

# Chromium, the browser the overview page's test drives (tests/test_overview.py, through
# playwright, with Debian's build): installed when missing, as root or through sudo.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else echo "make: $(CHROMIUM) is missing and this user can neither apt-get (not root) nor sudo: install the chromium package; the overview page's browser test (tests/test_overview.py) drives it" >&2; exit 1; fi

test: setup $(AZURITE) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n auto

# The inner loop: every test but those marked `slow` (end to end, runtimes, fault tolerance, and
# files over ~10 s alone). $(CHROMIUM) is the browser test's prerequisite where the Makefile has one.
test-fast: setup $(AZURITE) $(CHROMIUM)
	$(BIN)/python -m pytest -q -n auto -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy --strict shared/patchpilot aws_lambda azure_functions function_app.py

bench: setup
	$(BIN)/python bench/run.py

docs: setup
	$(BIN)/patchpilot schema policy > docs/policy.schema.json
	$(BIN)/patchpilot schema messages > docs/messages.schema.json
	$(BIN)/python -m patchpilot.engine.diagram > docs/state-machine.md
	$(BIN)/python -m patchpilot.tools.doc_examples --write

# Infrastructure linters live in their own venv: they pin libraries the project does not use.
# Locked the same way, by infra/iac/uv.lock.
IAC := .venv-iac
$(IAC)/.installed: infra/iac/pyproject.toml infra/iac/uv.lock $(UV)
	UV_PROJECT_ENVIRONMENT="$(CURDIR)/$(IAC)" $(UV) sync --quiet --locked --project infra/iac
	touch $(IAC)/.installed

# The files generated from uv.lock, committed: the Function App's requirements.txt (pins; the
# remote build installs it with the project, ".") and the Lambda artifact's requirements (pins
# with hashes, for `pip install --require-hashes`). $(1): the folder they are written under.
EXPORTS := requirements.txt infra/aws/lambda-requirements.txt
EXPORT := $(UV) export --quiet --frozen --no-dev --no-header --no-annotate
define write-exports
	mkdir -p $(1)infra/aws
	{ echo "# Generated from uv.lock by \`make lock\`: do not edit. What the Function App's remote build installs:"; \
	  echo "# this project (\".\", built from shared/) and its azure extra, each at the version locked."; \
	  echo "# See docs/building.md and docs/azure-deploy.md, \"Publishing the code\"."; \
	  $(EXPORT) --extra azure --no-editable --no-hashes; } > $(1)requirements.txt
	{ echo "# Generated from uv.lock by \`make lock\`: do not edit. The Lambda artifact's libraries (the aws extra),"; \
	  echo "# installed with --require-hashes for the Lambda platform by the Makefile's build-* targets."; \
	  $(EXPORT) --extra aws --no-emit-project; } > $(1)infra/aws/lambda-requirements.txt
endef

# Resolve again (newest versions the ranges in pyproject.toml allow, keeping the locked ones where
# they still fit; `make lock UPGRADE=--upgrade` moves everything) and regenerate the exports.
lock: $(UV)
	$(UV) lock $(UPGRADE)
	$(UV) lock $(UPGRADE) --project infra/iac
	$(call write-exports,)

# CI: the locks match their pyproject.toml and the committed exports match the lock.
LOCK_STALE = make lock-check: $(1) does not match $(2): run make lock and commit the result
lock-check: $(UV)
	@out=$$($(UV) lock --check 2>&1) || { case "$$out" in *"needs to be updated"*) \
	  echo "$(call LOCK_STALE,uv.lock,pyproject.toml)" >&2;; *) echo "$$out" >&2;; esac; exit 1; }
	@out=$$($(UV) lock --check --project infra/iac 2>&1) || { case "$$out" in *"needs to be updated"*) \
	  echo "$(call LOCK_STALE,infra/iac/uv.lock,infra/iac/pyproject.toml)" >&2;; *) echo "$$out" >&2;; esac; exit 1; }
	@rm -rf build/lock-check
	@$(call write-exports,build/lock-check/)
	@for f in $(EXPORTS); do cmp -s "$$f" "build/lock-check/$$f" || \
	  { echo "$(call LOCK_STALE,$$f,uv.lock)" >&2; exit 1; }; done

check-templates: $(IAC)/.installed setup
	$(IAC)/bin/cfn-lint template.yaml
	env -i PATH="$(PATH)" HOME="$(CURDIR)/build/samhome" SAM_CLI_TELEMETRY=0 $(IAC)/bin/sam validate --lint --template template.yaml
	$(IAC)/bin/checkov -f template.yaml --framework cloudformation --quiet --compact --skip-download
	$(IAC)/bin/cfn-lint infra/aws/member-role.yaml
	$(IAC)/bin/checkov -f infra/aws/member-role.yaml --framework cloudformation --quiet --compact --skip-download
	$(IAC)/bin/cfn-lint infra/aws/wake-forwarder.yaml
	$(IAC)/bin/checkov -f infra/aws/wake-forwarder.yaml --framework cloudformation --quiet --compact --skip-download
	$(BIN)/python infra/aws/check_package.py
	$(IAC)/bin/python infra/azure/check_bicep.py
	$(BIN)/python infra/azure/check_package.py

# `sam build` runs these (Metadata: BuildMethod: makefile); ARTIFACTS_DIR is where the code goes.
# The wheels are the Lambda platform's (x86_64, CPython 3.11), whatever machine builds them, at the
# versions and hashes of uv.lock (infra/aws/lambda-requirements.txt, written by `make lock`).
# The bytecode is compiled once, by CPython 3.11 as the runtime, and checked by no timestamp
# (`unchecked-hash`): SAM zips every file with no date, so Lambda extracts them all dated 1980, a
# timestamp-checked .pyc never matches its source there, and read-only /var/task keeps none compiled
# at a cold start (aws/aws-lambda-builders#924; the worker then imports in 2.4 times as long).
LAMBDA_PYTHON_CHECK := import sys; sys.exit(sys.version_info[:2] != (3, 11) and \
	"the Lambda runtime is CPython 3.11 and its bytecode must be compiled by one: run sam build --use-container, or set PYTHON")
build-WorkerFunction build-TriggerFunction build-ApproveFunction build-AdvisoryFunction build-WakerFunction:
	$(PYTHON) -c '$(LAMBDA_PYTHON_CHECK)'
	rm -rf build/wheel build/lib build/bdist.*  # setuptools builds in build/lib and never removes a deleted module there
	SOURCE_DATE_EPOCH=315532800 $(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir build/wheel .  # dated as nothing: the same wheel every time
	$(PYTHON) -m pip install --quiet --upgrade --no-compile --target "$(ARTIFACTS_DIR)" --platform manylinux2014_x86_64 \
		--implementation cp --python-version 3.11 --only-binary=:all: --require-hashes -r infra/aws/lambda-requirements.txt
	$(PYTHON) -m pip install --quiet --upgrade --no-compile --target "$(ARTIFACTS_DIR)" --no-deps "$$(ls build/wheel/patchpilot-*.whl)"
	cp -r aws_lambda "$(ARTIFACTS_DIR)/"
	$(PYTHON) -m compileall -q -f -j 0 --invalidation-mode unchecked-hash -s "$(ARTIFACTS_DIR)" -p /var/task "$(ARTIFACTS_DIR)"

lambda-package: setup
	$(BIN)/python infra/aws/check_package.py

clean:
	rm -rf $(VENV) $(IAC) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
