"""Params YAML files -> one validated experiment config.

The defaults are the fields below; params/base.yaml spells every one of them out with the same
value (tests/test_config.py holds the two together), so a reader sees them without reading code.

An experiment file inherits from every `base.yaml` between it and the nearest
folder named `params` (outermost first), merged deeply; the experiment file wins.
So `params/tiny_random/exp_lr.yaml` = `params/base.yaml` <- `params/tiny_random/base.yaml` <- itself.

Everything is checked here, before any data or model is loaded: unknown keys,
wrong types and impossible values fail with the file and the dotted key.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

BASE_NAME = "base.yaml"


class ConfigError(ValueError):
    """A params file cannot be used. The message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name: str = Field("unsloth/Llama-3.2-1B-Instruct", description="hub id or local folder")
    max_seq_length: PositiveInt = 2048
    # QLoRA: nf4 weights through bitsandbytes, on a GPU and on a CPU alike (a T4 needs it for the 3B).
    load_in_4bit: bool = True
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # "auto": Unsloth when CUDA and the unsloth package are both there, else transformers + peft.
    backend: Literal["auto", "hf", "unsloth"] = "auto"


class LoraSection(_Section):
    r: PositiveInt = 16
    alpha: PositiveInt = 16
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        ],
        min_length=1,
    )


class TrainSection(_Section):
    # Exactly one of max_steps / epochs; set the other to null.
    max_steps: PositiveInt | None = 60
    epochs: PositiveFloat | None = None
    learning_rate: PositiveFloat = 2e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: NonNegativeInt = 5
    batch_size: PositiveInt = 2
    gradient_accumulation_steps: PositiveInt = 4
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"] = (
        "adamw_torch"
    )
    weight_decay: NonNegativeFloat = 0.01
    # Trades compute for memory: on for a T4, off for the tiny CPU model.
    gradient_checkpointing: bool = True
    # Concatenate each batch into one sequence (position_ids restart per example, so attention
    # never crosses examples): no padding is computed.
    padding_free: bool = True
    seed: int = 3407
    logging_steps: PositiveInt = 1
    eval_steps: PositiveInt = 20
    save_steps: PositiveInt = 20
    save_total_limit: PositiveInt = 2
    # Where checkpoints go: null = OUT/<experiment>/checkpoints; a Drive folder survives a Colab
    # disconnect (<checkpoint_dir>/<experiment>/). Not part of the config hash: it moves, not changes, a run.
    checkpoint_dir: str | None = None
    # Also push each checkpoint to this Hub repo (token from HF_TOKEN only), and resume from it
    # when no local checkpoint exists, e.g. on a fresh Colab VM. Not part of the config hash either.
    checkpoint_hub_repo: str | None = None
    # Curves while the run trains: tensorboard writes event files into OUT/<experiment>/tensorboard/ (offline;
    # `%tensorboard --logdir OUT` on Colab). Not part of the config hash: watching a run does not change it.
    tracker: Literal["none", "tensorboard"] = "none"

    @model_validator(mode="after")
    def _one_length_and_schedule_fits(self) -> "TrainSection":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs (the other to null)")
        if self.max_steps is not None:
            for key in ("eval_steps", "save_steps", "warmup_steps"):
                if getattr(self, key) > self.max_steps:
                    raise ValueError(f"{key}={getattr(self, key)} is larger than max_steps={self.max_steps}")
        return self


class TrainSource(_Section):
    """One source of training rows: `pool` (the sweep's source, what is left after the held-out split)
    or another dataset (hub id or local file), `rows` of it drawn at random with the split seed."""

    source: str = Field("pool", description="'pool', a hub id or a local .jsonl/.json/.parquet file")
    rows: PositiveInt | None = Field(None, description="null: all of it")
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = "auto"
    hub_split: str = "train"


class SelectSection(_Section):
    """Data-centric choices. They act on training rows only, never on the held-out conversations."""

    min_score: float | None = Field(None, description="keep rows whose quality `score` is at least this (FineTome's)")
    sources: list[str] | None = Field(None, description="keep only rows whose `source` field is one of these")
    exclude_sources: list[str] | None = Field(None, description="drop rows whose `source` field is one of these")
    dedup: Literal["none", "exact", "near"] = Field("none", description="drop repeated training rows (near: MinHash)")
    min_reply_tokens: NonNegativeInt = Field(0, description="drop rows whose replies have fewer tokens")
    max_rows: PositiveInt | None = Field(None, description="a seeded random cap: the size-matched control of a filter")


class DataSection(_Section):
    source: str = Field("mlabonne/FineTome-100k", description="the pool: hub id, local folder, or .jsonl/.json/.parquet file")
    hub_split: str = "train"
    format: Literal["auto", "sharegpt", "openai", "alpaca"] = "auto"
    subset: PositiveInt | None = Field(15000, description="use only the first N rows of the source")
    # Carved from the pool first, with split_seed: the same held-out conversations for every run of a
    # sweep, whatever its training data.
    val_size: PositiveInt = 1500
    test_size: PositiveInt = 1500
    # The split has its own seed so that seed repeats of a run share the same data.
    split_seed: int = 3407
    chat_template: str = Field("model", description="'model' keeps the tokenizer's own; else a bundled name or a .jinja path")
    train_sources: list[TrainSource] = Field(default_factory=lambda: [TrainSource()], min_length=1)
    select: SelectSection = Field(default_factory=SelectSection)

    @model_validator(mode="after")
    def _split_fits_subset(self) -> "DataSection":
        if self.subset is not None and self.val_size + self.test_size >= self.subset:
            raise ValueError(
                f"val_size + test_size = {self.val_size + self.test_size} leaves no training rows in subset={self.subset}"
            )
        return self


DEFAULT_PROMPTS = [
    "What is machine learning?",
    "Explain the difference between supervised and unsupervised learning.",
    "What is the capital of France?",
    "Give me three tips for studying effectively.",
]


class EvalSection(_Section):
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS), min_length=1)
    # N test conversations whose generated last reply is scored with BLEU / ROUGE-L.
    num_reference_samples: PositiveInt = 50
    max_new_tokens: PositiveInt = 128
    batch_size: PositiveInt = 8
    compare_base: bool = True  # evaluate the base model (adapter off) with the same code
    # IFEval (lab2.ifeval): how many of its 541 prompts (null: all; fewer: one fixed seeded subset, the
    # same for every run; 0: none) and how long a reply may be. Every instruction is checked by code.
    ifeval_prompts: NonNegativeInt | None = None
    ifeval_max_new_tokens: PositiveInt = 1280  # the benchmark's own (lm-eval's ifeval.yaml, max_gen_toks)
    # IFEval's replies are long, so its batches are larger than the evaluation's: fewer decoding passes, the
    # same replies (bench/ifeval_generation.py: SmolLM2 in float32 on 2 cores, 24 prompts, identical replies
    # at batch 1, 8, 16 and 24, and batch 24 the fastest).
    ifeval_batch_size: PositiveInt = 32
    # Knowledge kept or lost (lab2.knowledge): questions of a multiple-choice benchmark scored by log-likelihood
    # through lm-eval's harness (0: none; null: all; fewer: one fixed seeded subset, the same for every run).
    knowledge_questions: NonNegativeInt | None = 0
    knowledge_task: Literal["arc_easy", "arc_challenge"] = "arc_easy"
    # The clean yardstick: validation conversations whose quality score is at least this have references
    # known to be correct, and are also scored on their own; where every run has it, runs rank on it
    # (lab2.comparison.choose_measure). null: none.
    clean_min_score: float | None = None


class ExportSection(_Section):
    # What a 4-bit run's adapter is merged into before GGUF: "dequantized", the nf4 weights it was trained
    # and evaluated on; or "original", the checkpoint's 16-bit weights. The figures behind the default are
    # in docs/export.md. A run trained without 4-bit always merges into the weights it trained on.
    merge_base: Literal["dequantized", "original"] = "dequantized"


class DesignSection(_Section):
    """A sweep's design, declared before any run: the noise it expects in its ranking measure, measured by
    an earlier run of the same design. `lab2 sweep` prints the minimum detectable difference it gives first;
    the report sets it beside what the sweep itself measured. Not part of any run's identity."""
    measure: Literal["val_loss", "val_loss_clean", "val_bpb", "val_bpb_clean"]  # what ranks (lab2.comparison.MEASURES)
    seed_sigma: PositiveFloat  # the seed std of that measure at this design's length
    paired_standard_error: PositiveFloat  # a paired difference's standard error on these held-out conversations
    measured: str = Field(min_length=1, description="how, when, on what: where the two figures come from")


class ExperimentConfig(_Section):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Repeats of one configuration share a group; the report shows their mean +- std.
    group: str | None = Field(None, description="defaults to the experiment name")
    # Run this file once per seed (as <experiment>-seed<N>), to measure seed noise.
    seeds: list[int] | None = Field(None, min_length=2)
    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)
    design: DesignSection | None = None

    @model_validator(mode="after")
    def _default_group(self) -> "ExperimentConfig":
        if self.group is None:
            self.group = self.experiment
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def seed_runs(self) -> list[dict]:
        """Overrides that turn this file into one run per seed (or [{}]: run it as it is)."""
        if not self.seeds:
            return [{}]
        return [
            {"experiment": f"{self.experiment}-seed{seed}", "group": self.group, "seeds": None, "train": {"seed": seed}}
            for seed in self.seeds
        ]

    @property
    def config_hash(self) -> str:
        """Identity of what training computes: a changed param means a new run.

        The eval and export sections are left out: new prompts re-evaluate, another merge re-exports,
        neither retrains; so is the sweep's declared design, which describes runs and changes none."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("eval", "export", "design")}
        data["train"] = {k: v for k, v in data["train"].items() if k not in ("checkpoint_dir", "checkpoint_hub_repo", "tracker")}
        return stable_hash(data)

    @property
    def eval_hash(self) -> str:
        """Identity of an evaluation: the trained run plus the eval settings."""
        return stable_hash({"config_hash": self.config_hash, "eval": self.to_dict()["eval"]})


    @property
    def base_eval_hash(self) -> str:
        """Identity of the base model's evaluation (adapter off): the model, the data and the eval
        settings. Experiments that share it share one base evaluation (lab2.evaluate reuses it). The data
        enters as what defines the held-out split: a data-centric run's training rows (`train_sources`,
        `select`) change nothing the base model is measured on."""
        plain = self.to_dict()
        held_out = {k: v for k, v in plain["data"].items() if k not in ("train_sources", "select")}
        return stable_hash({"model": plain["model"], "data": held_out, "eval": {k: v for k, v in plain["eval"].items() if k != "compare_base"}})


def stable_hash(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def to_yaml(data: "ExperimentConfig | dict") -> str:
    """Readable dump of a config (or any plain dict) for notebooks and logs."""
    plain = data.to_dict() if isinstance(data, ExperimentConfig) else data
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=100)


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict, override: dict) -> dict:
    """Nested dicts merge key by key; any other value in `override` replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def base_chain(path: Path) -> list[Path]:
    """The base.yaml files an experiment inherits from, outermost first."""
    chain: list[Path] = []
    for folder in path.resolve().parents:
        candidate = folder / BASE_NAME
        if candidate.is_file() and candidate != path.resolve():
            chain.append(candidate)
        if folder.name == "params":
            break
    else:
        # No params/ folder above: only a base.yaml beside the file counts.
        chain = chain[:1]
    return list(reversed(chain))


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _has_key(data: dict, loc: tuple) -> bool:
    node: Any = data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _section_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: dict, layers: list[tuple[Path, dict]]) -> str:
    loc = tuple(str(p) for p in error["loc"])
    key = ".".join(loc) or "(top level)"
    # Blame the last file that set this key (or its section), else the experiment file.
    owner = layers[-1][0]
    for path, data in reversed(layers):
        if _has_key(data, loc) or (loc and _has_key(data, loc[:-1]) and error["type"] != "extra_forbidden"):
            owner = path
            break
    if error["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(loc[-1], _section_fields(loc), n=1, cutoff=0.4)  # "rank" -> "r"
        suggestion = f" (did you mean '{'.'.join(loc[:-1] + (hint[0],))}'?)" if hint else ""
        return f"{owner}: unknown key '{key}'{suggestion}"
    message = error["msg"].removeprefix("Value error, ")
    if "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], dict):
        return f"{owner}: {key}: {message} (got {error['input']!r})"
    return f"{owner}: {key}: {message}"


LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# Model folders lab2 builds offline (lab2/local_models.py), and the command that builds each.
BUILDABLE_MODELS = {"models/tiny-random-llama": "python -m lab2 tiny-model", "models/smollm2-135m-instruct": "python -m lab2 real-model"}
BUNDLED_TEMPLATES = {"llama-3.1": "llama-3.1.jinja"}  # files in lab2/chat_templates/
# lab2's own folders: a name under one of them is a path even before the folder exists.
PROJECT_FOLDERS = ("models", "data", "outputs", "params")


def looks_like_local_path(source: str) -> bool:
    """A path, as a user means it: starting with '.', '/' or '~', ending in a data-file suffix, with
    more than one '/', or whose first segment is a folder here (or one of lab2's own). Anything else,
    `owner/name` or a bare `name`, is a hub id."""
    first = source.split("/", 1)[0]
    return (source.startswith((".", "/", "~")) or Path(source).suffix in LOCAL_DATA_SUFFIXES + (".jinja",)
            or source.count("/") > 1 or first in PROJECT_FOLDERS or ("/" in source and Path(first).expanduser().is_dir()))


def chat_template_problem(name: str) -> str | None:
    """Why a `data.chat_template` value cannot be used, or None: 'model', a bundled name or a .jinja file."""
    if name == "model" or name in BUNDLED_TEMPLATES:
        return None
    if Path(name).suffix != ".jinja":
        return f"unknown template {name!r}; use 'model', one of {sorted(BUNDLED_TEMPLATES)} or a .jinja file"
    return _local_path_problem("data.chat_template.file", name)


def chat_template_text(name: str) -> str | None:
    """The Jinja text of a bundled template or a .jinja file; None for 'model' (the tokenizer's own)."""
    from importlib import resources

    if name == "model":
        return None
    if name in BUNDLED_TEMPLATES:
        return resources.files("lab2.chat_templates").joinpath(BUNDLED_TEMPLATES[name]).read_text()
    return Path(name).expanduser().read_text()


def template_token_problem(template: str, tokenizer) -> str | None:
    """Why a chat template does not fit a tokenizer, or None: every special-token marker the template
    writes (`<|...|>`) must be a special token of that vocabulary. Otherwise training would read Llama's
    `<|start_header_id|>` as plain text in, say, Qwen's or SmolLM2's vocabulary."""
    import re

    markers = sorted(set(re.findall(r"<\|[A-Za-z0-9_]+\|>", template)))
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    missing = [m for m in markers if m not in special]
    return f"writes {', '.join(missing)}, which {'is not a special token' if len(missing) == 1 else 'are not special tokens'} of this model" if missing else None


@functools.cache
def _local_template_problem(model_name: str, template_name: str) -> str | None:
    from transformers import AutoTokenizer

    return template_token_problem(chat_template_text(template_name), AutoTokenizer.from_pretrained(model_name))


def check_template_fits_model(cfg: "ExperimentConfig", layers: list[tuple[Path, dict]]) -> None:
    """A bundled or file template must speak the model's special tokens; checked here for a local model
    (a hub model is checked when its tokenizer loads, lab2.modeling.load_tokenizer)."""
    name, model = cfg.data.chat_template, cfg.model.name
    if name == "model" or not looks_like_local_path(model):
        return
    problem = _local_template_problem(str(Path(model).expanduser().resolve()), name)
    if problem:
        owner = next((path for path, data in reversed(layers) if _has_key(data, ("data", "chat_template"))), layers[-1][0])
        raise ConfigError(f"{owner}: data.chat_template: {name} {problem} ({model}); use 'model' (its own template) or one written for it")


def _local_path_problem(key: str, value: str) -> str | None:
    """Why a value that names something on disk cannot be used, or None."""
    if key == "data.chat_template":
        return chat_template_problem(value)
    if not looks_like_local_path(value):
        return None  # a hub id: checked when it is downloaded
    path = Path(value).expanduser()
    if not path.exists():
        command = BUILDABLE_MODELS.get(path.as_posix().rstrip("/")) if key == "model.name" else None
        hint = f"; `{command}` builds it (a sweep builds it by itself)" if command else ""
        return f"{value}: no such file or folder (relative to {Path.cwd()}){hint}"
    if key == "model.name" and not (path / "config.json").is_file():
        return f"{value}: not a model folder (no config.json in it)"
    if key == "data.source" and path.is_file() and path.suffix not in LOCAL_DATA_SUFFIXES:
        return f"{value}: unsupported data file; use {', '.join(LOCAL_DATA_SUFFIXES)} or a dataset folder"
    return None


def check_local_paths(cfg: ExperimentConfig, layers: list[tuple[Path, dict]]) -> None:
    """Every value that names a model, data or template on disk must be there, before any kernel starts.
    The error names the file that set the key."""
    for section, field in (("model", "name"), ("data", "source"), ("data", "chat_template")):
        key, value = f"{section}.{field}", getattr(getattr(cfg, section), field)
        problem = _local_path_problem(key, value)
        if problem:
            owner = next((path for path, data in reversed(layers) if _has_key(data, (section, field))), layers[-1][0])
            raise ConfigError(f"{owner}: {key}: {problem}")
    for i, extra in enumerate(cfg.data.train_sources):
        problem = None if extra.source == "pool" else _local_path_problem("data.source", extra.source)
        if problem:
            owner = next((path for path, data in reversed(layers) if _has_key(data, ("data", "train_sources"))), layers[-1][0])
            raise ConfigError(f"{owner}: data.train_sources[{i}].source: {problem}")


def merged_layers(path: Path, overrides: dict | None = None) -> tuple[dict, list[tuple[Path, dict]]]:
    """An experiment file merged over its bases and overrides, not yet validated; and the layers."""
    layers = [(p, read_yaml(p)) for p in [*base_chain(path), path]]
    if overrides:
        layers.append((Path("<overrides>"), overrides))
    merged: dict = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    merged.setdefault("experiment", path.stem)
    return merged, layers


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read an experiment file with its bases, apply overrides, validate."""
    path = Path(path)
    merged, layers = merged_layers(path, overrides)
    try:
        cfg = ExperimentConfig.model_validate(merged)
    except ValidationError as exc:
        problems = [_describe(err, layers) for err in exc.errors()]
        raise ConfigError("; ".join(problems)) from None
    check_local_paths(cfg, layers)
    check_template_fits_model(cfg, layers)
    return cfg


def stage_config(params_path: str | Path, overrides: dict | None = None, resolved: dict | None = None) -> ExperimentConfig:
    """A stage notebook's config: the one the sweep resolved and validated, passed in whole (`resolved`,
    so the params file is not read again and cannot have changed since the sweep planned the run), else
    the params file with its bases and overrides (a notebook run by hand)."""
    if resolved:
        return ExperimentConfig.model_validate(resolved)
    return load_config(params_path, overrides)


def sweep_output_folder(sweep: str | Path) -> Path:
    """A sweep's own output folder, outputs/<its params folder's name> (outputs/smol for params/smol):
    sweeps never nest, and `make clean SWEEP=...` removes one sweep's results only."""
    return Path("outputs") / Path(sweep).resolve().name


def experiment_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into their experiment files (every *.yaml but base.yaml)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(f for f in p.glob("*.y*ml") if f.name != BASE_NAME))
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"{p}: no such file or folder")
    return files
