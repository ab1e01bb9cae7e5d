"""`make sweep EXECUTOR=ray`: the same runs as the local executor, as Ray tasks in parallel.

Each run (one params file, or one seed of it) is a Ray task that calls the local executor's
`run_experiment`, so failures are isolated the same way and the outputs are the same. With a
shared OUT (one machine, NFS, a mounted bucket) tasks write in place; with `copy_back`, each task
runs in a scratch folder on its worker and returns the experiment folder as a tarball that is
unpacked into OUT here. `map_on_ray` gives `lab2 grade` the same: one submission per task. Ray is imported
only on this path: the default sweep never needs it.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path

from lab2 import runs
from lab2.sweep import Outcome, describe, run_experiment, run_name


def _run_task(params_file: str, out_root: str, overrides: dict, copy_back: bool) -> tuple[Outcome, bytes | None]:
    if not copy_back:
        return run_experiment(Path(params_file), Path(out_root), overrides), None
    with tempfile.TemporaryDirectory() as scratch:
        outcome = run_experiment(Path(params_file), Path(scratch), overrides)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for folder in Path(scratch).iterdir():
                tar.add(folder, arcname=folder.name)
        return outcome, buffer.getvalue()


def ray_task(function, address: str | None, cpus: float, gpus: float | None):
    """`function` as a Ray task with these resources, on a cluster started here unless `address` names one:
    one GPU per task where the cluster has GPUs (`gpus` None), none on a CPU-only one; never retried."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    if gpus is None:
        gpus = 1 if ray.cluster_resources().get("GPU") else 0
    return ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(function)


def map_on_ray(function, calls: dict[str, tuple], address: str | None = None, cpus: float = 1, gpus: float | None = None,
               poll_seconds: float = 5.0) -> dict[str, object]:
    """`function(*args)` for each label's args, one Ray task each (`lab2 grade`: one submission per task);
    each result by its label as it comes, a failed task's as its exception, so one loss sinks nothing else."""
    import ray

    task = ray_task(function, address, cpus, gpus)
    labels = {task.remote(*args): label for label, args in calls.items()}
    pending, results = list(labels), {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds)
        for ref in ready:
            try:
                results[labels[ref]] = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its call only
                results[labels[ref]] = exc
            print(f"[done {len(results)}/{len(labels)}] {labels[ref]}", flush=True)
    return results


def run_on_ray(plan: list[tuple[Path, dict]], out_root: Path, address: str | None = None, cpus: float = 1,
               gpus: float | None = None, copy_back: bool = False, poll_seconds: float = 5.0) -> list[Outcome]:
    import ray

    task = ray_task(_run_task, address, cpus, gpus)
    out_root = out_root.resolve()
    labels = {}
    for params_file, overrides in plan:
        ref = task.remote(str(params_file.resolve()), str(out_root), overrides, copy_back)
        labels[ref] = run_name(params_file, overrides)
    pending, outcomes, start = list(labels), {}, time.perf_counter()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=poll_seconds)
        for ref in ready:
            try:
                outcome, archive = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its run, not the sweep
                outcome, archive = Outcome(labels[ref], "failed", error=f"ray task failed: {type(exc).__name__}: {exc}"), None
            if archive:
                with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                    tar.extractall(out_root, filter="data")
            outcomes[ref] = outcome
            print(f"[done {len(outcomes)}/{len(labels)}] {describe(outcome)}", flush=True)
        done = f"done {sum(o.status != 'failed' for o in outcomes.values())}; failed {sum(o.status == 'failed' for o in outcomes.values())}"
        if copy_back:  # work happens in the workers' scratch folders: only "in flight" is known here
            print(f"  {time.perf_counter() - start:5.0f} s: in flight {', '.join(labels[r] for r in pending) or '-'}; {done}", flush=True)
        else:
            running = [labels[r] for r in pending if (runs.read_metrics(out_root / labels[r]) or {}).get("status") == "running"]
            print(f"  {time.perf_counter() - start:5.0f} s: running {', '.join(running) or '-'}; "
                  f"waiting {len(pending) - len(running)}; {done}", flush=True)
    return [outcomes[ref] for ref in labels]
