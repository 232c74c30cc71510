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


@pytest.fixture(scope="module")
def reference(gguf_path, transformers_tokenizer, tmp_path_factory):
    """(a Hugging Face folder of the GGUF's dequantized weights, the transformers model on them)."""
    folder = tmp_path_factory.mktemp("smollm2") / "folder"
    return folder, _folder_from_gguf(gguf_path, folder, transformers_tokenizer).eval()


@pytest.fixture(scope="module")
def gguf_bundle(gguf_path, tmp_path_factory):
    """SmolLM2 compiled from its GGUF in f32 (greedy tokens then equal transformers')."""
    bundle = tmp_path_factory.mktemp("smollm2-gguf") / "from-gguf"
    _compile(gguf_path, bundle)
    return bundle


def _expected(model, ids: list[int], count: int) -> list[int]:
    """transformers' greedy answer, up to (not including) the end-of-turn token ours stops before."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=count, do_sample=False, eos_token_id=2)[0, len(ids):]
    out = out.tolist()
    return out[:out.index(2)] if 2 in out else out


@pytest.mark.slow
def test_smollm2_chat_answers_equal_transformers(gguf_bundle, reference, transformers_tokenizer, tmp_path):
    """Compiled from the GGUF and from a folder made of it: both answer a chat prompt greedily with
    the tokens transformers generates on the same dequantized weights."""
    folder, model = reference
    ids = transformers_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    count = 24
    expected = _expected(model, ids, count)
    _compile(folder, tmp_path / "from-folder")
    from_gguf = _greedy(gguf_bundle, ids, count)
    assert from_gguf == _greedy(tmp_path / "from-folder", ids, count)
    assert from_gguf == expected
    assert transformers_tokenizer.decode(expected).strip(), "an empty answer would prove little"
    weights = [json.loads((b / "manifest.json").read_text())["files"]["target/weights.safetensors"]
               for b in (gguf_bundle, tmp_path / "from-folder")]
    assert weights[0]["sha256"] == weights[1]["sha256"]  # the same tensors, bit for bit


@pytest.mark.slow
def test_smollm2_air_run_chat_two_turns_equal_transformers(gguf_bundle, reference, transformers_tokenizer):
    """air-run chat over a pipe: each greedy answer is transformers' on the same history, and the
    second turn reuses the first turn's cached tokens."""
    _, model = reference
    questions, count = ["What is the capital of France?", "And what is the capital of Germany?"], 24
    result = subprocess.run([sys.executable, "-m", "air.runtime", "chat", str(gguf_bundle), "--json", "--max-tokens",
                             str(count), "--speculate", "0"], input="".join(q + "\n" for q in questions),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in result.stdout.splitlines()]
    assert [t["user"] for t in turns] == questions
    history = []
    for turn, question in zip(turns, questions):
        history.append({"role": "user", "content": question})
        ids = transformers_tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False)
        expected = _expected(model, ids, count)
        assert turn["tokens"] == expected, turn
        assert turn["stats"]["prompt_tokens"] == len(ids)
        assert turn["text"] == transformers_tokenizer.decode(expected, skip_special_tokens=True)
        history.append({"role": "assistant", "content": turn["text"]})
    assert turns[0]["stats"]["reused_tokens"] == 0 and turns[1]["stats"]["reused_tokens"] > 0
    assert turns[1]["stats"]["prefilled_tokens"] == turns[1]["stats"]["prompt_tokens"] - turns[1]["stats"]["reused_tokens"]


@pytest.mark.slow
def test_smollm2_q4_build_keeps_every_q4_1_matrix(gguf_path, tmp_path):
    """A q4 build of the Q4_1 file keeps every Q4_1 matrix as stored; only the Q8_0 embedding is re-quantized."""
    import gguf

    result = subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(gguf_path),
                             "--quantization", "q4", "--max-context", "256", "--output", str(tmp_path / "q4")],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    print(result.stderr)  # the stage timings
    q4_1 = {t.name for t in gguf.GGUFReader(gguf_path).tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_1}
    tensors = load_checkpoint(gguf_path).tensors
    stored_q4_1 = sorted(name for name, t in tensors.by_name.items() if t.name in q4_1)
    blocks = json.loads((tmp_path / "q4" / "manifest.json").read_text())["models"]["target"]["source_blocks"]
    assert len(stored_q4_1) == 210 and sorted(blocks["kept"]) == stored_q4_1
    assert blocks["requantized"] == ["model.embed_tokens.weight"]  # stored as Q8_0
