"""KV-cache layouts side by side: quality against the f16 cache, and speed by context.

    python benchmarks/kv_cache.py CHECKPOINT TEXT_FILE [--window 256 --sinks 4] [--threads 2]

Compiles the checkpoint once per layout (f16, int8, int4, and int8 with sinks + window), then
prints per layout:
  quality: held-out perplexity (teacher forcing over TEXT_FILE), mean KL divergence and top-1
           agreement of next-token distributions against the f16 cache, greedy agreement over
           long generations (tokens equal to the f16 cache's, position by position);
  window:  perplexity of each window-sized segment of the text, dense versus sinks + window
           (the segments past the first are where eviction happens);
  speed:   KV bytes and decode tokens/s at 256, 1024 and 2000 positions of context (2k less the steps).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.runtime import Bundle


def log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def teacher_forced(model, ids, chunk):
    """Log-probabilities of every next token [len(ids) - 1, vocab]."""
    model.reset(len(ids))
    rows = [model.verify(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    return log_softmax(np.concatenate(rows)[:-1])


def nll(logprobs, ids):
    return -logprobs[np.arange(len(ids) - 1), ids[1:]]


def decode_speed(model, context, steps=24):
    rng = np.random.default_rng(0)
    model.reset(context + steps + 1)
    model.prefill(rng.integers(2, model.vocab_size, size=context), chunk=min(256, model.max_append))
    times = []
    for token in rng.integers(2, model.vocab_size, size=steps):
        start = time.perf_counter()
        model.decode(int(token))
        times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("text", type=Path)
    parser.add_argument("--tokens", type=int, default=1024, help="held-out tokens for perplexity and KL")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--generate", type=int, default=256, help="tokens per greedy generation")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    layouts = {"f16": {"kv_cache": "f16"}, "int8": {"kv_cache": "int8"}, "int4": {"kv_cache": "int4"},
               f"int8+window{args.window}": {"kv_cache": "int8", "kv_window": args.window, "kv_sinks": args.sinks}}
    base = load_recipe("host").with_overrides(max_context=2048)
    work = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    bundles = {}
    for name, changes in layouts.items():
        compile_bundle(args.checkpoint, None, base.with_overrides(**changes), work / name.replace("+", "-"), quiet=True)
        bundles[name] = Bundle.load(work / name.replace("+", "-"), threads=args.threads)
        bundles[name].eos_token_ids = set()

    reference = bundles["f16"]
    text_ids = np.array(reference.encode(args.text.read_text()), dtype=np.int32)
    ids = text_ids[: args.tokens]
    ref_logprobs = teacher_forced(reference.target, ids, 64)
    prompts = [ids[i:i + 16].tolist() for i in range(0, 4 * 64, 64)]
    ref_generations = [reference.generate(prompt_ids=p, max_tokens=args.generate).tokens for p in prompts]

    print(f"checkpoint {args.checkpoint}; {len(ids)} held-out tokens from {args.text}")
    print(f"{'layout':<18} {'bytes/tok':>9} {'vs f16':>7} {'ppl':>8} {'ppl vs f16':>10} {'KL':>9} {'top1':>6} {'greedy':>7}")
    for name, bundle in bundles.items():
        model = bundle.target
        logprobs = teacher_forced(model, ids, 64)
        kl = float((np.exp(ref_logprobs) * (ref_logprobs - logprobs)).sum(axis=-1).mean())
        top1 = float((logprobs.argmax(-1) == ref_logprobs.argmax(-1)).mean())
        ppl, ref_ppl = np.exp(nll(logprobs, ids).mean()), np.exp(nll(ref_logprobs, ids).mean())
        same = [np.mean(np.array(bundle.generate(prompt_ids=p, max_tokens=args.generate).tokens) == np.array(r))
                for p, r in zip(prompts, ref_generations)]
        per_token = model.kv.bytes_per_token
        print(f"{name:<18} {per_token:>9} {per_token / reference.target.kv.bytes_per_token:>7.3f} {ppl:>8.3f} "
              f"{ppl / ref_ppl - 1:>+10.2%} {kl:>9.5f} {top1:>6.3f} {np.mean(same):>7.3f}")

    window_name = f"int8+window{args.window}"
    windowed, dense = bundles[window_name].target, bundles["int8"].target
    long_ids = text_ids[: 4 * args.window + 1]  # not cut to --tokens: the check needs four windows
    if len(long_ids) == 4 * args.window + 1:
        dense_nll = nll(teacher_forced(dense, long_ids, 64), long_ids)
        window_nll = nll(teacher_forced(windowed, long_ids, 64), long_ids)
        print(f"\nperplexity per segment of {args.window} tokens (int8 cache): dense / sinks {args.sinks} + window {args.window}")
        first = np.exp(window_nll[: args.window].mean())
        for s in range(4):
            part = slice(s * args.window, (s + 1) * args.window)
            w = np.exp(window_nll[part].mean())
            d = np.exp(dense_nll[part].mean())
            print(f"  segment {s + 1}: {d:8.3f} / {w:8.3f}   windowed vs dense {w / d - 1:+6.1%}, "
                  f"vs the in-window segment 1 {w / first - 1:+6.1%}")
    else:
        print(f"\n(text too short for the 4x window check: need {4 * args.window + 1} tokens)")

    print("\ndecode tokens/s by context (median of 24 steps)")
    print(f"{'layout':<18} " + " ".join(f"{c:>14}" for c in (256, 1024, 2000)))
    for name, bundle in bundles.items():
        cells = []
        for context in (256, 1024, 2000):
            if context + 25 > bundle.target.max_context:
                cells.append("-")
                continue
            speed = decode_speed(bundle.target, context)
            kv_mb = bundle.target.kv.bytes_for(context + 25) / 1e6
            cells.append(f"{speed:7.1f} ({kv_mb:4.1f}MB)")
        print(f"{name:<18} " + " ".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
