"""Chat templates: the bundle's Jinja template, rendered in jinja2's sandbox in a child process.

The template comes from the checkpoint (tokenizer_config.json, chat_template.jinja or GGUF
metadata) and is stored in the bundle as BUNDLE_FILE, named in the manifest's tokenizer entry.
A template that reaches outside the sandbox, runs longer than RENDER_SECONDS or needs more than
the worker's memory limit is refused; nothing it asks for runs in this process.

A bundle without a template chats with FALLBACK_TEMPLATE: "System: ...", "User: ...",
"Assistant: ..." blocks separated by blank lines, ending with "Assistant:" for the answer
(FALLBACK_STOP ends an answer that starts the next user turn).
"""

from __future__ import annotations

import importlib.util
import json
import select
import subprocess
import sys
import threading
from pathlib import Path

from air.errors import AirError

BUNDLE_FILE = "chat_template.jinja"
RENDER_SECONDS = 5.0
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
FALLBACK_STOP = ("\nUser:",)
_WORKER = Path(__file__).with_name("template_worker.py")


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def write_chat_template(root: Path, source: str | None, tokenizer_config: dict) -> dict:
    """Store a checkpoint's template in a bundle folder; the manifest's tokenizer entry fields."""
    entry = {name: text for name in ("bos_token", "eos_token")
             if (text := _token_text(tokenizer_config.get(name))) is not None}
    if source is not None:
        (root / BUNDLE_FILE).write_text(source)
        entry["chat_template"] = BUNDLE_FILE
    return entry


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", fallback: bool = False):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.fallback = fallback
        self._renderer = _Renderer()

    @classmethod
    def from_bundle(cls, root: Path, manifest: dict) -> "ChatTemplate":
        entry = manifest["tokenizer"]
        tokens = {"bos_token": entry.get("bos_token") or "", "eos_token": entry.get("eos_token") or ""}
        if "chat_template" not in entry:
            return cls(FALLBACK_TEMPLATE, fallback=True, **tokens)
        return cls((root / entry["chat_template"]).read_text(), **tokens)

    @property
    def stop(self) -> tuple[str, ...]:
        """Text that ends an answer besides the end-of-sequence token."""
        return FALLBACK_STOP if self.fallback else ()

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        context = {"messages": messages, "add_generation_prompt": add_generation_prompt,
                   "bos_token": self.bos_token, "eos_token": self.eos_token}
        reply = self._renderer.ask({"template": self.source, "context": context})
        if "error" in reply:
            what = "chat template refused" if reply["refused"] else "chat template failed"
            raise AirError(f"{what}: {reply['error']}")
        return reply["text"]

    def close(self) -> None:
        self._renderer.close()


class _Renderer:
    """One worker process (started on first use), asked one line at a time; killed and
    restarted when a render overruns or the worker dies."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def ask(self, request: dict) -> dict:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                if importlib.util.find_spec("jinja2") is None:
                    raise AirError("chat templates need jinja2: pip install 'air-runtime[chat]'")
                self._process = subprocess.Popen([sys.executable, "-I", str(_WORKER)], stdin=subprocess.PIPE,
                                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            process = self._process
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                ready, _, _ = select.select([process.stdout], [], [], RENDER_SECONDS)
                line = process.stdout.readline() if ready else ""
            except (BrokenPipeError, OSError):
                line = ""
            if line:
                return json.loads(line)
            overran = process.poll() is None
            self._stop()
            if overran:
                return {"error": f"rendering ran longer than {RENDER_SECONDS:.0f} s", "refused": True}
            return {"error": "the renderer process died (memory or a crash)", "refused": True}

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            for pipe in (self._process.stdin, self._process.stdout):
                pipe.close()
            self._process = None

    def close(self) -> None:
        with self._lock:
            self._stop()
