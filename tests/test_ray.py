"""EXECUTOR=ray: the swept checkout's two experiments again, in parallel on a local Ray instance, one
written in place in OUT and one in a worker's scratch folder and copied back; the same results as the
local executor gave (the `swept` fixture)."""

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from lab2 import runs
from lab2.ray_executor import run_on_ray
from lab2.sweep import run_sweep
from tests.conftest import EXPORT_FILES, copy_of_swept


@pytest.fixture
def local_ray(swept, tmp_path, monkeypatch):
    """A copy of the swept checkout (its two params files, no outputs), with Ray started there: Ray's
    workers start where the driver stood, so the params' relative paths resolve as in the sweep."""
    import ray

    checkout = copy_of_swept(swept, tmp_path / "checkout")
    shutil.rmtree(checkout / "outputs")
    monkeypatch.chdir(checkout)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield checkout
    ray.shutdown()


def in_place_and_copied_back(plan, out_root):
    """The first run in place in OUT and the second copied back, both at once on the one Ray instance."""
    assert len(plan) == 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_place = pool.submit(run_on_ray, plan[:1], out_root, poll_seconds=1.0)
        copied_back = pool.submit(run_on_ray, plan[1:], out_root, copy_back=True, poll_seconds=1.0)
        return in_place.result() + copied_back.result()


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not {p.relative_to(folder).parts[0], p.name} & EXPORT_FILES)  # added to one local run by make export


def test_ray_runs_match_the_local_ones_in_place_and_copied_back(local_ray, swept, tmp_path, capsys):
    local = swept / "outputs"
    outcomes = run_sweep(local_ray / "params" / "tiny_random", tmp_path / "ray", execute=in_place_and_copied_back)
    printed = capsys.readouterr().out
    assert [(o.name, o.status) for o in outcomes] == [("baseline", "complete"), ("lr_high", "complete")]
    assert printed.count("[done 1/1]") == 2
    assert "running" in printed and "in flight" in printed  # the in-place run's status, the copied-back one's
    for name in ("baseline", "lr_high"):
        on_ray, here = runs.read_metrics(tmp_path / "ray" / name), runs.read_metrics(local / name)
        assert _files(tmp_path / "ray" / name) == _files(local / name)
        assert on_ray["status"] == "complete" and on_ray["config_hash"] == here["config_hash"]
        assert [h["loss"] for h in on_ray["train"]["history"]] == [h["loss"] for h in here["train"]["history"]]
        assert on_ray["eval"]["test_loss"] == here["eval"]["test_loss"]
    copied = tmp_path / "ray" / "lr_high"  # unpacked from the worker's tarball
    assert (copied / "train.ipynb").is_file() and (copied / "adapter" / "adapter_model.safetensors").is_file()
    assert not any(p.name.startswith("tmp") for p in (tmp_path / "ray").iterdir())  # no scratch folder in OUT
