"""A bundle on the device: verified, loaded, ready to generate.

    bundle = Bundle.load("dist/my-bundle")
    result = bundle.generate("def fibonacci(n):", max_tokens=64)
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import tvm

from air.cpu_features import machine_features, usable_cores
from air.errors import AirError

from .archive import is_archive, unpack
from .manifest import kv_spec, read_manifest, verify_files
from .generation import DraftProposer, LookupProposer
from .model import CompiledModel
from .signing import read_signature
from .trust import Trust
from .verified import VerificationCache
from .routing import PROPOSERS, Route, lookup, memory_class
from .text import load_tokenizer
from .threads import ThreadGovernor, configure_threads


@dataclasses.dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str  # "stop" (end-of-sequence token or stop text), "length" (max_tokens), "context" (cache full), "cancelled"
    stats: dict
    route: Route | None = None  # the routing-table row that chose the path, when routed


def check_machine(manifest: dict) -> None:
    """Refuse a bundle built for another architecture or for CPU features this machine lacks."""
    device = manifest["device"]
    machine = platform.machine()
    if device["arch"] != machine:
        raise AirError(f"bundle was built for {device['arch']} ({device['name']}); this machine is {machine}")
    flags = machine_features()
    if flags is None:
        return
    missing = [f for f in device["cpu_features"] if f not in flags]
    if missing:
        raise AirError(f"bundle was built for {device['name']} and needs CPU features this machine lacks: {', '.join(missing)}")


class Bundle:
    def __init__(self, root: Path, manifest: dict, threads: int, memory_budget_mb: float | None = None,
                 adaptive_threads: bool = False):
        self.root = root
        self.manifest = manifest
        if memory_budget_mb is None:
            memory_budget_mb = manifest.get("runtime", {}).get("memory_budget_mb", 0)
        self.memory_budget = int(memory_budget_mb * 2**20)  # 0: no budget
        self.device = tvm.cpu()
        self.threads = pool = configure_threads(threads)
        # adaptive: the recipe's default count, shed while another process holds a core (threads.py)
        self.governor = ThreadGovernor(pool) if adaptive_threads and pool > 1 else None
        self.tokenizer = load_tokenizer(root)
        self._models: dict[str, CompiledModel] = {}  # loaded on first use: a request may need only one
        self.eos_token_ids = set(manifest["tokenizer"].get("eos_token_ids", []))
        self.routing = json.loads((root / manifest["routing"]).read_text()) if "routing" in manifest else None
        self.verification = {"signature_checked": False, "signer": None}  # what load() checked

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None, verify: bool = True,
             memory_budget_mb: float | None = None, trust: Trust | None = None,
             rehash: bool = False, adaptive_threads: bool = True) -> "Bundle":
        """Signature (when trust is configured: `trust`, else the environment's) and every
        file's hash are checked here, before any library is loaded. `rehash`: hash every
        file even if the verification cache remembers it. threads None: the recipe's count,
        shed to one while that is faster (runtime/threads.py) unless adaptive_threads is False."""
        root = Path(path)
        trust = trust if trust is not None else Trust.configure()
        if is_archive(root):
            root = unpack(root, trust)
        manifest = read_manifest(root)
        checked = trust.check(manifest, read_signature(root), str(root))
        check_machine(manifest)
        if verify:
            cache = VerificationCache(root, manifest, force=rehash)
            verify_files(root, manifest, cache.sha256)
            cache.save()
            checked.update(files_hashed=cache.hashed, files_remembered=cache.cached)
        adaptive = threads is None and adaptive_threads
        if threads is None:
            threads = int(manifest.get("runtime", {}).get("threads", 0))
        bundle = cls(root, manifest, threads, memory_budget_mb, adaptive_threads=adaptive)
        bundle.verification = checked
        return bundle

    def _model(self, role: str) -> CompiledModel:
        if role not in self.manifest["models"]:
            raise AirError(f"{self.root}: bundle has no {role} model")
        if role not in self._models:
            self._models[role] = CompiledModel(self.root, self.manifest["models"][role], self.device, role)
        return self._models[role]

    @property
    def target(self) -> CompiledModel:
        return self._model("target")

    @property
    def draft(self) -> CompiledModel:
        return self._model("draft")

    @property
    def max_context(self) -> int:
        return kv_spec(self.manifest["models"]["target"], "target").position_limit

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise AirError("empty prompt: give at least one token")
        vocab = self.manifest["models"]["target"]["vocab_size"]
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise AirError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        if len(prompt_ids) >= self.max_context:
            raise AirError(
                f"prompt has {len(prompt_ids)} tokens; the bundle's context is {self.max_context} "
                "(the prompt and at least one generated token must fit)"
            )

    def memory_needed(self, context: int, roles: tuple[str, ...] = ("target",)) -> dict:
        """Bytes a request of `context` positions needs: weights plus KV of each model it runs."""
        needs = {}
        for role in roles:
            entry = self.manifest["models"][role]
            needs[role] = {"weights": entry["weight_bytes"], "kv": kv_spec(entry, role).bytes_for(context)}
        needs["total"] = sum(n["weights"] + n["kv"] for n in needs.values())
        return needs

    def _fits(self, context: int, roles: tuple[str, ...]) -> bool:
        return not self.memory_budget or self.memory_needed(context, roles)["total"] <= self.memory_budget

    def _refuse_memory(self, context: int, roles: tuple[str, ...]) -> None:
        needs = self.memory_needed(context, roles)
        parts = ", ".join(f"{role} weights {n['weights'] / 2**20:.1f} MiB + KV {n['kv'] / 2**20:.1f} MiB"
                          for role, n in needs.items() if role != "total")
        raise AirError(
            f"request needs {needs['total'] / 2**20:.1f} MiB ({parts} for {context} positions) but the memory "
            f"budget is {self.memory_budget / 2**20:.2f} MiB; lower --max-tokens or raise --memory-budget"
        )

    def route(self, prompt_tokens: int, max_tokens: int, quality: str) -> Route:
        """The routing-table row for this request and the device's memory budget."""
        has_draft = "draft" in self.manifest["models"]
        context = prompt_tokens + max_tokens + 1
        mem = memory_class(
            fits_both=has_draft and self._fits(context + 8, ("target", "draft")),
            fits_target=self._fits(context, ("target",)),
            fits_draft=has_draft and self._fits(context, ("draft",)),
        )
        if self.routing is None:
            kv = kv_spec(self.manifest["models"]["target"], "target").dtype
            path = "target" if mem in ("both", "target") else "refuse"
            return Route("no routing table", path, 0, kv, None, "the bundle has no routing table: target alone")
        return lookup(self.routing, quality, prompt_tokens, max_tokens, mem)

    def _plan(self, ids: list[int], max_tokens: int, quality: str, speculate: int | None, proposer: str = "draft"):
        """(model, proposer, k, route) for this request: forced by `speculate` (k tokens from
        `proposer` per target pass), else routed; proposer None: the model alone."""
        if proposer not in PROPOSERS:
            raise AirError(f"unknown proposer '{proposer}' (known: {', '.join(PROPOSERS)})")
        context = len(ids) + max_tokens + 1
        if speculate is not None:
            roles = ("target", "draft") if speculate > 0 and proposer == "draft" else ("target",)
            if not self._fits(context + speculate, roles):
                self._refuse_memory(context + speculate, roles)
            if speculate == 0:
                return self.target, None, 0, None
            return self.target, self._proposer(proposer), speculate, None
        route = self.route(len(ids), max_tokens, quality)
        if route.path == "refuse":
            self._refuse_memory(context, ("target",))
        if route.path == "draft":
            return self.draft, None, 0, route
        if route.path in ("speculative", "lookup"):
            return self.target, self._proposer("draft" if route.path == "speculative" else "lookup"), route.k, route
        return self.target, None, 0, route

    def _proposer(self, name: str) -> DraftProposer | LookupProposer:
        if name == "lookup":
            return LookupProposer()
        if "draft" not in self.manifest["models"]:
            raise AirError(f"{self.root}: bundle has no draft model to speculate with (--proposer lookup needs none)")
        return DraftProposer(self.draft)

    def generate(self, prompt: str | None = None, prompt_ids: list[int] | None = None, **request) -> GenerationResult:
        """Generate from a prompt text or token ids, on a fresh session's caches. `request`: the
        keyword options of Session.generate (max_tokens, temperature, top_p, seed, speculate,
        quality, on_text, stop, proposer, ...)."""
        if (prompt is None) == (prompt_ids is None):
            raise AirError("give exactly one of a prompt text or prompt token ids")
        ids = self.encode(prompt) if prompt is not None else list(prompt_ids)
        from .session import Session

        return Session(self).generate(ids, **request)
