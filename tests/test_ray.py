"""EXECUTOR=ray: two tiny experiments in parallel on a local Ray instance, same results as local."""

import functools
import time

import pytest

from lab2 import runs
from lab2.ray_executor import run_on_ray
from lab2.sweep import run_sweep


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_matches_the_local_one(local_ray, params_tree, tmp_path, capsys):
    params_tree("pair/a.yaml", {"train": {"seed": 11}})
    sweep = params_tree("pair/b.yaml", {"train": {"seed": 12}, "lora": {"r": 8, "alpha": 16}}).parent
    start = time.perf_counter()
    parallel = run_sweep(sweep, tmp_path / "ray", execute=run_on_ray)
    parallel_seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    start = time.perf_counter()
    sequential = run_sweep(sweep, tmp_path / "local")
    sequential_seconds = time.perf_counter() - start

    assert [o.status for o in parallel] == ["complete", "complete"] == [o.status for o in sequential]
    assert "[done 2/2]" in printed and "running" in printed
    for name in ("a", "b"):
        ray_files = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / name).rglob("*") if p.is_file())
        local_files = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / name).rglob("*") if p.is_file())
        assert ray_files == local_files
        on_ray, here = runs.read_metrics(tmp_path / "ray" / name), runs.read_metrics(tmp_path / "local" / name)
        assert on_ray["config_hash"] == here["config_hash"]
        assert [h["loss"] for h in on_ray["train"]["history"]] == [h["loss"] for h in here["train"]["history"]]
        assert on_ray["eval"]["test_loss"] == here["eval"]["test_loss"]
    print(f"2 experiments: {parallel_seconds:.1f} s in parallel on Ray vs {sequential_seconds:.1f} s one after the other")


def test_ray_copy_back_unpacks_into_out(local_ray, params_tree, tmp_path):
    sweep = params_tree("one/c.yaml", {}).parent
    [outcome] = run_sweep(sweep, tmp_path / "out", execute=functools.partial(run_on_ray, copy_back=True))
    assert outcome.status == "complete"
    assert runs.read_metrics(tmp_path / "out" / "c")["status"] == "complete"
    assert (tmp_path / "out" / "c" / "train.ipynb").is_file() and (tmp_path / "out" / "c" / "adapter").is_dir()
