"""The sweep's kernels: one per experiment, shared by its stages without their variables (or one per stage
on request), and none left behind when Ctrl-C stops a sweep."""

import signal
import subprocess
import sys
import time

import nbformat
import psutil

from lab2 import notebook_runner


def _pid_notebooks(tmp_path):
    first, second = tmp_path / "first.ipynb", tmp_path / "second.ipynb"
    # The second counts the tensors still alive of the first one's layer size: its weights, if not freed.
    for path, code in ((first, "import os, torch\nleft_over = torch.nn.Linear(512, 512)\nprint(os.getpid())"),
                       (second, "import gc, os, torch\nprint(os.getpid(), 'left_over' in globals(), "
                                "sum(isinstance(o, torch.Tensor) and o.numel() == 512 * 512 for o in gc.get_objects()))")):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), path)
    return first, second


def _printed(executed) -> list[str]:
    return nbformat.read(executed, as_version=4).cells[-1].outputs[0]["text"].split()


def test_stages_share_a_kernel_but_not_its_variables(tmp_path):
    first, second = _pid_notebooks(tmp_path)
    with notebook_runner.experiment_kernel() as km:
        notebook_runner.run_notebook(first, tmp_path / "first.out.ipynb", {}, show_cells=False, km=km)
        notebook_runner.reset_kernel_namespace(km)
        notebook_runner.run_notebook(second, tmp_path / "second.out.ipynb", {}, show_cells=False, km=km)
        clients = list(km.lab2_clients)
    [pid] = _printed(tmp_path / "first.out.ipynb")
    assert _printed(tmp_path / "second.out.ipynb") == [pid, "False", "0"]  # same process; variable and weights gone
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE  # shut down
    assert len(clients) == 3 and not any(kc.channels_running for kc in clients)  # no channels left open


def test_a_fresh_kernel_per_stage_on_request(tmp_path):
    first, second = _pid_notebooks(tmp_path)
    with notebook_runner.experiment_kernel(shared=False) as km:
        notebook_runner.run_notebook(first, tmp_path / "first.out.ipynb", {}, show_cells=False, km=km)
        notebook_runner.run_notebook(second, tmp_path / "second.out.ipynb", {}, show_cells=False, km=km)
    [pid] = _printed(tmp_path / "first.out.ipynb")
    assert _printed(tmp_path / "second.out.ipynb")[0] != pid


def test_ctrl_c_stops_the_sweep_in_one_line_and_leaves_no_kernel(params_tree, tmp_path):
    sweep_dir = params_tree("sweep/baseline.yaml", {}).parent
    proc = subprocess.Popen(  # SIGINT as a terminal's Ctrl-C sends it (a background job would ignore it)
        [sys.executable, "-m", "lab2", "sweep", str(sweep_dir), "--out", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    executed, deadline, kernels = tmp_path / "out" / "baseline" / "train.ipynb", time.time() + 120, []
    while time.time() < deadline and not (kernels and executed.is_file()):  # interrupted inside the notebook
        kernels = kernels or [c for c in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in " ".join(c.cmdline())]
        time.sleep(0.2)
    assert kernels and executed.is_file(), "no kernel started the notebook"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: finished runs and saved checkpoints are kept")
    gone, alive = psutil.wait_procs(kernels, timeout=10)
    assert not alive
