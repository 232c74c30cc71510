"""Target-only versus speculative decoding for k = 1..8, on one bundle.

    python benchmarks/speculative.py BUNDLE [--threads 2] [--tokens 64] [--rounds 3] [--prompts FILE]

Greedy. For each k (and "route": what the bundle's routing table picks per request) prints tokens/s (median over rounds, each round covering every prompt),
the speedup over target-only measured in the same run, acceptance, tokens per target pass,
and host (Python) time per speculative step as a share of the step.
"""

import statistics
from pathlib import Path

from bundle_args import bundle_parser, parse_and_load

DEFAULT_PROMPTS = [
    "def read_config(path):",
    "import os\nimport sys\n\n\nclass",
    "    def __init__(self, name, value=None):\n        self.",
    "for index, item in enumerate(",
]


def measure(bundle, prompts, tokens, k):
    generated = seconds = passes = proposed = accepted = host = 0.0
    for prompt in prompts:
        stats = bundle.generate(prompt=prompt, max_tokens=tokens, speculate=None if k == "route" else k).stats
        generated += stats["generated_tokens"]
        seconds += stats["decode_seconds"]
        passes += stats["target_passes"]
        host += stats["host_seconds"]
        proposed += stats.get("draft_proposed", 0)
        accepted += stats.get("draft_accepted", 0)
    return {"tps": generated / seconds, "per_pass": generated / passes, "host_share": host / seconds,
            "acceptance": accepted / proposed if proposed else None}


def main():
    parser = bundle_parser(__doc__, rounds=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--max-k", type=int, default=8)
    parser.add_argument("--prompts", type=Path, help="file with one prompt per paragraph (blank-line separated)")
    args, bundle = parse_and_load(parser)
    prompts = args.prompts.read_text().split("\n\n") if args.prompts else DEFAULT_PROMPTS
    bundle.eos_token_ids = set()  # equal lengths for every path
    ks = [0, *range(1, args.max_k + 1)] + (["route"] if bundle.routing else [])
    runs = {k: [] for k in ks}
    measure(bundle, prompts[:1], 8, 1)  # warm up both models
    for _ in range(args.rounds):  # interleave k within a round so drift hits all alike
        for k in ks:
            runs[k].append(measure(bundle, prompts, args.tokens, k))
    base = statistics.median(r["tps"] for r in runs[0])
    print(f"bundle {args.bundle}: {len(prompts)} prompts x {args.tokens} tokens, greedy, {args.rounds} rounds (medians)")
    print(f"{'k':>5} {'tokens/s':>9} {'speedup':>8} {'accept':>7} {'tok/pass':>9} {'host':>6}")
    for k in ks:
        tps = statistics.median(r["tps"] for r in runs[k])
        accept = runs[k][0]["acceptance"]
        print(f"{k:>5} {tps:>9.1f} {tps / base:>7.2f}x {'-' if accept is None else f'{accept:.2f}':>7} "
              f"{statistics.median(r['per_pass'] for r in runs[k]):>9.2f} "
              f"{statistics.median(r['host_share'] for r in runs[k]) * 100:>5.1f}%")


if __name__ == "__main__":
    main()
