"""A bundle on the device: verified, loaded, ready to generate.

    bundle = Bundle.load("dist/my-bundle")
    result = bundle.generate("def fibonacci(n):", max_tokens=64)
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import Callable

import tvm

from .errors import AirError
from .manifest import read_manifest, verify_files
from .model import CompiledModel
from .generation import Generator
from .sampling import Sampler
from .text import TextStream, load_tokenizer


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (end-of-sequence token), "length" (max_tokens) or "context" (cache full)
    stats: dict


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def check_machine(manifest: dict) -> None:
    """Refuse a bundle built for another architecture or for CPU features this machine lacks."""
    device = manifest["device"]
    machine = platform.machine()
    if device["arch"] != machine:
        raise AirError(f"bundle was built for {device['arch']} ({device['name']}); this machine is {machine}")
    flags = _cpu_flags()
    if flags is None:
        return
    missing = [f for f in device["cpu_features"] if f not in flags]
    if missing:
        raise AirError(f"bundle was built for {device['name']} and needs CPU features this machine lacks: {', '.join(missing)}")


def _configure_threads(threads: int) -> None:
    if threads > 0:
        tvm.get_global_func("runtime.config_threadpool")(0, threads)


class Bundle:
    def __init__(self, root: Path, manifest: dict, threads: int, memory_budget_mb: float | None = None):
        self.root = root
        self.manifest = manifest
        if memory_budget_mb is None:
            memory_budget_mb = manifest.get("runtime", {}).get("memory_budget_mb", 0)
        self.memory_budget = int(memory_budget_mb * 2**20)  # 0: no budget
        self.device = tvm.cpu()
        _configure_threads(threads)
        self.tokenizer = load_tokenizer(root)
        self.target = CompiledModel(root, manifest["models"]["target"], self.device)
        self._draft = None
        self.eos_token_ids = set(manifest["tokenizer"].get("eos_token_ids", []))

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, verify: bool = True,
             memory_budget_mb: float | None = None) -> "Bundle":
        root = Path(path)
        manifest = read_manifest(root)
        check_machine(manifest)
        if verify:
            verify_files(root, manifest)
        if threads is None:
            threads = int(manifest.get("runtime", {}).get("threads", 0))
        return cls(root, manifest, threads, memory_budget_mb)

    @property
    def draft(self) -> CompiledModel:
        if "draft" not in self.manifest["models"]:
            raise AirError(f"{self.root}: bundle has no draft model")
        if self._draft is None:
            self._draft = CompiledModel(self.root, self.manifest["models"]["draft"], self.device)
        return self._draft

    @property
    def max_context(self) -> int:
        return self.target.max_context

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise AirError("empty prompt: give at least one token")
        vocab = self.target.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise AirError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        if len(prompt_ids) >= self.max_context:
            raise AirError(
                f"prompt has {len(prompt_ids)} tokens; the bundle's context is {self.max_context} "
                "(the prompt and at least one generated token must fit)"
            )

    def memory_needed(self, context: int, with_draft: bool) -> dict:
        """Bytes a request of `context` positions needs: weights plus KV of each model it runs."""
        models = [("target", self.manifest["models"]["target"])]
        if with_draft:
            models.append(("draft", self.manifest["models"]["draft"]))
        needs = {}
        for role, entry in models:
            model = self.target if role == "target" else self.draft
            needs[role] = {"weights": entry["weight_bytes"], "kv": model.kv_bytes(context)}
        needs["total"] = sum(n["weights"] + n["kv"] for n in needs.values())
        return needs

    def _check_memory(self, context: int, draft) -> None:
        if not self.memory_budget:
            return
        needs = self.memory_needed(context, draft is not None)
        if needs["total"] > self.memory_budget:
            parts = ", ".join(f"{role} weights {n['weights'] / 2**20:.1f} MiB + KV {n['kv'] / 2**20:.1f} MiB"
                              for role, n in needs.items() if role != "total")
            raise AirError(
                f"request needs {needs['total'] / 2**20:.1f} MiB ({parts} for {context} positions) but the memory "
                f"budget is {self.memory_budget / 2**20:.2f} MiB; lower --max-tokens or raise --memory-budget"
            )

    def generate(
        self,
        prompt: str | None = None,
        prompt_ids: list[int] | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        speculate: int = 0,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Generate up to max_tokens; speculate=k > 0 lets the draft propose k tokens per target pass."""
        if (prompt is None) == (prompt_ids is None):
            raise AirError("give exactly one of a prompt text or prompt token ids")
        if speculate < 0:
            raise AirError(f"--speculate must be >= 0, got {speculate}")
        ids = self.encode(prompt) if prompt is not None else list(prompt_ids)
        self._check_prompt(ids)
        draft = self.draft if speculate > 0 else None
        self._check_memory(len(ids) + max_tokens + speculate + 1, draft)
        generator = Generator(self.target, draft, Sampler(temperature, top_p, seed), self.eos_token_ids)
        stream = TextStream(self.tokenizer)
        emit = (lambda token: on_text(stream.push(token))) if on_text is not None else (lambda token: None)
        tokens, finish, stats = generator.run(ids, max_tokens, speculate, emit)
        if on_text is not None:
            on_text(stream.flush())
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerationResult(tokens=tokens, text=text, finish_reason=finish, stats=stats)
