"""The chat app: history trimming, a real browser session, and 20 concurrent chats."""

import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab2.app import ChatModel, InputTooLong, build_app, load_llm, to_messages
from lab2.export import choose_experiment
from tools.screenshot import CHROMIUM, CHROMIUM_ARGS  # one definition, shared with `make screenshot`


@pytest.fixture(scope="module")
def exported_gguf(swept) -> dict[str, Path]:
    """The GGUFs `make export` wrote in the swept checkout, by format; q4_k_m is what `make app` serves
    (`app.py --out`: the file the best run's export record names)."""
    from lab2.export import served_gguf

    out = swept / "outputs"
    name = choose_experiment(out)
    files = {fmt: out / name / "gguf" / f"{name}.{fmt}.gguf" for fmt in ("f16", "q4_k_m")}
    assert served_gguf(out) == files["q4_k_m"]
    return files


@pytest.fixture(scope="module")
def tuned(exported_gguf):
    return ChatModel(load_llm(str(exported_gguf["q4_k_m"]), n_ctx=512), exported_gguf["q4_k_m"].name)  # what `make app` serves


@pytest.fixture(scope="module")
def served(tuned, exported_gguf):
    """The app on 127.0.0.1: the exported Q4_K_M, and its f16 standing in for the base model."""
    base = ChatModel(load_llm(str(exported_gguf["f16"]), n_ctx=512), "f16 as base")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(tuned, base, title="lab2 chat (test)")
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    app.close()


def test_history_is_trimmed_oldest_first_and_overlong_input_is_refused(tuned):
    history = []
    for i in range(40):  # far more than 512 tokens of context
        history += [{"role": "user", "content": f"question {i} " * 8}, {"role": "assistant", "content": f"answer {i} " * 8}]
    messages = to_messages("Be brief.", history, "the newest question")
    fitted = tuned.fit(messages, max_new_tokens=64)
    assert fitted[0] == {"role": "system", "content": "Be brief."}
    assert fitted[-1] == {"role": "user", "content": "the newest question"}
    assert 3 <= len(fitted) < len(messages) and fitted[1]["role"] == "user"  # whole turns dropped, oldest first
    assert tuned.prompt_tokens(fitted) + 64 <= 512
    assert "answer 39" in fitted[-2]["content"]  # the most recent turn kept
    with pytest.raises(InputTooLong, match="Your message is too long: it needs \\d+ tokens"):
        tuned.fit(to_messages("", [], "word " * 600), max_new_tokens=64)


def test_one_generation_at_a_time_per_model(tuned):
    import threading

    first = tuned.stream([{"role": "user", "content": "Hi"}], max_new_tokens=8)
    next(first)  # a reply under way holds the model ...
    second = threading.Thread(target=lambda: list(tuned.stream([{"role": "user", "content": "Yo"}], max_new_tokens=4)))
    second.start()
    second.join(timeout=2)
    assert second.is_alive()  # ... so a second one waits instead of sharing the llama.cpp context
    list(first)
    second.join(timeout=60)
    assert not second.is_alive()


def test_prompt_is_the_ggufs_own_chat_template(tuned):
    from lab2 import gguf_chat

    assert gguf_chat.uses_embedded_template(tuned.llm)  # not a built-in format llama-cpp-python guessed
    text = gguf_chat.render_prompt(tuned.llm, [{"role": "user", "content": "Hi"}])
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert text.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "User:" not in text


def chat_in_chromium(url: str, message: str, screenshot, timeout: float = 60) -> list[str]:
    """Type a message into the app in Debian's Chromium; the bot reply's text at each poll while it streams."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(url, wait_until="domcontentloaded")  # Gradio keeps connections open: never "networkidle"
        box = page.get_by_role("textbox").first
        box.wait_for(timeout=60_000)
        box.fill(message)
        box.press("Enter")
        bot = page.locator(".message.bot, [data-testid='bot']").last
        bot.wait_for(timeout=60_000)
        seen = []
        deadline = time.time() + timeout
        while time.time() < deadline:  # watch the reply grow as tokens stream in
            seen.append(bot.inner_text())
            if len(seen) > 20 and len(set(seen[-20:])) == 1 and seen[-1]:
                break  # unchanged for a second: the reply is complete
            time.sleep(0.05)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return seen


def test_browser_types_a_message_and_sees_the_streamed_reply(served, tmp_path):
    lengths = [len(text) for text in chat_in_chromium(served, "What is the capital of Sweden?", tmp_path / "chat.png")]
    assert lengths[-1] > 0, "no reply appeared"
    # Gradio may show a pending indicator first: the reply is the last run of non-decreasing lengths.
    shown = [n for n in lengths if n > 0]
    drops = [i for i in range(1, len(shown)) if shown[i] < shown[i - 1]]
    reply = shown[drops[-1]:] if drops else shown
    assert len(set(reply)) > 1, f"the reply did not grow in pieces: {shown}"
    assert (tmp_path / "chat.png").stat().st_size > 10_000
    print(f"reply lengths seen while streaming: {sorted(set(lengths))[:12]}; screenshot {tmp_path / 'chat.png'}")


def test_twenty_concurrent_chats_are_each_answered_as_if_alone(served):
    from gradio_client import Client

    client = Client(served, verbose=False)
    job = client.submit("Hello!", "Be brief.", 0.7, 48, 0.05, api_name="/chat")
    partials = [str(x) for x in job]  # a streamed reply arrives in pieces, each extending the last
    assert len(set(partials)) > 1 and job.outputs()[-1]
    assert all(later.startswith(earlier) for earlier, later in zip(partials, partials[1:])), partials

    def ask(i):
        start = time.perf_counter()
        # Greedy (temperature 0), and each chat its own length (16 + i new tokens): a chat's reply is one
        # string, asked alone or among 19 others; another chat's tokens or settings in it would show.
        reply = Client(served, verbose=False).predict(f"Question {i}: what is {i} plus {i}?", "Be brief.", 0.0, 16 + i, 0.05, api_name="/chat")
        return time.perf_counter() - start, reply

    alone = [ask(i)[1] for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(ask, range(20)))
    latencies = sorted(t for t, _ in results)
    assert len(results) == 20 and all(reply for _, reply in results)  # every chat answered
    assert [reply for _, reply in results] == alone  # each its own prompt's reply: no chat got another's tokens
    assert len(set(alone)) > 1 and len(latencies) == 20 and latencies[0] > 0
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * len(latencies)) - 1]
    print(f"20 concurrent chats: p50 {p50:.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s")
