"""Static routing: the table's schema and the per-request lookup (no model call, no search).

A row is keyed by the request class (quality tier, prompt-length bucket, generation-length
bucket) and the memory class (which paths fit the memory budget), and names the path that
serves it: "target" (target alone), "draft" (draft alone), "speculative" with k draft
tokens, "lookup" with k tokens looked up in the text so far (no draft model), or "refuse". air-build fills the table from measurements (compiler/routing.py);
air-run looks the row up.
"""

from __future__ import annotations

import dataclasses

from air.errors import AirError

TIERS = ("exact", "balanced", "fast")
# Upper bounds (inclusive) of the length buckets; the last bucket is open-ended.
PROMPT_BUCKETS = (64, 512)
GENERATION_BUCKETS = (32, 256)
# Which models fit the memory budget for this request.
MEMORY_CLASSES = ("both", "target", "draft", "none")
PATHS = ("target", "draft", "speculative", "lookup", "refuse")
PROPOSERS = ("draft", "lookup")  # what proposes a speculative round's tokens (paths speculative, lookup)
ROUTING_FILE = "routing.json"


def bucket(value: int, bounds: tuple[int, ...]) -> str:
    for bound in bounds:
        if value <= bound:
            return f"<={bound}"
    return f">{bounds[-1]}"


def bucket_names(bounds: tuple[int, ...]) -> list[str]:
    return [f"<={b}" for b in bounds] + [f">{bounds[-1]}"]


def row_key(tier: str, prompt_tokens: int, max_tokens: int, memory_class: str) -> str:
    return f"{tier}|prompt{bucket(prompt_tokens, PROMPT_BUCKETS)}|gen{bucket(max_tokens, GENERATION_BUCKETS)}|mem:{memory_class}"


@dataclasses.dataclass(frozen=True)
class Route:
    key: str
    path: str  # one of PATHS
    k: int
    kv: str
    expected_tokens_per_second: float | None
    reason: str


@dataclasses.dataclass(frozen=True)
class ModelCosts:
    prefill_per_token: float  # seconds
    decode: float  # seconds per step


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Per-call seconds of the compiled functions, as the table's measurements record them."""

    target: ModelCosts
    draft: ModelCosts | None  # None: a bundle without a draft
    target_verify: dict[int, float]  # k -> one verify pass over k + 1 tokens

    def of(self, role: str) -> ModelCosts:
        return self.target if role == "target" else self.draft

    def scaled(self, target: float, draft: float) -> "StepCosts":
        """Every target cost times `target`, every draft cost times `draft`."""
        return StepCosts(ModelCosts(self.target.prefill_per_token * target, self.target.decode * target),
                         self.draft and ModelCosts(self.draft.prefill_per_token * draft, self.draft.decode * draft),
                         {k: v * target for k, v in self.target_verify.items()})

    def to_dict(self) -> dict:
        flat = {}
        for role in ("target", "draft") if self.draft else ("target",):
            flat[f"{role}_prefill_per_token"] = self.of(role).prefill_per_token
            flat[f"{role}_decode"] = self.of(role).decode
        return {**flat, "target_verify": {str(k): v for k, v in sorted(self.target_verify.items())}}

    @staticmethod
    def from_dict(data: dict) -> "StepCosts":
        try:
            roles = ("target", "draft") if "draft_decode" in data else ("target",)
            models = {role: ModelCosts(float(data[f"{role}_prefill_per_token"]), float(data[f"{role}_decode"]))
                      for role in roles}
            verify = {int(k): float(v) for k, v in data["target_verify"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AirError(f"routing table: malformed step costs ({e!r})") from None
        return StepCosts(models["target"], models.get("draft"), verify)


def memory_class(fits_both: bool, fits_target: bool, fits_draft: bool) -> str:
    if fits_both:
        return "both"
    if fits_target:
        return "target"
    if fits_draft:
        return "draft"
    return "none"


def lookup(table: dict, tier: str, prompt_tokens: int, max_tokens: int, mem_class: str) -> Route:
    if tier not in TIERS:
        raise AirError(f"unknown quality tier '{tier}' (known: {', '.join(TIERS)})")
    key = row_key(tier, prompt_tokens, max_tokens, mem_class)
    row = table["rows"].get(key)
    if row is None:
        raise AirError(f"routing table has no row '{key}'")
    if row["path"] not in PATHS:
        raise AirError(f"routing table row '{key}' names an unknown path '{row['path']}' (known: {', '.join(PATHS)})")
    return Route(key=key, path=row["path"], k=row["k"], kv=row["kv"],
                 expected_tokens_per_second=row.get("expected_tokens_per_second"), reason=row["reason"])
