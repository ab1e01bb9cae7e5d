import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab2.config import ConfigError, base_chain, deep_merge, experiment_files, load_config
from tests.conftest import REPO


def test_defaults_alone_are_a_valid_config():
    from lab2.config import ExperimentConfig

    cfg = ExperimentConfig(experiment="defaults")
    assert cfg.train.eval_steps <= cfg.train.max_steps and cfg.data.source == "mlabonne/FineTome-100k"


def test_deep_merge_overrides_leaves_and_keeps_siblings():
    base = {"train": {"learning_rate": 1e-4, "max_steps": 60}, "lora": {"r": 16}}
    merged = deep_merge(base, {"train": {"learning_rate": 5e-4}})
    assert merged == {"train": {"learning_rate": 5e-4, "max_steps": 60}, "lora": {"r": 16}}
    assert base["train"]["learning_rate"] == 1e-4  # input untouched


def test_experiment_inherits_every_base_outermost_first(params_tree):
    params_tree("demo/base.yaml", {"train": {"max_steps": 8, "learning_rate": 1e-3}})
    exp = params_tree("demo/lr.yaml", {"train": {"learning_rate": 5e-3}})
    assert [p.parent.name for p in base_chain(exp)] == ["params", "demo"]
    cfg = load_config(exp)
    assert cfg.experiment == "lr"  # defaults to the file name
    assert cfg.train.learning_rate == 5e-3  # the file wins
    assert cfg.train.max_steps == 8  # the sweep's base beats the root base (4)
    assert cfg.lora.r == 4  # the root base still applies


def test_config_hash_tracks_content(params_tree):
    a = load_config(params_tree("s/a.yaml", {"experiment": "x"}))
    b = load_config(params_tree("s/b.yaml", {"experiment": "x"}))
    c = load_config(params_tree("s/c.yaml", {"experiment": "x", "lora": {"r": 8}}))
    assert a.config_hash == b.config_hash != c.config_hash
    # A sweep's declared design describes its runs and changes none: no retraining, no re-evaluation.
    design = {"measure": "val_loss_clean", "seed_sigma": 0.05, "paired_standard_error": 0.03, "measured": "a pilot"}
    d = load_config(params_tree("s/d.yaml", {"experiment": "x", "design": design}))
    assert (d.config_hash, d.eval_hash) == (a.config_hash, a.eval_hash) and d.design.seed_sigma == 0.05
    with pytest.raises(ConfigError, match="design.measure"):
        load_config(params_tree("s/e.yaml", {"experiment": "x", "design": {**design, "measure": "train_loss"}}))


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"train": {"lerning_rate": 1e-3}}, "unknown key 'train.lerning_rate' (did you mean 'train.learning_rate'?)"),
        ({"train": {"learning_rate": 0}}, "train.learning_rate: Input should be greater than 0"),
        ({"train": {"learning_rate": -1e-4}}, "train.learning_rate: Input should be greater than 0"),
        ({"lora": {"r": 0}}, "lora.r: Input should be greater than 0"),
        ({"train": {"max_steps": -5}}, "train.max_steps: Input should be greater than 0"),
        ({"train": {"batch_size": "two"}}, "train.batch_size: Input should be a valid integer"),
        ({"train": {"eval_steps": 50}}, "eval_steps=50 is larger than max_steps=4"),
        ({"train": {"epochs": 1}}, "set exactly one of max_steps and epochs"),
        ({"data": {"val_size": 60, "test_size": 60}}, "leaves no training rows in subset=120"),
        ({"model": {"dtype": "float8"}}, "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
        ({"experiment": "has space"}, "experiment: String should match pattern"),
    ],
)
def test_bad_values_name_the_file_and_key(params_tree, override, expected):
    path = params_tree("s/bad.yaml", override)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message or "base.yaml" in message


def test_error_blames_the_file_that_set_the_key(params_tree):
    params_tree("s/base.yaml", {"lora": {"r": -1}})
    exp = params_tree("s/exp.yaml", {"experiment": "exp"})
    with pytest.raises(ConfigError, match=r"params/s/base\.yaml: lora\.r"):
        load_config(exp)


def test_yaml_syntax_error_names_file_and_line(params_tree):
    path = params_tree("s/broken.yaml", "train:\n  max_steps: 4\n  learning_rate: [1e-3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+:\d+: YAML syntax error"):
        load_config(path)


def test_experiment_files_skip_bases(params_tree):
    params_tree("s/base.yaml", {})
    params_tree("s/b.yaml", {})
    params_tree("s/a.yml", {})
    assert [p.name for p in experiment_files([params_tree("s/c.yaml", {}).parent])] == ["a.yml", "b.yaml", "c.yaml"]


def test_cli_validate_reports_one_line_per_bad_file_without_traceback(params_tree):
    good = params_tree("s/good.yaml", {})
    bad = params_tree("s/bad.yaml", {"lora": {"rank": 8}})
    result = subprocess.run(
        [sys.executable, "-m", "lab2", "validate", str(good.parent)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"ok   {good}" in result.stdout
    assert result.stderr.strip() == f"error: {bad}: unknown key 'lora.rank' (did you mean 'lora.r'?)"
    assert "Traceback" not in result.stderr


def test_a_stage_takes_the_sweeps_resolved_config_without_reading_the_params_file(tmp_path):
    """The sweep validates once and passes the config whole: the notebook's config is the same run (same
    hashes) even when the params file has changed or gone since."""
    from lab2.config import stage_config

    path = tmp_path / "params" / "x" / "rank.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("lora:\n  r: 32\n")
    planned = load_config(path, {"train": {"max_steps": 7, "eval_steps": 7, "save_steps": 7}})
    path.write_text("lora:\n  r: 4\n")  # edited after the sweep planned the run
    passed = stage_config(path, {}, resolved=planned.to_dict())
    assert (passed.config_hash, passed.eval_hash, passed.lora.r, passed.train.max_steps) == (planned.config_hash, planned.eval_hash, 32, 7)
    path.unlink()
    assert stage_config(path, {}, resolved=planned.to_dict()) == planned
    with pytest.raises(ConfigError, match="rank.yaml: no such params file"):  # run by hand, without `resolved`: the file is read
        stage_config(path, {})


def test_shipped_params_are_valid(demo_model):
    from tests.conftest import REPO

    for path in experiment_files([REPO / "params" / "tiny_random"]):
        load_config(path)
    assert len(experiment_files([REPO / "params" / "tiny_random"])) >= 4


def test_every_sweep_meant_for_a_cpu_scores_a_subset_of_ifeval():
    """params/base.yaml asks for all 541 IFEval prompts at 1280 tokens, a GPU's work (params/lab2). A sweep
    meant for a CPU must ask for a subset, or its first evaluation takes hours (params/smol_data did not)."""
    import yaml

    folders = sorted(p for p in (REPO / "params").rglob("*") if p.is_dir() and "lab2" not in p.relative_to(REPO / "params").parts)
    checked = 0
    for path in experiment_files(folders):
        merged: dict = {}
        for layer in [*base_chain(path), path]:
            merged = deep_merge(merged, yaml.safe_load(layer.read_text()) or {})
        assert merged["eval"]["ifeval_prompts"] is not None and merged["eval"]["ifeval_prompts"] <= 48, path
        assert merged["eval"]["ifeval_max_new_tokens"] <= 128, path
        checked += 1
    assert checked >= 12  # tiny_random, smol (qlora included) and smol_data


def test_shards_split_a_sweep_without_overlap_and_do_not_move_when_a_file_is_added():
    from pathlib import Path

    from lab2.sweep import select_shard

    def plan(names):
        return [(Path(f"params/x/{name}.yaml"), {}) for name in names] + [(Path("params/x/baseline.yaml"), {"experiment": "baseline-seed1"})]

    names = ["baseline", "lr_1e-4", "lr_5e-4", "rank_8", "rank_32", "steps_300"]
    before = plan(names)
    parts = [select_shard(before, f"{k}/3") for k in (1, 2, 3)]
    assert sorted(map(str, sum(parts, []))) == sorted(map(str, before))  # every run in exactly one shard
    assert sum(map(len, parts)) == len(before)
    # `make report` writes exp_best_combination.yaml (sorted first by name): no other run changes shard.
    after = plan(["exp_best_combination", *names])
    for k in (1, 2, 3):
        assert [run for run in select_shard(after, f"{k}/3") if run[0].stem != "exp_best_combination"] == parts[k - 1]
    assert select_shard(before, None) == before
    with pytest.raises(ConfigError, match="SHARD=4/3: expected K/N"):
        select_shard(before, "4/3")


def test_make_clean_removes_one_sweep_only(tmp_path):
    for sweep in ("tiny_random", "smol"):
        (tmp_path / "outputs" / sweep / "baseline").mkdir(parents=True)
        (tmp_path / "outputs" / sweep / "baseline" / "metrics.json").write_text("{}")
    subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "clean", "SWEEP=params/tiny_random"], cwd=tmp_path, check=True)
    assert not (tmp_path / "outputs" / "tiny_random").exists()
    assert (tmp_path / "outputs" / "smol" / "baseline" / "metrics.json").is_file()
    subprocess.run(["make", "-s", "-f", str(REPO / "Makefile"), "clean"], cwd=tmp_path, check=True)  # the default sweep's: the real model's
    assert not (tmp_path / "outputs" / "smol").exists() and (tmp_path / "outputs").is_dir()


def test_every_sweep_writes_to_its_own_folder():
    from lab2.config import sweep_output_folder

    assert sweep_output_folder("params/tiny_random") == sweep_output_folder("params/tiny_random/") == Path("outputs/tiny_random")
    assert sweep_output_folder(REPO / "params" / "smol") == Path("outputs/smol")


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({"model": {"name": "models/not-built-yet"}}, "model.name: models/not-built-yet: no such file or folder"),
        ({"model": {"name": "./weights/x"}}, "model.name: ./weights/x: no such file or folder"),
        ({"data": {"source": "data/missing.jsonl"}}, "data.source: data/missing.jsonl: no such file or folder"),
        ({"data": {"source": "conversations.jsonl"}}, "data.source: conversations.jsonl: no such file or folder"),
        ({"data": {"chat_template": "llama3"}}, "data.chat_template: unknown template 'llama3'; use 'model', one of ['llama-3.1']"),
        ({"data": {"chat_template": "templates/mine.jinja"}}, "data.chat_template: templates/mine.jinja: no such file or folder"),
    ],
)
def test_every_name_on_disk_is_resolved_at_validate_time(params_tree, setting, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are read from here, where none of these exist
    path = params_tree("s/exp.yaml", setting)
    result = subprocess.run([sys.executable, "-m", "lab2", "validate", str(path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {path}: ") and expected in result.stderr


def test_a_folder_that_is_not_a_model_and_an_unsupported_data_file_are_refused(params_tree, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="model.name: .*empty: not a model folder"):
        load_config(params_tree("s/m.yaml", {"model": {"name": str(tmp_path / "empty")}}))
    with pytest.raises(ConfigError, match=r"data.source: .*rows.csv: unsupported data file"):
        load_config(params_tree("s/d.yaml", {"data": {"source": str(tmp_path / "rows.csv")}}))


def test_hub_ids_stay_hub_ids_and_local_names_are_paths(tmp_path, monkeypatch):
    from lab2.config import looks_like_local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for hub in ("unsloth/Llama-3.2-1B-Instruct", "mlabonne/FineTome-100k", "gpt2"):
        assert not looks_like_local_path(hub)
    for local in ("models/tiny-random-llama", "checkpoints/run", "./x", "/abs/x", "~/x", "a/b/c", "rows.jsonl", "t.jinja"):
        assert looks_like_local_path(local), local


def test_a_template_error_blames_the_file_that_set_it(params_tree):
    params_tree("s/base.yaml", {"data": {"chat_template": "chatml"}})
    with pytest.raises(ConfigError, match=r"params/s/base\.yaml: data\.chat_template: unknown template 'chatml'"):
        load_config(params_tree("s/exp.yaml", {}))


def test_base_yaml_spells_out_exactly_the_code_defaults():
    import yaml

    from lab2.config import ExperimentConfig

    base = yaml.safe_load((REPO / "params" / "base.yaml").read_text())
    defaults = ExperimentConfig(experiment="defaults").to_dict()
    sections = ("model", "lora", "data", "train", "eval", "export")
    assert set(base) == set(sections)
    assert {section: base[section] for section in sections} == {section: defaults[section] for section in sections}


def test_readme_validate_example_is_the_real_output(demo_model):
    """The params page's console example is checked, not typed: a changed hash must be changed there too."""
    readme = (REPO / "docs" / "params.md").read_text()
    example = [line for line in readme.splitlines() if line.startswith("ok   params/tiny_random/")]
    files = [line.split()[1] for line in example]
    assert len(example) == 4 and files[0] == "params/tiny_random/baseline.yaml"
    real = subprocess.run([sys.executable, "-m", "lab2", "validate", *files], cwd=REPO,
                          capture_output=True, text=True, timeout=120).stdout.strip()
    assert example == real.splitlines()


def test_readme_typo_example_is_the_real_message(params_tree):
    readme = (REPO / "docs" / "params.md").read_text()
    example = next(line for line in readme.splitlines() if line.startswith("error: params/tiny_random/lr_5e-3.yaml: "))
    typo = params_tree("demo/lr_5e-3.yaml", {"train": {"lerning_rate": 5e-3}})
    with pytest.raises(ConfigError) as info:
        load_config(typo)
    assert example.removeprefix("error: params/tiny_random/lr_5e-3.yaml: ") == str(info.value).removeprefix(f"{typo}: ")


def _chatml_model_folder(root: Path) -> Path:
    """A model folder whose vocabulary has ChatML's special tokens and none of Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{w: i + 3 for i, w in enumerate("hi there user assistant".split())}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}"
    folder = root / "chatml-model"
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    return folder


def test_a_bundled_template_whose_tokens_the_model_lacks_is_refused(params_tree, tmp_path):
    model = _chatml_model_folder(tmp_path)
    params_tree("s/base.yaml", {"model": {"name": str(model)}})
    refused = params_tree("s/llama_template.yaml", {"data": {"chat_template": "llama-3.1"}})
    with pytest.raises(ConfigError) as error:
        load_config(refused)
    message = str(error.value)
    assert message.startswith(f"{refused}: data.chat_template: llama-3.1 writes <|end_header_id|>, ")
    assert "<|eot_id|>" in message and "are not special tokens of this model" in message and "use 'model'" in message
    assert "\n" not in message
    assert load_config(params_tree("s/own.yaml", {})).data.chat_template == "model"  # the default: its own template

    from lab2.modeling import load_tokenizer  # the same refusal where the tokenizer loads (a hub model)

    with pytest.raises(ConfigError, match=r"llama-3.1 writes <\|end_header_id\|>"):
        load_tokenizer(str(model), "llama-3.1")
    assert load_tokenizer(str(model), "model").chat_template.startswith("{% for m in messages %}<|im_start|>")


def test_the_front_page_is_short_and_every_link_resolves():
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 6200
    links = re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)\)", readme)
    assert len(links) >= 10 and all((REPO / link).exists() for link in links), links
    for page in (REPO / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / link).exists(), (page.name, link)
