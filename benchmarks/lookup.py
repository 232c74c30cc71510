"""Draft-free speculation (n-gram lookup) for k = 2..8 against the target alone, on one bundle
(no draft needed), per prompt class: "transformation" prompts whose continuation repeats what
they hold (lookup hits) and "continuation" prompts (it rarely does).

    python benchmarks/lookup.py BUNDLE [--threads 2] [--tokens 96] [--rounds 3]

Greedy; prints per class and k tokens/s (median over rounds), the speedup over the target alone
measured in the same run, acceptance, tokens per target pass, and whether the tokens are
identical to the target alone's.
"""

import statistics

from bundle_args import bundle_parser, parse_and_load

TRANSFORMATION = [
    # a class whose methods are then repeated for a second class
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def __repr__(self):\n        return f\"Point({self.x}, {self.y})\"\n\n"
    "    def __eq__(self, other):\n        return self.x == other.x and self.y == other.y\n\n\n"
    "class Vector:\n    def __init__(self, x, y):\n        self.x = x\n",
    # a list of similar lines
    "OPTIONS = {\n    \"name\": config.get(\"name\"),\n    \"path\": config.get(\"path\"),\n"
    "    \"mode\": config.get(\"mode\"),\n    \"size\": config.get(\"size\"),\n    \"user\": config.get(\"",
    # a function given, then rewritten with a new name
    "def read_lines(path):\n    with open(path) as f:\n        return [line.rstrip() for line in f]\n\n\n"
    "def read_words(path):\n    with open(path) as f:\n",
]
CONTINUATION = [
    "def read_config(path):",
    "import os\nimport sys\n\n\nclass",
    "for index, item in enumerate(",
]


def measure(bundle, prompts, tokens, k):
    generated = seconds = passes = proposed = accepted = 0.0
    outputs = []
    for prompt in prompts:
        result = bundle.generate(prompt=prompt, max_tokens=tokens, speculate=k, proposer="lookup")
        stats = result.stats
        outputs.append(result.tokens)
        generated += stats["generated_tokens"]
        seconds += stats["decode_seconds"]
        passes += stats["target_passes"]
        proposed += stats.get("lookup_proposed", 0)
        accepted += stats.get("lookup_accepted", 0)
    return {"tps": generated / seconds, "per_pass": generated / passes,
            "acceptance": accepted / proposed if proposed else None, "outputs": outputs}


def main():
    parser = bundle_parser(__doc__, rounds=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--max-k", type=int, default=8)
    args, bundle = parse_and_load(parser)
    bundle.eos_token_ids = set()  # equal lengths for every k
    ks = [0, *range(2, args.max_k + 1)]
    classes = {"transformation": TRANSFORMATION, "continuation": CONTINUATION}
    measure(bundle, CONTINUATION[:1], 8, 2)  # warm up
    print(f"bundle {args.bundle}: {args.tokens} tokens per prompt, greedy, lookup proposals, {args.rounds} rounds (medians)")
    print(f"{'class':>15} {'k':>3} {'tokens/s':>9} {'speedup':>8} {'accept':>7} {'tok/pass':>9} {'identical':>9}")
    for name, prompts in classes.items():
        runs = {k: [] for k in ks}
        for _ in range(args.rounds):  # interleave k within a round so drift hits all alike
            for k in ks:
                runs[k].append(measure(bundle, prompts, args.tokens, k))
        base = statistics.median(r["tps"] for r in runs[0])
        for k in ks:
            tps = statistics.median(r["tps"] for r in runs[k])
            accept = runs[k][0]["acceptance"]
            same = all(r["outputs"] == runs[0][0]["outputs"] for r in runs[k])
            print(f"{name:>15} {k:>3} {tps:>9.1f} {tps / base:>7.2f}x {'-' if accept is None else f'{accept:.2f}':>7} "
                  f"{statistics.median(r['per_pass'] for r in runs[k]):>9.2f} {'yes' if same else 'NO':>9}")


if __name__ == "__main__":
    main()
