"""OpenAI-style request bodies for air-run serve: parsed and checked field by field, each
problem a BadRequest naming the field (the server answers it with a 400 and an error body)."""

from __future__ import annotations

import dataclasses
import json

from .routing import PROPOSERS, TIERS

ROLES = ("system", "developer", "user", "assistant", "tool")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.code = code
        self.status = status


@dataclasses.dataclass
class Request:
    model: str
    messages: list[dict] | None  # chat completions
    prompt: str | list[int] | None  # completions: text or token ids
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    quality: str | None  # extension: the routing tier
    speculate: int | None  # extension: a forced draft length
    proposer: str | None  # extension: what proposes the speculate tokens (PROPOSERS)
    ignore_eos: bool  # extension (as vLLM names it): generate past end-of-sequence tokens


def _field(body: dict, name: str, kinds: tuple, default=None, check=None, need: str = ""):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds) or (check and not check(value)):
        raise BadRequest(f"'{name}' should be {need}, got {json.dumps(value)[:80]}", name)
    return value


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' should be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadRequest(f"{where} should be an object with a role of {', '.join(ROLES)}", where)
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text ones are understood
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise BadRequest(f"{where}.content parts should be {{type: text, text}} objects", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if content is None and message["role"] == "assistant":
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content should be a string", f"{where}.content")
        out.append({"role": message["role"], "content": content})
    return out


def _prompt(value) -> str | list[int]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    raise BadRequest("'prompt' should be a string or a list of token ids (one prompt per request)", "prompt")


def parse_request(raw: bytes, chat: bool) -> Request:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise BadRequest("the body should be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' should be a string naming the served model", "model")
    n = _field(body, "n", (int,), 1, need="an integer")
    if n != 1:
        raise BadRequest(f"'n' is {n}: this server generates one choice per request (n = 1)", "n")
    if chat:
        messages, prompt = _messages(body.get("messages")), None
    else:
        messages, prompt = None, _prompt(body.get("prompt"))
    max_tokens = _field(body, "max_completion_tokens", (int,), need="an integer >= 1", check=lambda v: v >= 1)
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", (int,), need="an integer >= 1", check=lambda v: v >= 1)
    stop = _field(body, "stop", (str, list), (), need="a string or a list of at most 4 strings",
                  check=lambda v: isinstance(v, str) or (len(v) <= 4 and all(isinstance(s, str) for s in v)))
    options = _field(body, "stream_options", (dict,), {}, need="an object")
    return Request(
        model=model,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=_field(body, "temperature", (int, float), need="a number from 0 to 2", check=lambda v: 0 <= v <= 2),
        top_p=_field(body, "top_p", (int, float), need="a number in (0, 1]", check=lambda v: 0 < v <= 1),
        seed=_field(body, "seed", (int,), need="an integer"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        stream=_field(body, "stream", (bool,), False, need="true or false"),
        include_usage=_field(options, "include_usage", (bool,), False, need="true or false"),
        quality=_field(body, "air_quality", (str,), need=f"one of {', '.join(TIERS)}", check=lambda v: v in TIERS),
        speculate=_field(body, "air_speculate", (int,), need="an integer from 0 to 16", check=lambda v: 0 <= v <= 16),
        proposer=_field(body, "air_proposer", (str,), need=f"one of {', '.join(PROPOSERS)}", check=lambda v: v in PROPOSERS),
        ignore_eos=_field(body, "ignore_eos", (bool,), False, need="true or false"),
    )
