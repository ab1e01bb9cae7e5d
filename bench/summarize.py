"""bench/results/*.json -> docs/benchmarks.md: figure | lab2 | reference | ratio | machine."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("bench/results")


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    for name, label in (("train_throughput", "tiny model"), ("train_throughput_smol", "SmolLM2-135M-Instruct, real weights")):
        if t := load(name):
            ref, ours = t["reference"], t["lab2"]
            out += [
                (f"training: useful tokens/s ({label}; CPU: lab2's padding-free batches and LM head on reply tokens only, "
                 "against stock TRL with the model's own loss)",
                 f"{ours['useful_tokens_per_second']:.1f}", f"{ref['useful_tokens_per_second']:.1f}", f"{t['useful_tokens_per_second_ratio']:.2f}x", t["machine"]),
                (f"training: padding fraction ({label})", f"{100 * ours['padding_fraction']:.1f} %", f"{100 * ref['padding_fraction']:.1f} %", "-", t["machine"]),
                (f"training: validation loss after the same {t['optimizer_steps']} steps ({label})", f"{ours['val_loss']:.4f}", f"{ref['val_loss']:.4f}",
                 f"diff {t['val_loss_difference']:+.4f}", t["machine"]),
            ]
    if f := load("fixed_cost"):
        anchor = f["reports_anchor"]["outside_seconds"]
        out += [
            ("fixed cost per experiment (s): wall - training - evaluation; one kernel vs a kernel per notebook",
             f"{f['fixed_seconds']:.1f}", f"{f['fixed_seconds_kernel_per_notebook']:.1f}",
             f"{f['kernel_per_notebook_vs_lab2']:.2f}x (same losses: {f['same_losses']})", f["machine"]),
            ("fixed cost per experiment (s) vs the hand-written reports", f"{f['fixed_seconds']:.1f}",
             f"{anchor} (reports, 60-step run on Colab)", f"{anchor / f['fixed_seconds']:.0f}x less", f["machine"]),
        ]
    if e := load("eval_batching"):
        out += [
            ("evaluation: loss, batched vs one-by-one (s)", f"{e['loss']['batched_seconds']:.2f}", f"{e['loss']['single_seconds']:.2f}",
             f"{e['loss']['speedup']:.2f}x", e["machine"]),
            ("evaluation: greedy generation, batched vs one-by-one (s)", f"{e['generation']['batched_seconds']:.2f}",
             f"{e['generation']['single_seconds']:.2f}", f"{e['generation']['speedup']:.2f}x (same text: {e['generation']['identical_text']})", e["machine"]),
        ]
    if x := load("export_1b"):
        out += [
            ("export 1B: HF -> f16 GGUF + Q4_K_M (s)", f"{x['convert_plus_q4_k_m_seconds']:.1f}",
             f"{x['anchors']['colab_quantization_only_seconds']} (Colab, quantization alone)",
             f"{x['anchors']['colab_quantization_only_seconds'] / x['convert_plus_q4_k_m_seconds']:.1f}x", x["machine"]),
            ("export 1B: peak RSS (MB)", f"{x['peak_rss_mb']:.0f}", "12 700 (free Colab RAM)", f"{x['peak_rss_mb'] / 12700:.0%} of it", x["machine"]),
            ("export 1B: Q4_K_M size vs f16", f"-{x['q4_k_m_reduction_vs_f16_pct']:.1f} %", "-68 % (reports)", "-", x["machine"]),
        ]
    if a := load("app_throughput"):
        n, app_ttft, raw_ttft = a["prompt_tokens"], a["app_first_token_seconds"], a["raw_first_token_seconds"]
        out += [
            (f"serving 1B Q4_K_M, 2 threads: prompt tokens/s to the first token ({n}-token prompt), app vs raw llama-cpp-python",
             f"{n / app_ttft:.0f} ({app_ttft:.2f} s)", f"{n / raw_ttft:.0f} ({raw_ttft:.2f} s)", f"{raw_ttft / app_ttft:.0%}", a["machine"]),
            ("serving 1B Q4_K_M, 2 threads: generation tokens/s as streamed, app vs raw llama-cpp-python",
             f"{a['app_tokens_per_second']:.1f}", f"{a['raw_tokens_per_second']:.1f}", f"{a['app_vs_raw']:.0%}", a["machine"]),
        ]
    if m := load("qlora_memory"):
        lora, qlora, anchor = m["lora"], m["qlora"], m["seeds_anchor"]
        out += [
            ("training 1B architecture: peak memory (MB), QLoRA (nf4 weights) vs LoRA (fp32 weights), same run otherwise",
             f"{qlora['peak_memory_mb']:.0f}", f"{lora['peak_memory_mb']:.0f}",
             f"LoRA uses {m['peak_memory_ratio_lora_over_qlora']:.2f}x (reports on a T4: {anchor['lora_gb'] / anchor['qlora_gb']:.2f}x, "
             f"{anchor['lora_gb']} vs {anchor['qlora_gb']} GB)", m["machine"]),
            ("training 1B architecture: s/step, QLoRA vs LoRA (CPU: nf4 is dequantised at every matmul)",
             f"{qlora['seconds_per_step']:.2f}", f"{lora['seconds_per_step']:.2f}", f"{m['seconds_per_step_ratio_qlora_over_lora']:.2f}x",
             m["machine"]),
        ]
    if r := load("merge_routes"):
        for case, label in (("smollm2", "SmolLM2-135M, trained QLoRA adapter"), ("llama_1b_architecture", "1B architecture, random adapter")):
            if c := r.get(case):
                d, o = c["dequantized"], c["original"]
                out.append((f"4-bit merge ({label}): perplexity vs the model evaluated, merged into dequantised nf4 vs into the 16-bit original",
                            f"{d['perplexity_vs_evaluated_pct']:+.3f} % (KL {d['kl_per_token']:.2g}, same answers {d['identical_answers']:.0%})",
                            f"{o['perplexity_vs_evaluated_pct']:+.3f} % (KL {o['kl_per_token']:.2g}, same answers {o['identical_answers']:.0%})",
                            "-", r["machine"]))
    if q := load("quantizer_routes"):
        for fmt, row in q["formats"].items():
            ours, other = row["llama-cpp-python"], row["llama-cpp-py-sync"]
            out.append((f"quantize {fmt} (demo model): llama-cpp-python (compiled) vs prebuilt llama-cpp-py-sync",
                        f"{ours['seconds']:.2f} s, perplexity {ours['perplexity_vs_hf_pct']:+.2f} % vs HF",
                        "fails to load: " + ("needs GLIBC_2.38" if "GLIBC_2.38" in other.get("error", "") else other.get("error", "-")[:60])
                        if "error" in other else f"{other['seconds']:.2f} s, loss diff {row['loss_difference']:+.4f}",
                        "-", q["glibc"]))
    return out


def main() -> None:
    lines = ["# Benchmarks", "",
             "Written by `make bench` from `bench/results/*.json`. Each ratio is measured side by side in one run on the",
             "machine named, except where the reference is a figure quoted by the hand-written lab reports.", "",
             "| figure | lab2 | reference | ratio | machine |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows()]
    if a := load("app_throughput"):
        lines += ["", f"llama.cpp's own counters in the same serving run: {a['engine_prompt_tokens_per_second']:.0f} prompt tokens/s, "
                  f"{a['engine_generation_tokens_per_second']:.1f} generation tokens/s."]
    if g := load("gpu"):
        lines += ["", f"GPU, `make bench-gpu` (Llama-3.2-1B architecture, random weights; recipe {g['recipe']}; {g['machine']}):", "",
                  "| backend | s/step | useful tokens/s | peak GPU memory (MB) | MFU | final eval loss |", "|---|---|---|---|---|---|"]
        for name, r in g["backends"].items():
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | |")
                continue
            mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
            lines.append(f"| {name} | {r['seconds_per_step']:.2f} | {r['useful_tokens_per_second']:.0f} | "
                         f"{r['peak_memory_mb']:.0f} | {mfu} | {r['final_eval_loss']:.4f} |")
    else:
        lines += ["", "GPU (Unsloth vs hf backend on the 1B architecture): not measured yet, no GPU has been lent to a session.",
                  "`make bench-gpu` measures it on one CUDA GPU: seconds per step, useful tokens/s, peak memory and MFU per backend."]
    if i := load("ifeval_generation"):
        lines += ["", f"IFEval generation, `bench/ifeval_generation.py` ({i['model']}, {i['prompts']} IFEval prompts, greedy, up to "
                  f"{i['max_new_tokens']} new tokens; {i['machine']}). Same prompts, one run; the evaluation's route is "
                  f"{i['evaluation_route']}, and only a route whose replies are its replies scores the same model:", "",
                  "| route | seconds | reply tokens/s | vs the evaluation's route | replies identical to it | IFEval (prompt, strict) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['seconds']:.1f} | {r['tokens_per_second']:.1f} | {r['speedup_vs_evaluation']:.2f}x | "
                  f"{r['identical_replies_vs_evaluation']:.0%} | {r['prompt_strict']:.1%} |" for name, r in i["routes"].items()]
        lines += ["", f"Fastest route that keeps the evaluation's replies: {i['fastest_route_keeping_the_replies']}."]
    Path("docs").mkdir(exist_ok=True)
    Path("docs/benchmarks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
