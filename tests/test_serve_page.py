"""The playground page at ``GET /`` in headless Chromium (Debian's ``chromium``), against a live server.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated
by NUL bytes on file descriptors 3 and 4), so no browser-automation package is needed. The test fills in a
document and a question, presses Ask, waits for the answer and the coloured prompt tokens, and takes a
screenshot (``MASKKV_PLAYGROUND_SCREENSHOT=PATH`` copies it there; docs/serving.md shows one).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)", allow_module_level=True)

import maskkv  # noqa: E402
from maskkv.cache import DLLMCache  # noqa: E402
from maskkv.presses import make_press  # noqa: E402
from maskkv.text import decode_answer, encode_prompt  # noqa: E402
from serve_server import MODEL, PROFILE, Server, documents  # noqa: E402

BUDGET = 16


class DevTools:
    """A headless Chromium and its DevTools protocol over a pipe."""

    def __init__(self, profile_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "--window-size=1400,1000",
             "--no-first-run", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = True, **params: object) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", session=False, url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]

    def js(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90.0) -> object:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is still loading (no body yet)
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"page never satisfied {expression}")

    def close(self) -> None:
        try:
            self.call("Browser.close", session=False)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def test_playground_answers_and_colours_kept_tokens(tmp_path):
    server = Server(tmp_path / "server")
    browser = DevTools(tmp_path / "chromium")
    try:
        content, = documents([360], seed=11)
        document, question = content.rsplit("\n\n", 1)
        browser.open(f"{server.url}/")
        assert browser.wait_for("document.body.dataset.state === 'ready'")
        browser.js(f"""
            document.getElementById('document').value = {json.dumps(document)};
            document.getElementById('question').value = {json.dumps(question)};
            document.getElementById('press').value = 'maskkv';
            document.getElementById('budget').value = '{BUDGET}';
            document.getElementById('ask').click(); true""")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
        answer = browser.js("document.getElementById('answer').textContent")
        assert state == "done", answer
        view = browser.js("""(() => { const spans = [...document.querySelectorAll('#document-view span.tok')];
            return {n: spans.length, kept: spans.filter(s => s.classList.contains('kept')).length,
                    text: spans.map(s => s.textContent).join(''), title: spans[spans.length - 2].title,
                    coloured: spans.filter(s => s.style.background && s.style.background !== 'transparent').length}; })()""")
        png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
        server.stop()

    model, tokenizer = maskkv.load_model(MODEL), maskkv.load_tokenizer(MODEL)
    ids = encode_prompt(tokenizer, content, chat=True)
    out = maskkv.generate(model, ids, gen_length=8, steps=8, block_length=8, cache=DLLMCache(),
                          press=make_press("maskkv", BUDGET, profile=str(PROFILE)))
    assert answer == decode_answer(tokenizer, out.sequences[0, ids.shape[1]:])
    assert view["n"] == ids.shape[1] and document[:200] in view["text"]
    assert 0 < view["kept"] < view["n"] and view["coloured"] == view["kept"]
    layers, heads = model.config.num_layers, model.config.num_kv_heads
    assert view["title"].count("\n") == layers - 1 and f"/{heads} heads" in view["title"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (tmp_path / "playground.png").write_bytes(png)
    if os.environ.get("MASKKV_PLAYGROUND_SCREENSHOT"):
        Path(os.environ["MASKKV_PLAYGROUND_SCREENSHOT"]).write_bytes(png)
