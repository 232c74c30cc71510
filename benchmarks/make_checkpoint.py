"""Write a random-weight checkpoint of a known model shape (no weights can be downloaded here).

    python benchmarks/make_checkpoint.py qwen2.5-0.5b /tmp/qwen-0.5b [--dtype float32]
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from checkpoints import make_tokenizer  # noqa: E402

SHAPES = {
    # Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, tied embeddings.
    "qwen2.5-0.5b": dict(cls="Qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768),
    # A small draft of the same family.
    "qwen2.5-draft": dict(cls="Qwen2", vocab_size=151936, hidden_size=256, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024,
                          tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=32768),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("output", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    settings = dict(SHAPES[args.shape])
    family = settings.pop("cls")
    config = getattr(transformers, f"{family}Config")(**settings, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config).to(getattr(torch, args.dtype))
    model.save_pretrained(args.output)
    make_tokenizer(args.output, config.vocab_size)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters -> {args.output}")


if __name__ == "__main__":
    main()
