"""Interrupted runs resume identically; a NaN stops a run; old checkpoints are rotated away."""

import json
import os
import random
import signal
import subprocess
import sys

import pytest

from lab2 import runs
from lab2.config import load_config
from lab2.train import NonFiniteLossError, latest_checkpoint, run

RESUMABLE = {"max_steps": 12, "eval_steps": 3, "save_steps": 3, "save_total_limit": 2}


def _train_cli(params, out, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "lab2", "train", str(params), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


# The T4 recipe's QLoRA (nf4 base, 8-bit AdamW, gradient checkpointing) resumes as exactly as fp32 LoRA.
QLORA = {"model": {"load_in_4bit": True}, "train": {"optimizer": "adamw_8bit", "gradient_checkpointing": True}}


@pytest.mark.parametrize("recipe", ["lora", "qlora"])
def test_kill_9_after_a_checkpoint_then_rerun_ends_bit_identical(params_tree, tmp_path, recipe):
    extra = QLORA if recipe == "qlora" else {}
    params = params_tree("s/resume.yaml", {**extra, "train": {**RESUMABLE, **extra.get("train", {})}})
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    run(load_config(params), whole)  # the uninterrupted reference, here (what `lab2 train` calls)

    victim = _train_cli(params, interrupted)
    # A random checkpoint (the seed is printed so that a failure can be replayed with
    # LAB2_KILL_SEED=<seed>); killed the moment the run announces it saved, read from its own output.
    seed = int(os.environ.get("LAB2_KILL_SEED", random.SystemRandom().randrange(10**6)))
    kill_after = random.Random(seed).choice([3, 6, 9])
    print(f"kill -9 seed {seed}: after checkpoint-{kill_after}")
    for line in victim.stdout:
        if f"checkpoint-{kill_after} saved" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=300)
    assert victim.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert runs.read_metrics(interrupted / "resume")["status"] == "running"

    resumed = _train_cli(params, interrupted)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming from" in output and "checkpoint-" in output

    a, b = runs.read_metrics(whole / "resume"), runs.read_metrics(interrupted / "resume")
    print(  # the side-by-side figure for humans (pytest -s)
        f"killed after checkpoint-{kill_after}, resumed from {b['resumed_from'].rsplit('/', 1)[1]}: "
        f"final_loss {a['train']['final_loss']!r} vs {b['train']['final_loss']!r}, "
        f"final_eval_loss {a['train']['final_eval_loss']!r} vs {b['train']['final_eval_loss']!r}"
    )
    assert b["resumed_from"].endswith(f"checkpoint-{latest_step(b['resumed_from'])}")
    assert latest_step(b["resumed_from"]) >= kill_after
    assert a["precision"] == b["precision"] and a["precision"]["weights"] == ("nf4" if recipe == "qlora" else "float32")
    for key in ("final_loss", "final_eval_loss", "total_steps"):
        assert a["train"][key] == b["train"][key], key  # bit-identical on CPU with fixed seeds
    assert [h["loss"] for h in a["train"]["history"]] == [h["loss"] for h in b["train"]["history"]]
    assert a["train"]["eval_history"] == b["train"]["eval_history"]


def latest_step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def test_non_finite_loss_stops_the_run_as_failed(params_tree, tmp_path):
    cfg = load_config(params_tree("s/explode.yaml", {"train": {"learning_rate": 1e12, "max_steps": 6, "eval_steps": 6, "save_steps": 6}}))
    with pytest.raises(NonFiniteLossError, match="learning_rate=1e\\+12 is probably too high"):
        run(cfg, tmp_path)
    metrics = runs.read_metrics(tmp_path / "explode")
    assert metrics["status"] == "failed" and "non-finite" in metrics["error"]
    assert latest_checkpoint(tmp_path / "explode" / "checkpoints") is None  # no broken weights saved
    assert not (tmp_path / "explode" / "adapter").exists()


def test_only_the_newest_checkpoints_are_kept(params_tree, tmp_path):
    cfg = load_config(params_tree("s/disk.yaml", {"train": {"max_steps": 5, "save_steps": 1, "eval_steps": 5, "save_total_limit": 2}}))
    run(cfg, tmp_path)
    kept = sorted(p.name for p in (tmp_path / "disk" / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-4", "checkpoint-5"]


def test_cli_train_refuses_bad_input_in_one_line(params_tree, tmp_path):
    params = params_tree("s/nodata.yaml", {"data": {"source": str(tmp_path / "missing.jsonl")}})
    result = subprocess.run(
        [sys.executable, "-m", "lab2", "train", str(params), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {params}: data.source: {tmp_path / 'missing.jsonl'}: no such file or folder (relative to {os.getcwd()})"
    assert not (tmp_path / "out").exists()


def test_resume_point_restored_from_a_hub_repo(tmp_path, monkeypatch, capsys):
    """With no local checkpoint, the Hub repo's last-checkpoint/ becomes checkpoint-<step>/, if it is
    this run's; a repo that does not exist yet is the first run; another run's checkpoint is refused."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    from lab2.train import ForeignCheckpointError, restore_from_hub

    identity = {"experiment": "run", "config_hash": "a" * 16, "split_fingerprint": "f" * 16}
    on_hub = {"someone/run": identity, "someone/other": {**identity, "config_hash": "b" * 16}}

    def fake_snapshot_download(repo_id, allow_patterns, local_dir):
        assert allow_patterns == ["last-checkpoint/*"]
        if repo_id not in on_hub:
            raise RepositoryNotFoundError(f"404 {repo_id}", response=httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co")))
        folder = local_dir / "last-checkpoint"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 250}))
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
        (folder / "lab2_run.json").write_text(json.dumps(on_hub[repo_id]))
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert restore_from_hub("someone/new", tmp_path, identity) is None
    assert "no such Hub repo yet" in capsys.readouterr().out and not any(tmp_path.iterdir())
    with pytest.raises(ForeignCheckpointError, match="b{16}.*a{16}"):
        restore_from_hub("someone/other", tmp_path, identity)
    assert not any(tmp_path.iterdir())  # the foreign download is not left to be resumed later
    restored = restore_from_hub("someone/run", tmp_path, identity)
    assert restored == tmp_path / "checkpoint-250"
    assert latest_checkpoint(tmp_path) == restored and (restored / "adapter_model.safetensors").read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-250"]  # no staging left behind
