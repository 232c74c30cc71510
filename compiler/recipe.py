"""Device recipes: YAML files naming the device and the build settings for it."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import yaml

from air.errors import AirError
from air.runtime.contract import KV_DTYPES, WEIGHT_FORMATS

_KEYS = {"device", "quantization", "draft_quantization", "head_quantization", "kv_cache", "threads", "memory_budget_mb",
         "calibration_prompts",
         "transform_prompts", "description"}
_KV_KEYS = {"dtype", "max_context", "sinks", "window"}


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    device: str
    quantization: str
    draft_quantization: str | None  # None: the target's
    head_quantization: str | None  # the token table and LM head; None: head_format's default
    kv_cache: str
    max_context: int
    kv_sinks: int
    kv_window: int
    threads: int
    memory_budget_mb: int
    calibration_prompts: str | None
    transform_prompts: str | None  # transformations of given text, where lookup pays (None: the packaged ones)
    source: dict

    def weight_format(self, role: str) -> str:
        """The draft may be stored smaller than the target: its weights change only how many of
        its proposals are accepted, never the output, and its time is pure overhead."""
        return (self.draft_quantization or self.quantization) if role == "draft" else self.quantization

    def head_format(self, role: str) -> str:
        """The token table and LM head of a q4 target stay q8 by default: on SmolLM2's real
        weights a q4 head alone cost about a quarter more perplexity (benchmarks/quality.py), for
        a small share of the bytes a token reads. A q4 draft keeps its q4 head: its head is most
        of its cost per step, and its precision never changes the output."""
        if self.head_quantization:
            return self.head_quantization
        own = self.weight_format(role)
        return "q8" if own == "q4" and role == "target" else own

    def with_overrides(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def packaged_recipes() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("air.recipes").iterdir() if p.name.endswith(".yaml"))


def _read(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise AirError(f"recipe file {path} not found")
        text, name = path.read_text(), path.stem
    else:
        resource = resources.files("air.recipes") / f"{name_or_path}.yaml"
        if not resource.is_file():
            raise AirError(f"unknown recipe '{name_or_path}' (known: {', '.join(packaged_recipes())}; or give a .yaml path)")
        text, name = resource.read_text(), name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AirError(f"recipe {name}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AirError(f"recipe {name}: expected a mapping of settings")
    return name, data


def _choice(name: str, key: str, value, allowed) -> str:
    if value not in allowed:
        raise AirError(f"recipe {name}: {key} '{value}' is not one of {', '.join(allowed)}")
    return value


def _positive_int(name: str, key: str, value, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise AirError(f"recipe {name}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def load_recipe(name_or_path: str) -> Recipe:
    name, data = _read(name_or_path)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise AirError(f"recipe {name}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    if "device" not in data:
        raise AirError(f"recipe {name}: missing key 'device'")
    kv = data.get("kv_cache", {}) or {}
    if not isinstance(kv, dict):
        raise AirError(f"recipe {name}: kv_cache must be a mapping")
    unknown = sorted(set(kv) - _KV_KEYS)
    if unknown:
        raise AirError(f"recipe {name}: unknown key 'kv_cache.{unknown[0]}' (known: {', '.join(sorted(_KV_KEYS))})")
    return Recipe(
        name=name,
        device=str(data["device"]),
        quantization=_choice(name, "quantization", data.get("quantization", "f32"), WEIGHT_FORMATS),
        draft_quantization=(_choice(name, "draft_quantization", data["draft_quantization"], WEIGHT_FORMATS)
                            if data.get("draft_quantization") is not None else None),
        head_quantization=(_choice(name, "head_quantization", data["head_quantization"], WEIGHT_FORMATS)
                           if data.get("head_quantization") is not None else None),
        kv_cache=_choice(name, "kv_cache.dtype", kv.get("dtype", "f32"), KV_DTYPES),
        max_context=_positive_int(name, "kv_cache.max_context", kv.get("max_context", 2048), 16),
        kv_sinks=_positive_int(name, "kv_cache.sinks", kv.get("sinks", 0), 0),
        kv_window=_positive_int(name, "kv_cache.window", kv.get("window", 0), 0),
        threads=_positive_int(name, "threads", data.get("threads", 0), 0),
        memory_budget_mb=_positive_int(name, "memory_budget_mb", data.get("memory_budget_mb", 0), 0),
        calibration_prompts=data.get("calibration_prompts"),
        transform_prompts=data.get("transform_prompts"),
        source=data,
    )
