"""Executing one notebook with papermill, in a fresh kernel or in one shared by several notebooks.

Used by the sweep (train, evaluate), `make export`, `make report` and the tests. A shared kernel
pays kernel start and the torch/transformers/peft imports once; between notebooks its namespace is
wiped, so the next one inherits warm imports, never variables.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _kernel_environment() -> None:
    # The kernel must be this interpreter (the venv), whatever `python` is on PATH.
    bin_dir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


# Run between two stages in a shared kernel: the next notebook must not see the last one's
# variables, and its model must not load while the last one's still holds (GPU) memory.
# `%reset -f` also runs gc.collect(), so the CUDA cache is emptied after it.
RESET_BETWEEN_STAGES = """\
import sys
if "matplotlib.pyplot" in sys.modules:
    sys.modules["matplotlib.pyplot"].close("all")
%reset -f
import sys
if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
    sys.modules["torch"].cuda.empty_cache()
del sys
"""


@contextmanager
def experiment_kernel(shared: bool = True):
    """A kernel manager for all stages of one experiment, shut down on the way out.

    Yields None when `shared` is False: then papermill starts a fresh kernel per notebook.
    nbclient leaves a kernel it does not own running, and its clients' channels open; the
    manager below remembers its clients so that they are closed here, not leaked per stage.
    """
    if not shared:
        yield None
        return
    from jupyter_client import AsyncKernelManager
    from jupyter_core.utils import run_sync

    class ExperimentKernelManager(AsyncKernelManager):
        def client(self, **kwargs):
            kc = super().client(**kwargs)
            self.lab2_clients.append(kc)
            return kc

    km = ExperimentKernelManager(kernel_name="python3")
    km.lab2_clients = []
    try:
        yield km
    finally:
        for kc in km.lab2_clients:
            kc.stop_channels()
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
        run_sync(km.cleanup_resources)()


def reset_kernel_namespace(km) -> None:
    """Wipe a shared kernel's variables between stages (imports stay cached in sys.modules)."""
    import nbformat
    from nbclient import NotebookClient

    if km is None or not km.has_kernel:
        return
    NotebookClient(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(RESET_BETWEEN_STAGES)]), km=km).execute()


def portable_path(path: str | Path) -> str:
    """A path as the kernel reads it (its cwd is ours), relative: an executed notebook handed on to
    someone else then names no folder of this machine (no checkout path, no home folder)."""
    return os.path.relpath(Path(path).resolve(), os.getcwd())


def run_notebook(notebook: Path, output: Path, parameters: dict, show_cells: bool, km=None) -> None:
    """Execute one stage notebook with papermill; in `km`'s kernel when given, else a fresh one."""
    import papermill

    _kernel_environment()
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=os.getcwd(),  # relative paths in params mean the same in the kernel as here
            kernel_name="python3",
            progress_bar=show_cells,
            log_output=False,
            request_save_on_cell_execute=True,
            # The kernel listens on loopback only; its "TCP without encryption" warning is noise.
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            **({"km": km} if km is not None else {}),
        )
    finally:
        _record_source_portably(Path(notebook), Path(output))


def _record_source_portably(notebook: Path, output: Path) -> None:
    """papermill records the source notebook's absolute path: keep it relative to the repository."""
    import nbformat

    if not output.is_file():
        return
    executed = nbformat.read(output, as_version=4)
    source = notebook.resolve()
    meta = executed.metadata.get("papermill", {})
    meta["input_path"] = source.relative_to(REPO_ROOT).as_posix() if source.is_relative_to(REPO_ROOT) else source.name
    nbformat.write(executed, output)
