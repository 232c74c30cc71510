"""Prefill and decode speed of a bundle's target model, medians of several rounds.

    python benchmarks/speed.py BUNDLE [--threads 2] [--rounds 5] [--prompt 128] [--decode 32]

Prints prefill tokens/s for a prompt of --prompt tokens, decode tokens/s (and ms/token)
over --decode steps, verify(5)/decode time ratio, and the weight bytes read per decoded
token with the bandwidth that implies.
"""

import statistics
import time

import numpy as np

from bundle_args import bundle_parser, parse_and_load


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = bundle_parser(__doc__, rounds=5)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--decode", type=int, default=32)
    args, bundle = parse_and_load(parser)
    model = bundle.target
    rng = np.random.default_rng(0)
    prompt = rng.integers(2, model.vocab_size, size=args.prompt).astype(np.int32)

    def prefill():
        model.reset()
        model.prefill(prompt)

    def decode():
        model.rollback(args.prompt)
        for token in rng.integers(2, model.vocab_size, size=args.decode):
            model.decode(int(token))

    def verify5():
        model.rollback(args.prompt)
        model.verify(prompt[:5])

    def decode1():
        model.rollback(args.prompt)
        model.decode(int(prompt[0]))

    prefill()  # warm up
    decode()
    prefill_s, decode_s, verify_s, step_s = [], [], [], []
    for _ in range(args.rounds):
        prefill_s.append(timed(prefill))
        decode_s.append(timed(decode) / args.decode)
        verify_s.append(statistics.median(timed(verify5) for _ in range(5)))
        step_s.append(statistics.median(timed(decode1) for _ in range(5)))

    weight_bytes = bundle.manifest["models"]["target"]["weight_bytes"]
    tied = bundle.manifest["models"]["target"]["architecture"]["tie_word_embeddings"]
    per_token = decode_s and statistics.median(decode_s)
    print(f"bundle: {args.bundle}  threads: {args.threads or 'recipe default'}  rounds: {args.rounds}")
    print(f"prefill ({args.prompt} tokens): {args.prompt / statistics.median(prefill_s):.1f} tokens/s")
    print(f"decode: {1 / per_token:.2f} tokens/s ({per_token * 1e3:.1f} ms/token) at context {args.prompt}")
    print(f"verify(5) / decode step: {statistics.median(verify_s) / statistics.median(step_s):.2f}")
    print(f"weights: {weight_bytes / 1e6:.0f} MB{' (embedding read once as the LM head)' if tied else ''}; "
          f"implied weight bandwidth {weight_bytes / per_token / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
