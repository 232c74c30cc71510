"""air-run: load a bundle and generate (also `python -m air.runtime`)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from air.errors import AirError
from .routing import TIERS


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise AirError(f"--prompt-ids must be comma-separated integers, got '{text}'") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path())
@click.option("--prompt", help="Prompt text.")
@click.option("--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens to generate at most.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-p", type=click.FloatRange(min=0.0, max=1.0, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling (reproducible output).")
@click.option("--speculate", type=click.IntRange(min=0, max=16), default=None,
              help="Force the draft length per target pass (0: the target alone). Default: the routing table decides.")
@click.option("--quality", type=click.Choice(TIERS), default="balanced", show_default=True,
              help="Quality tier for routing: exact never serves draft-only output; fast may.")
@click.option("--explain", is_flag=True, help="Say which routing row served the request and why.")
@click.option("--memory-budget", type=click.FloatRange(min=0), default=None,
              help="MiB the request may use for weights and KV cache (default: the recipe's; 0 = no limit).")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="CPU threads (default: the bundle's recipe; 0 = all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (tokens, text, stats) instead of streaming text.")
@click.option("--trust", "trusted", multiple=True, type=click.Path(),
              help="Run only bundles signed by this public key (repeatable; also $AIR_TRUSTED_KEYS/*.pub).")
@click.option("--verify", "rehash", is_flag=True, help="Hash every bundle file, even those verified at an earlier start.")
def main(bundle, prompt, prompt_ids, max_tokens, temperature, top_p, seed, speculate, quality, explain,
         memory_budget, threads, as_json, trusted, rehash):
    """Generate text with a compiled BUNDLE."""
    try:
        if (prompt is None) == (prompt_ids is None):
            raise AirError("give exactly one of --prompt or --prompt-ids")
        from .bundle import Bundle
        from .trust import Trust

        loaded = Bundle.load(bundle, threads=threads, memory_budget_mb=memory_budget,
                             trust=Trust.configure(trusted), rehash=rehash)
        ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
        on_text = None if as_json else (lambda delta: (sys.stdout.write(delta), sys.stdout.flush()))
        result = loaded.generate(prompt=prompt, prompt_ids=ids, max_tokens=max_tokens, temperature=temperature,
                                 top_p=top_p, seed=seed, speculate=speculate, quality=quality,
                                 on_text=on_text)
    except AirError as e:
        click.echo(f"air-run: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("air-run: interrupted", err=True)
        sys.exit(130)
    if explain:
        click.echo(_explanation(result, speculate), err=True)
    if as_json:
        route = dataclasses.asdict(result.route) if result.route else None
        print(json.dumps({"tokens": result.tokens, "text": result.text,
                          "finish_reason": result.finish_reason, "stats": result.stats, "route": route}))
    else:
        sys.stdout.write("\n")
        stats = result.stats
        click.echo(
            f"[{stats['generated_tokens']} tokens, prefill {stats['prefill_tokens_per_second']} tok/s, "
            f"decode {stats['decode_tokens_per_second']} tok/s, first token {stats['time_to_first_token_seconds']:.3f}s, "
            f"finish: {result.finish_reason}"
            + (f", accepted {stats['draft_accepted']}/{stats['draft_proposed']} draft tokens, "
               f"{stats['tokens_per_target_pass']} tokens per target pass" if stats["speculate"] else "") + "]",
            err=True,
        )


def _explanation(result, speculate) -> str:
    measured = result.stats["decode_tokens_per_second"]
    if result.route is None:
        return f"route: forced by --speculate {speculate}; measured {measured} tokens/s"
    r = result.route
    path = f"speculative k={r.k}" if r.path == "speculative" else f"{r.path} alone"
    expected = f"{r.expected_tokens_per_second} tokens/s" if r.expected_tokens_per_second else "n/a"
    return (f"route: row '{r.key}' -> {path}, KV {r.kv}; expected {expected}, measured {measured} tokens/s\n"
            f"why: {r.reason}")


if __name__ == "__main__":
    main()
