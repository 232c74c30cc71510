"""Real weights: SmolLM2-135M-Instruct from its Q4_1 GGUF (fetched once by tools/get_smollm2.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from helpers import REPO

sys.path.insert(0, str(REPO / "tools"))
from get_smollm2 import smollm2_gguf  # noqa: E402

from air.compiler.checkpoint import load_checkpoint  # noqa: E402

TEXTS = [
    "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n",
    "Hello, world! 1234567890 3.14159 -42",
    "  leading spaces,\ttabs\t\tand\n\n\nnewlines   trailing   ",
    "naïve café — “quotes” ‘single’ … 東京 مرحبا 🙂👍🏽",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "<|endoftext|><repo_name>air<file_sep>main.py<|endoftext|>",
    "x=[i**2 for i in range(10)];print(x)#comment\r\n",
    "I'm sure they'll say we've done it, isn't it? DON'T SHOUT",
]


@pytest.fixture(scope="module")
def gguf_path():
    return smollm2_gguf()


@pytest.fixture(scope="module")
def transformers_tokenizer(gguf_path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


def test_gguf_tokenizer_encodes_like_transformers(gguf_path, transformers_tokenizer):
    ckpt = load_checkpoint(gguf_path)
    ours = Tokenizer.from_str(ckpt.tokenizer_files["tokenizer.json"].decode())
    assert ours.get_vocab_size(with_added_tokens=True) == 49152
    assert (ckpt.config["bos_token_id"], ckpt.config["eos_token_id"]) == (1, 2)
    assert ckpt.chat_template == transformers_tokenizer.chat_template
    for text in TEXTS:
        expected = transformers_tokenizer(text, add_special_tokens=True)["input_ids"]
        assert ours.encode(text).ids == expected, text
        assert ours.decode(expected, skip_special_tokens=False) == transformers_tokenizer.decode(expected)


def _folder_from_gguf(gguf_path: Path, folder: Path, tokenizer) -> Path:
    """A Hugging Face folder of the GGUF's weights as transformers dequantizes them."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                              dtype=torch.float32)
    folder.mkdir()
    state = {name: t.contiguous() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state["lm_head.weight"]  # shares the embedding's storage, which safetensors refuses
    save_file(state, str(folder / "model.safetensors"))
    model.config.architectures = [type(model).__name__]  # a config made from a GGUF names none
    model.config.to_json_file(folder / "config.json")
    model.generation_config.to_json_file(folder / "generation_config.json")
    tokenizer.save_pretrained(folder)
    return model


def _compile(source: Path, output: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(source),
                             "--quantization", "f32", "--max-context", "256", "--output", str(output)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    print(result.stderr)  # the stage timings


def _greedy(bundle: Path, ids: list[int], count: int) -> list[int]:
    result = subprocess.run([sys.executable, "-m", "air.runtime", str(bundle), "--prompt-ids", ",".join(map(str, ids)),
                             "--max-tokens", str(count), "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tokens"]


@pytest.mark.slow
def test_smollm2_chat_answers_equal_transformers(gguf_path, transformers_tokenizer, tmp_path):
    """Compiled from the GGUF and from a folder made of it: both answer a chat prompt greedily with
    the tokens transformers generates on the same dequantized weights."""
    model = _folder_from_gguf(gguf_path, tmp_path / "folder", transformers_tokenizer)
    ids = transformers_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    count = 24
    with torch.no_grad():
        expected = model.eval().generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False,
                                         eos_token_id=2)[0, len(ids):].tolist()
    _compile(gguf_path, tmp_path / "from-gguf")
    _compile(tmp_path / "folder", tmp_path / "from-folder")
    from_gguf = _greedy(tmp_path / "from-gguf", ids, count)
    assert from_gguf == _greedy(tmp_path / "from-folder", ids, count)
    # transformers' output ends with the end-of-turn token; ours stops before it (finish_reason "stop")
    assert from_gguf == (expected[:expected.index(2)] if 2 in expected else expected)
    assert transformers_tokenizer.decode(expected).strip(), "an empty answer would prove little"
    weights = [json.loads((tmp_path / b / "manifest.json").read_text())["files"]["target/weights.safetensors"]
               for b in ("from-gguf", "from-folder")]
    assert weights[0]["sha256"] == weights[1]["sha256"]  # the same tensors, bit for bit
