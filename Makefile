# make demo: create .venv, install videocap, run the main job on the bundled example clip.
# make test: the same environment with the test extras, then the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
EXAMPLE := src/videocap/assets/example.mp4
DEMO_OUT := demo-output

.PHONY: venv install install-test demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and only when missing: a bare `pip install torch` pulls several GB of CUDA wheels,
# while torch==$(TORCH_VERSION) resolves to the local CPU build on these machines.
venv: $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)

install: venv
	$(PY) -m pip install -q -e .

install-test: venv
	$(PY) -m pip install -q -e ".[test]"

# The main job, offline: caption the bundled example (a generator clip) with the bundled videocap-tiny on the CPU.
demo: install
	$(VENV)/bin/videocap info $(EXAMPLE)
	HF_HUB_OFFLINE=1 $(VENV)/bin/videocap caption $(EXAMPLE) --model tiny --device cpu --quiet
	$(VENV)/bin/videocap frames $(EXAMPLE) --strategy uniform16 --layout grid -o $(DEMO_OUT)/grid.png
	$(VENV)/bin/videocap frames $(EXAMPLE) --strategy every --seconds 2 --layout strip -o $(DEMO_OUT)/strip.png
	$(VENV)/bin/videocap frames $(EXAMPLE) --strategy uniform --frames 4 --dir $(DEMO_OUT)/frames

test: install-test
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
