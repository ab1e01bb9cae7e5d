"""A CPU chat over an exported GGUF: llama-cpp-python behind Gradio, in the model's own template.

The prompt is rendered by the GGUF's embedded chat template (the one `make export` checked
against the HF tokenizer), never by hand-written "User:/Assistant:" strings, and generation
stops at its end-of-turn token (<|eot_id|>, <|im_end|>: the GGUF's eos). History is trimmed, oldest turns first, to fit n_ctx.

Beyond plain chat: a "Before / after" tab where the base model and the fine-tuned model
answer the same prompt side by side, so a visitor sees what fine-tuning changed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SYSTEM = "You are a helpful assistant."


class InputTooLong(ValueError):
    pass


def load_llm(model: str, filename: str | None = None, n_ctx: int = 2048, n_threads: int | None = None):
    """A local GGUF path, or a Hub repo id plus a file name in it; chatting in the GGUF's own template."""
    from lab2 import gguf_chat

    return gguf_chat.load(model, n_ctx, n_threads, repo_file=filename)


@dataclass
class ChatModel:
    llm: object
    label: str
    # A llama.cpp context is not thread-safe: one generation at a time, whatever Gradio's concurrency
    # (a reply abandoned by a closed browser tab keeps generating in its worker thread).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def prompt_tokens(self, messages: list[dict]) -> int:
        from lab2 import gguf_chat

        return len(self.llm.tokenize(gguf_chat.render_prompt(self.llm, messages).encode(), add_bos=False, special=True))

    def fit(self, messages: list[dict], max_new_tokens: int) -> list[dict]:
        """Drop the oldest turns until prompt + reply fit the context; the system prompt and
        the new message always stay, and if they alone do not fit, say so."""
        budget = self.llm.n_ctx() - max_new_tokens
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        while len(turns) > 1 and self.prompt_tokens(system + turns) > budget:
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
        used = self.prompt_tokens(system + turns)
        if used > budget:
            raise InputTooLong(
                f"Your message is too long: it needs {used} tokens, and with {max_new_tokens} for the reply the model's "
                f"context holds {self.llm.n_ctx()}. Shorten it, or lower 'max new tokens'."
            )
        return system + turns

    def stream(self, messages: list[dict], temperature: float = 0.7, max_new_tokens: int = 256, min_p: float = 0.05) -> Iterator[str]:
        """The reply, piece by piece as llama.cpp generates it."""
        from lab2 import gguf_chat

        with self.lock:
            for chunk in self.llm.create_chat_completion(
                messages=self.fit(messages, max_new_tokens), stream=True, temperature=temperature,
                max_tokens=max_new_tokens, min_p=min_p, stop=[gguf_chat.end_of_turn(self.llm)],
            ):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece


def to_messages(system_prompt: str, history: list[dict], message: str) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    for turn in history:  # Gradio's messages format; keep text turns only
        if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
            messages.append({"role": turn["role"], "content": turn["content"]})
    return messages + [{"role": "user", "content": message}]


def build_app(tuned: ChatModel, base: ChatModel | None = None, title: str = "lab2 chat", temperature: float = 0.7):
    """The Gradio app; `temperature` is the slider's starting value (0: greedy, the same reply every time)."""
    import gradio as gr

    def respond(message, history, system_prompt, temperature, max_new_tokens, min_p):
        reply = ""
        try:
            for piece in tuned.stream(to_messages(system_prompt, history, message), temperature, int(max_new_tokens), min_p):
                reply += piece
                yield reply
        except InputTooLong as exc:
            yield f"⚠️ {exc}"
            return
        if not reply:
            yield "(the model ended its turn without saying anything; try a higher temperature)"

    def compare(message, system_prompt, temperature, max_new_tokens, min_p):
        messages = to_messages(system_prompt, [], message)
        outputs = {"base": "", "tuned": ""}
        try:
            for key, model in (("base", base), ("tuned", tuned)):  # one after the other: both share the CPU
                for piece in model.stream(messages, temperature, int(max_new_tokens), min_p):
                    outputs[key] += piece
                    yield outputs["base"], outputs["tuned"]
        except InputTooLong as exc:
            yield f"⚠️ {exc}", f"⚠️ {exc}"

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nFine-tuned **{tuned.label}**, served on CPU with llama.cpp in its own chat template.")
        system = gr.Textbox(DEFAULT_SYSTEM, label="System prompt", render=False)
        temperature = gr.Slider(0.0, 1.5, temperature, step=0.05, label="Temperature", render=False)
        max_new = gr.Slider(16, 1024, 256, step=16, label="Max new tokens", render=False)
        min_p = gr.Slider(0.0, 0.5, 0.05, step=0.01, label="min_p", render=False)
        with gr.Tab("Chat"):
            gr.ChatInterface(
                respond, additional_inputs=[system, temperature, max_new, min_p], api_name="chat",
                examples=[["What is machine learning?"], ["Give me three tips for studying effectively."]],
                additional_inputs_accordion=gr.Accordion("Settings", open=False, render=False), fill_height=True,
            )
        with gr.Tab("Before / after"):
            if base is None:
                gr.Markdown("Set `LAB2_BASE_GGUF` to a GGUF of the base model to compare it with the fine-tuned one here.")
            else:
                gr.Markdown(f"The same prompt to the base model (**{base.label}**) and the fine-tuned one (**{tuned.label}**).")
                prompt = gr.Textbox(label="Prompt", placeholder="Ask both models the same thing")
                go = gr.Button("Ask both", variant="primary")
                with gr.Row():
                    base_out = gr.Textbox(label=f"Base: {base.label}", lines=10)
                    tuned_out = gr.Textbox(label=f"Fine-tuned: {tuned.label}", lines=10)
                go.click(compare, [prompt, system, temperature, max_new, min_p], [base_out, tuned_out], api_name="compare")
                prompt.submit(compare, [prompt, system, temperature, max_new, min_p], [base_out, tuned_out])
    return app


def from_environment(n_ctx: int | None = None):
    """The app from LAB2_GGUF (path) or LAB2_REPO + LAB2_FILE, and optionally LAB2_BASE_GGUF and LAB2_TEMPERATURE."""
    n_ctx = n_ctx or int(os.environ.get("LAB2_N_CTX", "2048"))
    repo, filename = os.environ.get("LAB2_REPO"), os.environ.get("LAB2_FILE")
    source = repo if repo and filename else os.environ.get("LAB2_GGUF", "")
    if not source:
        raise SystemExit("set LAB2_GGUF=path/to/model.gguf, or LAB2_REPO and LAB2_FILE (see `make app`)")
    tuned = ChatModel(load_llm(source, filename if repo else None, n_ctx), Path(filename or source).name)
    base_path = os.environ.get("LAB2_BASE_GGUF")
    base = ChatModel(load_llm(base_path, None, n_ctx), Path(base_path).name) if base_path else None
    return build_app(tuned, base, temperature=float(os.environ.get("LAB2_TEMPERATURE", "0.7")))
