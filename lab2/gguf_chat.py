"""A GGUF served in its own embedded chat template, through llama-cpp-python's own formatter.

llama-cpp-python registers the GGUF's `tokenizer.chat_template` as the chat format
"chat_template.default", but left to itself it may swap in a built-in format whose text it
recognises (its hand-written "llama-3" or "chatml"). Loading with that format named keeps the
embedded template; the export checks and the app render prompts with the same `Jinja2ChatFormatter`
class and arguments that llama-cpp-python builds for it, so what is checked is what serves.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

EMBEDDED = "chat_template.default"  # llama-cpp-python's name for the GGUF's own template


def cpu_has_amx() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@contextlib.contextmanager
def weight_repacking(enabled: bool):
    """Load models with llama.cpp's weight repacking ("extra buffer types", llama-cli's --no-repack)
    on or off. llama-cpp-python's `Llama` has no argument for it, so its default model params are
    adjusted for the duration of the load."""
    import llama_cpp.llama_cpp as native

    default = native.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = enabled
        return p

    native.llama_model_default_params = params
    try:
        yield
    finally:
        native.llama_model_default_params = default


def load(model: str | Path, n_ctx: int = 2048, n_threads: int | None = None, repo_file: str | None = None, **kwargs):
    """A llama.cpp model that chats in the GGUF's embedded template: a local path, or a Hub repo id
    with `repo_file` (downloaded into the HF cache; HF_TOKEN from the environment)."""
    from llama_cpp import Llama

    options = dict(n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), chat_format=EMBEDDED, verbose=False, **kwargs)
    if not repo_file and not Path(model).is_file():
        raise FileNotFoundError(f"{model}: no such GGUF file (run `make export` first, or set LAB2_GGUF)")
    # On CPUs with AMX, llama.cpp repacks quantized weights for AMX tiles; with llama-cpp-python 0.3.36
    # that path segfaults at the first decode (seen on the Xeon machines lab2's CI runs on, for Q8_0 and
    # Q4_1 GGUFs alike), while the same files run with repacking off.
    with weight_repacking(not cpu_has_amx()):
        if repo_file:
            llm = Llama.from_pretrained(repo_id=str(model), filename=repo_file, **options)
        else:
            llm = Llama(model_path=str(model), **options)
    if not uses_embedded_template(llm):
        raise ValueError(f"{model}: the GGUF has no embedded chat template (tokenizer.chat_template)")
    return llm


def uses_embedded_template(llm) -> bool:
    """True when chat completions go through the GGUF's own template, not a built-in format."""
    return llm.chat_handler is None and llm.chat_format == EMBEDDED and "tokenizer.chat_template" in llm.metadata


def formatter(llm, add_generation_prompt: bool = True):
    """The formatter llama-cpp-python builds for the embedded template (same class, same arguments)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() != -1 else ""
    return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=end_of_turn(llm) if llm.token_eos() != -1 else "",
                               bos_token=bos, add_generation_prompt=add_generation_prompt,
                               stop_token_ids=[llm.token_eos()])


def end_of_turn(llm) -> str:
    """The GGUF's eos token as text: the export writes the template's end-of-turn token there
    (<|eot_id|>, <|im_end|>), and replies stop at it."""
    return llm._model.token_get_text(llm.token_eos())


def render_prompt(llm, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return formatter(llm, add_generation_prompt)(messages=messages).prompt
