"""The options air-run, air-run chat and air-run serve share (generation, trust), and --explain's text."""

from __future__ import annotations

import click

from .routing import PROPOSERS, TIERS

_OPTIONS = [
    click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens to generate at most."),
    click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 is greedy."),
    click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True),
    click.option("--seed", type=int, default=None, help="Seed for sampling (reproducible output)."),
    click.option("--speculate", type=click.IntRange(min=0, max=16), default=None,
                 help="Force the tokens proposed per target pass (0: the target alone). Default: the routing table decides."),
    click.option("--proposer", type=click.Choice(PROPOSERS), default="draft", show_default=True,
                 help="What proposes the --speculate tokens: the draft model, or a lookup of the text so far "
                      "(the prompt and the output; no draft model needed)."),
    click.option("--quality", type=click.Choice(TIERS), default="balanced", show_default=True,
                 help="Quality tier for routing: exact never serves draft-only output; fast may."),
    click.option("--explain", is_flag=True, help="Say which routing row served the request and why."),
    click.option("--memory-budget", type=click.FloatRange(min=0), default=None,
                 help="MiB the request may use for weights and KV cache (default: the recipe's; 0 = no limit)."),
    click.option("--threads", type=click.IntRange(min=0), default=None,
                 help="CPU threads (default: the bundle's recipe's, shed to one while another process holds a core; "
                      "0 = all cores)."),
]


def _with(options, command):
    for option in reversed(options):  # in the order --help lists them
        command = option(command)
    return command


def generation_options(command):
    """Add the shared generation options to a click command."""
    return _with(_OPTIONS, command)


_TRUST_OPTIONS = [
    click.option("--trust", "trusted", multiple=True, type=click.Path(),
                 help="Run only bundles signed by this public key (repeatable; also $AIR_TRUSTED_KEYS/*.pub)."),
    click.option("--verify", "rehash", is_flag=True,
                 help="Hash every bundle file, even those verified at an earlier start."),
]


def trust_options(command):
    """Add --trust and --verify (passed as `trusted` and `rehash`) to a click command."""
    return _with(_TRUST_OPTIONS, command)


def load_bundle(path: str, threads, memory_budget, trusted: tuple[str, ...], rehash: bool):
    """Bundle.load with the trust the options and the environment configure."""
    from .bundle import Bundle
    from .trust import Trust

    return Bundle.load(path, threads=threads, memory_budget_mb=memory_budget, trust=Trust.configure(trusted),
                       rehash=rehash)


def explanation(result, speculate) -> str:
    measured = result.stats["decode_tokens_per_second"]
    if result.route is None:
        by = f" --proposer {result.stats['proposer']}" if result.stats.get("proposer") else ""
        return f"route: forced by --speculate {speculate}{by}; measured {measured} tokens/s"
    r = result.route
    path = f"{r.path} k={r.k}" if r.path in ("speculative", "lookup") else f"{r.path} alone"
    expected = f"{r.expected_tokens_per_second} tokens/s" if r.expected_tokens_per_second else "n/a"
    return (f"route: row '{r.key}' -> {path}, KV {r.kv}; expected {expected}, measured {measured} tokens/s\n"
            f"why: {r.reason}")
