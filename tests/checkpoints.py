"""Tiny random Hugging Face checkpoints of every supported family, made with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB = 320

_CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\nimport sys\n\ndef read_config(path):\n    with open(path) as f:\n        return f.read()\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i * i, end=' ')\nwhile True:\n    break\n",
    "The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9.\n",
]


# A ChatML-like template: each turn ends with the end-of-sequence token the model stops at.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def make_tokenizer(folder: Path, vocab: int = VOCAB, chat_template: str | None = None) -> None:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 2, special_tokens=["<|bos|>", "<|eos|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    # pad to the exact vocabulary size so config.vocab_size matches
    have = tokenizer.get_vocab_size()
    tokenizer.add_tokens([f"<|extra_{i}|>" for i in range(have, vocab)])
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
}

# Phi-3 (fused qkv and gate/up tensors) and a Phi-4-mini in miniature: partial rotary (0.75 of
# head_dim 32), longrope switching from its short to its long factors past 32 positions, tied.
PHI3_VARIANTS = {
    "phi3": dict(family="phi3", pad_token_id=None),
    "phi4-mini": dict(family="phi3", heads=2, kv_heads=1, tied=True, pad_token_id=None, partial_rotary_factor=0.75,
                      original_max_position_embeddings=32,
                      rope_scaling={"rope_type": "longrope", "short_factor": [round(1.0 + 0.05 * i, 2) for i in range(12)],
                                    "long_factor": [1.5 + 0.75 * i for i in range(12)]}),
}
UNIT_OFFSET_NORMS = ("gemma3",)  # families whose norms scale by 1 + weight


def make_checkpoint(folder: Path, family: str = "llama", *, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, intermediate: int = 128, tied: bool = False, dtype: str = "float32",
                    seed: int = 0, vocab: int = VOCAB, chat_template: str | None = None, **extra) -> Path:
    """Write a random checkpoint in HF format (config.json, model.safetensors, tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, intermediate_size=intermediate, tie_word_embeddings=tied,
        max_position_embeddings=512, bos_token_id=0, eos_token_id=1, **extra,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            # larger than the default init so that logits are not flat and argmax is stable
            param.normal_(0.0, 0.08 if param.dim() > 1 else 0.3)
            if "norm" in name and family not in UNIT_OFFSET_NORMS:
                param.add_(1.0)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    make_tokenizer(folder, vocab, chat_template)
    return folder


def load_reference(folder: Path):
    """The transformers model in f32 (from whatever dtype the checkpoint stores)."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def trim_head(folder: Path, token_ids) -> Path:
    """Give a checkpoint a trimmed LM head (head_tokens.json): its lm_head rows kept, in this order."""
    (Path(folder) / "head_tokens.json").write_text(json.dumps({"token_ids": [int(i) for i in token_ids]}))
    return Path(folder)
