"""A stand-in for the `unsloth` package on CPU, held to the real package's signatures.

unsloth needs an NVIDIA GPU at import, so its source is read, not imported: the installed
(--no-deps) unsloth 2026.10.9 is parsed with `ast`, and `FastLanguageModel.from_pretrained` and
`get_peft_model` (which `functools.wraps` FastLlamaModel's) become `inspect.Signature`s. Both end
in `**kwargs` that Unsloth forwards elsewhere; a stand-in that accepted any keyword could never
catch a misspelt one, so the checks here bind against the named parameters only.
"""

from __future__ import annotations

import ast
import importlib.machinery
import inspect
import textwrap
from pathlib import Path

PATCHED = ("transformers", "trl", "peft")


def unsloth_source_dir() -> Path:
    spec = importlib.machinery.PathFinder.find_spec("unsloth")  # on sys.path, never executed; stand-ins ignored
    assert spec is not None and spec.origin, "unsloth is not installed (make test installs it --no-deps)"
    return Path(spec.origin).parent


def _method(path: Path, class_name: str, method: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    return item
    raise LookupError(f"{class_name}.{method} not found in {path}")


def _signature(fn: ast.FunctionDef) -> inspect.Signature:
    """The named parameters of a parsed def (defaults are placeholders; **kwargs dropped)."""
    a = fn.args
    params = []
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        kind = inspect.Parameter.POSITIONAL_ONLY if arg in a.posonlyargs else inspect.Parameter.POSITIONAL_OR_KEYWORD
        default = None if i >= first_default else inspect.Parameter.empty
        params.append(inspect.Parameter(arg.arg, kind, default=default))
    if a.vararg:
        params.append(inspect.Parameter(a.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(inspect.Parameter(arg.arg, inspect.Parameter.KEYWORD_ONLY,
                                        default=None if default is not None else inspect.Parameter.empty))
    return inspect.Signature(params)


def real_signatures() -> dict[str, inspect.Signature]:
    root = unsloth_source_dir()
    return {
        "from_pretrained": _signature(_method(root / "models" / "loader.py", "FastLanguageModel", "from_pretrained")),
        # FastLanguageModel.get_peft_model is functools.wraps(FastLlamaModel.get_peft_model): that signature.
        "get_peft_model": _signature(_method(root / "models" / "llama.py", "FastLlamaModel", "get_peft_model")),
    }


def write_standin_package(folder: Path, record_file: Path) -> Path:
    """An importable `unsloth/` that records which of transformers/trl/peft were imported before it,
    swaps `trl.SFTTrainer` for a subclass as Unsloth does, and checks calls against the real signatures."""
    signatures = {name: str(sig) for name, sig in real_signatures().items()}
    package = folder / "unsloth"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(f'''
        import json, os, sys
        with open({str(record_file)!r}, "w") as f:
            json.dump({{name: name in sys.modules for name in {PATCHED!r}}}, f)
        if os.environ.get("LAB2_STANDIN_STOP"):  # the order is recorded: no need to run on
            raise ImportError("stand-in unsloth: import order recorded, stopping here")

        import trl

        class UnslothSFTTrainer(trl.SFTTrainer):
            pass

        trl.SFTTrainer = UnslothSFTTrainer  # what unsloth does at import

        def _check(signature, *args, **kwargs):
            import inspect
            namespace = {{}}
            exec("def real" + signature + ": pass", namespace)
            inspect.signature(namespace["real"]).bind(*args, **kwargs)  # TypeError on a wrong keyword

        class FastLanguageModel:
            @staticmethod
            def from_pretrained(**kwargs):
                _check({signatures["from_pretrained"]!r}, **kwargs)
                raise RuntimeError("stand-in unsloth: no GPU here")

            @staticmethod
            def get_peft_model(model, **kwargs):
                _check({signatures["get_peft_model"]!r}, model, **kwargs)
                raise RuntimeError("stand-in unsloth: no GPU here")
    '''))
    return folder
