"""air-run: load a bundle and generate (also `python -m air.runtime`)."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from air.errors import AirError
from .options import explanation, generation_options, load_bundle, trust_options
from .startup import import_tvm
from .verified import hash_in_background

SUBCOMMANDS = {"chat": "air.runtime.chat_cli", "serve": "air.runtime.serve_cli"}


class _RunCommand(click.Command):
    """`air-run BUNDLE ...`, or `air-run chat|serve BUNDLE ...` (a bundle folder of such a name: ./chat)."""

    def main(self, args=None, prog_name=None, **extra):
        if args is None:  # this process is air-run: TVM's runtime only
            hash_in_background(sys.argv[1:])  # a first start's hashing overlaps the import
            import_tvm()
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] in SUBCOMMANDS:
            import importlib

            command = importlib.import_module(SUBCOMMANDS[args[0]]).main
            return command.main(args[1:], prog_name=f"{prog_name or 'air-run'} {args[0]}", **extra)
        return super().main(args, prog_name, **extra)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise AirError(f"--prompt-ids must be comma-separated integers, got '{text}'") from None


@click.command(cls=_RunCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path())
@click.option("--prompt", help="Prompt text.")
@click.option("--prompt-ids", help="Prompt as comma-separated token ids, e.g. 1,2,3.")
@generation_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (tokens, text, stats) instead of streaming text.")
@trust_options
def main(bundle, prompt, prompt_ids, max_tokens, temperature, top_p, seed, speculate, proposer, quality, explain,
         memory_budget, threads, as_json, trusted, rehash):
    """Generate text with a compiled BUNDLE.

    Also: `air-run chat BUNDLE` (multi-turn chat) and `air-run serve BUNDLE` (OpenAI-compatible HTTP)."""
    try:
        if (prompt is None) == (prompt_ids is None):
            raise AirError("give exactly one of --prompt or --prompt-ids")
        loaded = load_bundle(bundle, threads, memory_budget, trusted, rehash)
        ids = _parse_ids(prompt_ids) if prompt_ids is not None else None
        on_text = None if as_json else (lambda delta: (sys.stdout.write(delta), sys.stdout.flush()))
        result = loaded.generate(prompt=prompt, prompt_ids=ids, max_tokens=max_tokens, temperature=temperature,
                                 top_p=top_p, seed=seed, speculate=speculate, quality=quality,
                                 on_text=on_text, proposer=proposer)
    except AirError as e:
        click.echo(f"air-run: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("air-run: interrupted", err=True)
        sys.exit(130)
    if explain:
        click.echo(explanation(result, speculate), err=True)
    if as_json:
        route = dataclasses.asdict(result.route) if result.route else None
        print(json.dumps({"tokens": result.tokens, "text": result.text,
                          "finish_reason": result.finish_reason, "stats": result.stats, "route": route}))
    else:
        sys.stdout.write("\n")
        stats = result.stats
        who = stats.get("proposer")
        click.echo(
            f"[{stats['generated_tokens']} tokens, prefill {stats['prefill_tokens_per_second']} tok/s, "
            f"decode {stats['decode_tokens_per_second']} tok/s, first token {stats['time_to_first_token_seconds']:.3f}s, "
            f"finish: {result.finish_reason}"
            + (f", accepted {stats[who + '_accepted']}/{stats[who + '_proposed']} {who} tokens, "
               f"{stats['tokens_per_target_pass']} tokens per target pass" if stats["speculate"] else "") + "]",
            err=True,
        )


if __name__ == "__main__":
    main()
