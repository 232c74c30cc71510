"""Train the project's default draft/target pair on the Python standard library's own source.

One script, CPU only (torch 2.13.0), fixed seeds, budgets in optimizer steps so that a rerun on
the same software does the same work. Steps:

  1. corpus: every UTF-8 .py file under the directory of `os` (site-packages excluded), split by a
     hash of the relative path into train (95%) and held-out (5%);
  2. a byte-level BPE tokenizer trained on the train split only, with <|endoftext|> as eos;
  3. the target (LlamaForCausalLM, ~12M parameters) trained with cross-entropy;
  4. the draft (~1.5M parameters) trained with cross-entropy, then distilled on the target's
     logits (KL), which is what raises its agreement with the target;
  5. both saved in Hugging Face format (float16), then evaluated from the saved files in float32:
     held-out perplexity and greedy acceptance for k = 1..8, written to metrics.json.

`--distill-more STEPS` continues step 4 alone on a saved pair (the draft was undertrained after
the default budget), then re-evaluates.

Example (the committed pair; see models/pair/README.md for the exact commands):
  nice -n 10 python training/train_pair.py --out models/pair
  python training/train_pair.py --out models/pair --distill-more 1200 --distill-lr 1e-3 --log-every 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
MAX_POSITIONS = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- corpus

def stdlib_root() -> Path:
    return Path(os.__file__).resolve().parent


def is_heldout(relpath: str, percent: int) -> bool:
    # A hash of the path (not Python's salted hash()) so the split is the same on every machine.
    return int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100 < percent


def load_corpus(percent: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(relpath, text) pairs for train and held-out, in sorted path order."""
    root = stdlib_root()
    train, heldout = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/"):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few test files are deliberately in other encodings
        (heldout if is_heldout(rel, percent) else train).append((rel, text))
    return train, heldout


# ---------------------------------------------------------------- tokenizer

def train_tokenizer(texts: list[str], vocab: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def encode_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """All documents as one token stream, each followed by <|endoftext|>."""
    eos = tok.token_to_id(EOS)
    out = []
    for enc in tok.encode_batch(texts):
        out.extend(enc.ids)
        out.append(eos)
    return np.asarray(out, dtype=np.int32)


def save_tokenizer(tok: Tokenizer, folder: Path) -> None:
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
              "pad_token": EOS, "add_bos_token": False, "model_max_length": MAX_POSITIONS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# ---------------------------------------------------------------- models

def make_model(vocab: int, eos: int, hidden: int, layers: int, heads: int, kv_heads: int,
               intermediate: int, seed: int) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=MAX_POSITIONS, rope_theta=10000.0, rms_norm_eps=1e-5,
        # Tied: the embedding is most of a small model's bytes; sharing it halves them.
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    # GPT-2 style: shrink the init of the projections that write into the residual stream by
    # depth, so that a deeper model starts as well-conditioned as a shallow one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, 0.02 / math.sqrt(2 * layers))
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = eos
    model.generation_config.pad_token_id = eos
    return model


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() lists a tied tensor once


# ---------------------------------------------------------------- training

def batches(stream: np.ndarray, seq: int, batch: int, seed: int):
    """Endless shuffled batches of non-overlapping windows (seq + 1 tokens: inputs and next-token labels)."""
    n = (len(stream) - 1) // seq
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        for i in range(0, n - batch + 1, batch):
            starts = order[i:i + batch] * seq
            rows = np.stack([stream[s:s + seq + 1] for s in starts])
            yield torch.from_numpy(rows).long()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    # Linear warmup, then cosine down to a tenth of the peak.
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    # No weight decay on norms (1-D); the tied embedding counts once.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    # bf16 autocast is 1.3-2x faster on this CPU (avx512_bf16); the loss is taken in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids).logits.float()


@torch.no_grad()
def quick_ppl(model, stream: np.ndarray, seq: int, tokens: int) -> float:
    """Monitoring perplexity on the first `tokens` held-out tokens (bf16, as in training)."""
    model.eval()
    rows = torch.from_numpy(stream[:tokens // seq * seq + 1])
    nll, count = 0.0, 0
    for s in range(0, len(rows) - 1, seq):
        ids = rows[s:s + seq + 1].long()[None]
        logits = logits_of(model, ids[:, :-1])
        nll += F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    model.train()
    return math.exp(nll / count)


def train(model, stream, heldout, args, steps: int, lr: float, seed: int, name: str, teacher=None) -> dict:
    """Cross-entropy training, or KL distillation on `teacher`'s logits when a teacher is given."""
    model.train()
    opt = make_optimizer(model, lr)
    data = batches(stream, args.seq, args.batch, seed)
    warmup = max(1, min(args.warmup, steps // 10))
    start, seen, history = time.time(), 0, []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        rows = next(data)
        ids, labels = rows[:, :-1], rows[:, 1:]
        logits = logits_of(model, ids)
        if teacher is None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        else:
            with torch.no_grad():
                target = F.log_softmax(logits_of(teacher, ids), dim=-1)
            loss = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True,
                            reduction="none").sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += ids.numel()
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            elapsed = time.time() - start
            ppl = quick_ppl(model, heldout, args.seq, args.monitor_tokens)
            history.append({"step": step + 1, "tokens": seen, "loss": round(loss.item(), 4),
                            "heldout_ppl": round(ppl, 2), "seconds": round(elapsed, 1)})
            log(f"{name} step {step + 1}/{steps} loss {loss.item():.3f} held-out ppl {ppl:.2f} "
                f"tokens {seen / 1e6:.2f}M {seen / elapsed:.0f} tok/s {elapsed / 60:.1f} min")
    model.eval()
    return {"steps": steps, "tokens": seen, "seconds": round(time.time() - start, 1), "peak_lr": lr,
            "history": history}


def save_model(model, tok: Tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    model.float()
    save_tokenizer(tok, folder)


# ---------------------------------------------------------------- evaluation (float32, from saved files)

def load_f32(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@torch.no_grad()
def perplexity(model, ids: list[int] | np.ndarray, ctx: int) -> tuple[float, int]:
    """Perplexity over consecutive independent windows of `ctx` tokens; returns (ppl, predicted tokens)."""
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    nll, count = 0.0, 0
    for s in range(0, len(ids), ctx):
        window = ids[s:s + ctx][None]
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window).logits.float()
        nll += F.cross_entropy(logits[0, :-1], window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return math.exp(nll / count), count


def heldout_prompts(tok: Tokenizer, heldout: list[tuple[str, str]], count: int, length: int,
                    continuation: int, seed: int) -> torch.Tensor:
    """`count` prompts of `length` tokens from inside held-out files, each with room for the continuation."""
    rng = np.random.default_rng(seed)
    docs = [enc.ids for enc in tok.encode_batch([t for _, t in heldout])]
    docs = [d for d in docs if len(d) >= length + continuation]
    prompts = []
    for _ in range(count):
        d = docs[rng.integers(len(docs))]
        s = int(rng.integers(len(d) - length - continuation + 1))
        prompts.append(d[s:s + length])
    return torch.tensor(prompts, dtype=torch.long)


@torch.no_grad()
def acceptance(target, draft, prompts: torch.Tensor, new_tokens: int, max_k: int) -> dict:
    """Greedy speculative decoding, simulated exactly.

    With greedy verification the output is the target's greedy continuation G. For each position i
    the draft proposes max_k tokens greedily from prompt + G[:i]; match[i] is how many of them agree
    with G[i:] before the first miss. A step with draft length k starting at i accepts
    a = min(match[i], k) draft tokens and then emits the target's own token, so it advances a + 1.
    Steps start within the first new_tokens positions; G runs max_k further so none is cut short.
    """
    prompt_len = prompts.shape[1]
    total = new_tokens + max_k
    out = target.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=total,
                          min_new_tokens=total, do_sample=False, eos_token_id=None, pad_token_id=0)
    greedy = out[:, prompt_len:]
    match = torch.zeros(prompts.shape[0], new_tokens, dtype=torch.long)
    for i in range(new_tokens):
        step = draft(input_ids=out[:, :prompt_len + i], use_cache=True)
        proposed = []
        for _ in range(max_k):
            nxt = step.logits[:, -1].argmax(-1, keepdim=True)
            proposed.append(nxt)
            step = draft(input_ids=nxt, cache=step.cache, use_cache=True)
        agree = torch.cat(proposed, dim=1) == greedy[:, i:i + max_k]
        match[:, i] = agree.long().cumprod(dim=1).sum(dim=1)
    result = {"per_token_agreement": round(float((match >= 1).float().mean()), 4), "by_k": {}}
    for k in range(1, max_k + 1):
        accepted, steps = 0, 0
        for row in match.tolist():
            i = 0
            while i < new_tokens:
                a = min(row[i], k)
                accepted += a
                steps += 1
                i += a + 1
        result["by_k"][str(k)] = {"acceptance_rate": round(accepted / (steps * k), 4),
                                  "mean_accepted_per_step": round(accepted / steps, 4),
                                  "tokens_per_target_call": round((accepted + steps) / steps, 4)}
    return result


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(out: Path, tok: Tokenizer, heldout, heldout_stream: np.ndarray, args) -> dict:
    target, draft = load_f32(out / "target"), load_f32(out / "draft")
    ev = {"context": args.eval_ctx, "heldout_tokens": int(min(args.eval_tokens, len(heldout_stream))),
          "heldout_text": "the held-out stream: held-out files in sorted path order, each followed by "
                          "<|endoftext|>, first heldout_tokens tokens, windows of `context` tokens"}
    ids = heldout_stream[:ev["heldout_tokens"]]
    for name, model in (("target", target), ("draft", draft)):
        t = time.time()
        ppl, n = perplexity(model, ids, args.eval_ctx)
        ev[f"{name}_ppl"] = round(ppl, 3)
        log(f"eval {name}: held-out ppl {ppl:.3f} over {n} predicted tokens ({time.time() - t:.0f} s)")
    # The small fixed slice that tests/test_trained_pair.py recomputes: a few KB of held-out text.
    slice_text = make_eval_slice(heldout, args.slice_bytes)
    (out / "heldout_slice.txt").write_text(slice_text)
    slice_ids = tok.encode(slice_text).ids
    ev["slice"] = {"file": "heldout_slice.txt", "bytes": len(slice_text.encode()), "tokens": len(slice_ids),
                   "context": args.eval_ctx}
    for name, model in (("target", target), ("draft", draft)):
        ev["slice"][f"{name}_ppl"] = round(perplexity(model, slice_ids, args.eval_ctx)[0], 4)
    log(f"eval slice: {ev['slice']}")
    prompts = heldout_prompts(tok, heldout, args.prompts, args.prompt_len, args.new_tokens + 8, args.seed)
    t = time.time()
    ev["acceptance"] = acceptance(target, draft, prompts, args.new_tokens, 8)
    ev["acceptance"].update({"prompts": args.prompts, "prompt_tokens": args.prompt_len,
                             "new_tokens": args.new_tokens, "prompt_seed": args.seed,
                             "how": "greedy target continuation; draft greedy proposals; float32 models "
                                    "loaded from the float16 files"})
    log(f"eval acceptance ({time.time() - t:.0f} s): {json.dumps(ev['acceptance'])}")
    return ev


def make_eval_slice(heldout: list[tuple[str, str]], size: int) -> str:
    """The start of the largest held-out files, whole lines, until `size` bytes: code, not licence headers."""
    picked = sorted(heldout, key=lambda kv: -len(kv[1]))[:4]
    parts = []
    for _, text in picked:
        mid = text[len(text) // 3:]  # skip the docstring/import header, which is mostly boilerplate
        mid = mid[mid.index("\n") + 1:]
        parts.append(mid.encode()[:size // len(picked)].decode("utf-8", "ignore").rsplit("\n", 1)[0] + "\n")
    return "".join(parts)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/pair"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="1 is as fast as 2 here when another job shares the cores, and leaves it one")
    p.add_argument("--heldout-percent", type=int, default=5)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=512, help="training context (tokens)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--monitor-tokens", type=int, default=16384, help="held-out tokens for progress lines")
    # target shape and budget
    p.add_argument("--target-shape", default="384,6,6,2,1024", help="hidden,layers,heads,kv_heads,intermediate")
    p.add_argument("--target-steps", type=int, default=1000)
    p.add_argument("--target-lr", type=float, default=2e-3)
    # draft shape and budgets
    p.add_argument("--draft-shape", default="128,2,2,1,384")
    p.add_argument("--draft-steps", type=int, default=600)
    p.add_argument("--draft-lr", type=float, default=3e-3)
    p.add_argument("--distill-steps", type=int, default=500)
    p.add_argument("--distill-lr", type=float, default=1.5e-3)
    p.add_argument("--distill-more", type=int, default=0, metavar="STEPS",
                   help="no new training: distill the saved draft on the saved target for STEPS more steps "
                        "(fresh optimizer and schedule at --distill-lr), then re-evaluate")
    # evaluation
    p.add_argument("--eval-only", action="store_true", help="re-evaluate the saved pair, no training")
    p.add_argument("--eval-ctx", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=131072)
    p.add_argument("--slice-bytes", type=int, default=8192)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    return p.parse_args(argv)


def distill_more(out: Path, tok: Tokenizer, train_stream, heldout_stream, args, metrics: dict) -> None:
    """Continue distilling the saved draft; each round is appended to metrics["training"]["distill_more"]."""
    target, draft = load_f32(out / "target"), load_f32(out / "draft")
    rounds = metrics["training"].setdefault("distill_more", [])
    # A new seed per round, so that a second round does not replay the first one's batches.
    seed = args.seed + 3 + len(rounds)
    result = train(draft, train_stream, heldout_stream, args, args.distill_more, args.distill_lr, seed,
                   "distill-more", teacher=target)
    result["seed"] = seed
    result["command"] = " ".join(["python"] + sys.argv)
    rounds.append(result)
    save_model(draft, tok, out / "draft")


def shape(text: str) -> dict:
    hidden, layers, heads, kv, inter = (int(x) for x in text.split(","))
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv, "intermediate": inter}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    wall = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    train_docs, heldout = load_corpus(args.heldout_percent)
    log(f"corpus: {len(train_docs)} train files ({sum(len(t) for _, t in train_docs) / 1e6:.1f}M chars), "
        f"{len(heldout)} held-out ({sum(len(t) for _, t in heldout) / 1e6:.2f}M chars)")
    metrics_path = out / "metrics.json"
    if args.eval_only or args.distill_more:
        tok = Tokenizer.from_file(str(out / "target" / "tokenizer.json"))
        metrics = json.loads(metrics_path.read_text())
    else:
        t = time.time()
        tok = train_tokenizer([text for _, text in train_docs], args.vocab)
        log(f"tokenizer: vocab {tok.get_vocab_size()} in {time.time() - t:.1f} s")
        metrics = {"training": {}}
    eos = tok.token_to_id(EOS)
    train_stream = encode_stream(tok, [t for _, t in train_docs])
    heldout_stream = encode_stream(tok, [t for _, t in heldout])
    log(f"tokens: {len(train_stream)} train, {len(heldout_stream)} held-out")

    if args.distill_more:
        distill_more(out, tok, train_stream, heldout_stream, args, metrics)
    elif not args.eval_only:
        vocab = tok.get_vocab_size()
        target = make_model(vocab, eos, **shape(args.target_shape), seed=args.seed)
        draft = make_model(vocab, eos, **shape(args.draft_shape), seed=args.seed + 1)
        log(f"params: target {param_count(target)}, draft {param_count(draft)}")
        tr = metrics["training"]
        tr["target"] = train(target, train_stream, heldout_stream, args, args.target_steps, args.target_lr,
                             args.seed, "target")
        save_model(target, tok, out / "target")
        tr["draft"] = train(draft, train_stream, heldout_stream, args, args.draft_steps, args.draft_lr,
                            args.seed + 1, "draft")
        tr["draft"]["ppl_before_distill"] = tr["draft"]["history"][-1]["heldout_ppl"]
        tr["distill"] = train(draft, train_stream, heldout_stream, args, args.distill_steps, args.distill_lr,
                              args.seed + 2, "distill", teacher=target)
        save_model(draft, tok, out / "draft")
        tr["wall_seconds"] = round(time.time() - wall, 1)
        metrics.update({
            "command": " ".join(["python"] + sys.argv),
            "software": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "threads": args.threads},
            "corpus": {"root": "directory of the os module (Python standard library), *.py, site-packages "
                               "excluded, non-UTF-8 files skipped",
                       "python_version": platform.python_version(),
                       "split": f"held-out if int(sha256(relative posix path)[:8 hex], 16) % 100 < "
                                f"{args.heldout_percent}",
                       "train_files": len(train_docs), "heldout_files": len(heldout),
                       "train_tokens": int(len(train_stream)), "heldout_tokens": int(len(heldout_stream)),
                       "heldout_file_list": [rel for rel, _ in heldout]},
            "tokenizer": {"type": "byte-level BPE (tokenizers)", "vocab": vocab, "eos": EOS, "eos_id": eos},
            "params": {"target": param_count(target), "draft": param_count(draft)},
            "shapes": {"target": shape(args.target_shape), "draft": shape(args.draft_shape)},
        })

    metrics["eval"] = evaluate(out, tok, heldout, heldout_stream, args)
    metrics["sha256"] = {f"{m}/{f.name}": sha256_of(f) for m in ("target", "draft")
                         for f in sorted((out / m).iterdir())}
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"done in {(time.time() - wall) / 60:.1f} min; wrote {metrics_path}")


if __name__ == "__main__":
    main()
