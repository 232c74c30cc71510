"""GGUF input: the loader against the Hugging Face folder a GGUF was written from, a bundle
built from a GGUF file, and hostile GGUF files refused with one line."""

import json
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tokenizers import Tokenizer

from checkpoints import PHI3_VARIANTS, make_checkpoint
from gguf_files import write_gguf

from air.compiler.checkpoint import load_checkpoint
from air.compiler.cli import main
from air.runtime import Bundle

SOURCES = {
    "llama": dict(family="llama"),
    "llama-bias-tied": dict(family="llama", attention_bias=True, tied=True, kv_heads=4),
    "qwen2-tied": dict(family="qwen2", tied=True),
    "qwen3-qknorm": dict(family="qwen3", head_dim=32),
    "phi4-mini": PHI3_VARIANTS["phi4-mini"],  # fused attn_qkv / ffn_up, rope factor tensors, partial rotary
}
TEXTS = ["def f(x):\n    return x  +  1\n", "<|bos|>héllo wörld 12345 ∑ 🙂<|eos|>", "\t\t  \n\n   trailing   ",
         "<|extra_300|>class Stack:"]


def tokenizer_of(ckpt) -> Tokenizer:
    return Tokenizer.from_str(ckpt.tokenizer_files["tokenizer.json"].decode())


@pytest.mark.parametrize("source", list(SOURCES))
def test_gguf_reads_as_the_folder_it_was_written_from(source, tmp_path):
    folder = make_checkpoint(tmp_path / source, **SOURCES[source])
    original, from_gguf = load_checkpoint(folder), load_checkpoint(write_gguf(folder, tmp_path / "m.gguf"))
    assert from_gguf.spec == original.spec
    assert sorted(from_gguf.tensors.by_name) == sorted(original.tensors.files)
    for name in original.tensors.files:  # q/k rows back in Hugging Face order
        np.testing.assert_array_equal(from_gguf.read(name), original.read(name), err_msg=name)
    assert from_gguf.config["eos_token_id"] == 1 and from_gguf.chat_template.startswith("{% for m in messages %}")
    ours, theirs = tokenizer_of(from_gguf), tokenizer_of(original)
    assert ours.get_vocab(with_added_tokens=True) == theirs.get_vocab(with_added_tokens=True)
    for text in TEXTS:
        assert ours.encode(text).ids == theirs.encode(text).ids, text
        assert ours.decode(ours.encode(text).ids) == theirs.decode(theirs.encode(text).ids)


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2"])
def test_pre_tokenizers_split_like_transformers(pre, tmp_path):
    import transformers

    path = write_gguf(make_checkpoint(tmp_path / "source", "llama", layers=1), tmp_path / "m.gguf", pre=pre)
    ours = tokenizer_of(load_checkpoint(path))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS + ["x = 1234567 + 89;  y's  'll\r\n\r\n  z"]:
        assert ours.encode(text).ids == theirs(text)["input_ids"], text
        # the split itself (a tiny vocabulary may give the same ids for different splits)
        split = theirs.backend_tokenizer.pre_tokenizer.pre_tokenize_str
        assert ours.pre_tokenizer.pre_tokenize_str(text) == split(text), text


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_1", "Q5_0"])
def test_quantized_tensors_read_as_the_library_dequantizes_them(qtype, tmp_path):
    folder = make_checkpoint(tmp_path / "llama", "llama")
    original, from_gguf = load_checkpoint(folder), load_checkpoint(write_gguf(folder, tmp_path / "m.gguf", qtype))
    kind = gguf.GGMLQuantizationType[qtype]
    assert from_gguf.source_details["tensor_types"][qtype] == 16  # 7 matrices in each of 2 layers, embedding, lm_head
    for name in original.tensors.files:
        weight = original.read(name)
        if weight.ndim == 2:  # rows quantized in blocks along a row: the row order does not change a block
            stored = weight.astype(np.float16) if qtype == "F16" else gguf.quants.quantize(weight, kind)
            weight = gguf.quants.dequantize(stored, kind)
        np.testing.assert_array_equal(from_gguf.read(name), weight, err_msg=name)


def test_bundle_from_gguf_generates_like_transformers(tmp_path):
    folder = make_checkpoint(tmp_path / "source", "llama", seed=3)
    path = write_gguf(folder, tmp_path / "tiny-llama.gguf", "Q8_0")
    build = subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(path),
                            "--quantization", "f32", "--max-context", "64", "--quiet"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert build.returncode == 0, build.stderr
    bundle = tmp_path / "dist" / "tiny-llama"  # named after the file's stem
    inspect = CliRunner().invoke(main, ["inspect", str(bundle)])
    assert f"source: GGUF file {path}" in inspect.stdout and "16 Q8_0" in inspect.stdout, inspect.stdout
    assert "0 matrices kept as stored" in inspect.stdout and "16 dequantized and re-quantized to f32" in inspect.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["sources"]["target"]["format"] == "gguf"
    assert list(manifest["provenance"]["sources"]["target"]["files"]) == ["tiny-llama.gguf"]

    # the reference: transformers on the GGUF's dequantized weights, read from the GGUF by transformers
    reference = load_reference_gguf(path)
    prompt = [5, 17, 42, 99, 123, 7, 250, 31]
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=16, min_new_tokens=16,
                                      do_sample=False)[0, len(prompt):].tolist()
    result = Bundle.load(bundle).generate(prompt_ids=prompt, max_tokens=16)
    assert result.tokens == expected[:len(result.tokens)] and len(result.tokens) > 0


def load_reference_gguf(path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def test_reference_loader_agrees_on_the_tensors(tmp_path):
    """transformers' own GGUF reading gives the tensors ours gives (so the reference above is one)."""
    folder = make_checkpoint(tmp_path / "source", "llama", seed=4)
    path = write_gguf(folder, tmp_path / "m.gguf", "Q4_1")
    ours = load_checkpoint(path)
    theirs = load_reference_gguf(path).state_dict()
    for name in ours.tensors.by_name:
        np.testing.assert_array_equal(ours.read(name), theirs[name].numpy(), err_msg=name)


# -- Q4_1 blocks kept as q4 ---------------------------------------------------------------------

# llama's q/k rows are stored permuted (kept blocks are un-permuted by row); gemma3's are not,
# its norms are stored as 1 + w and its embedding is tied (queries scaled by head_dim: a GGUF
# has no query_pre_attn_scalar).
Q4_1_SOURCES = {"llama": dict(family="llama"),
                "gemma3": dict(family="gemma3", layers=2, head_dim=16, tied=True, sliding_window=8,
                               query_pre_attn_scalar=16)}


@pytest.mark.parametrize("family", list(Q4_1_SOURCES))
def test_q4_1_blocks_pack_as_stored(family, tmp_path):
    """Kept blocks are the GGUF's values exactly, and equal re-quantizing wherever that is exact."""
    from air.compiler.kernels import packing
    from air.compiler.tensor_map import tensor_map

    source = make_checkpoint(tmp_path / family, seed=5, **Q4_1_SOURCES[family])
    ckpt = load_checkpoint(write_gguf(source, tmp_path / "m.gguf", "Q4_1"))
    exact = 0
    for layer, sources in tensor_map(ckpt.spec).matrices.items():
        names = [name for name, _ in sources]
        stored = np.concatenate([ckpt.read(name) for name in names])  # dequantized by the gguf library
        kept = packing.pack_q4_blocks(np.concatenate([ckpt.tensors.q4_blocks(name) for name in names]))
        np.testing.assert_array_equal(packing.dequantize(kept, "q4", *stored.shape), stored, err_msg=layer)
        again = packing.pack(stored, "q4")
        if np.array_equal(packing.dequantize(again, "q4", *stored.shape), stored):
            exact += 1
            for leaf in ("qs", "scales"):
                np.testing.assert_array_equal(kept[leaf], again[leaf], err_msg=f"{layer}.{leaf}")
    assert exact > 0


def _dequantized_folder(ckpt, source, folder):
    """A Hugging Face folder holding the GGUF's weights as f32 (the dequantize-then-quantize path)."""
    from safetensors.numpy import save_file

    folder.mkdir()
    save_file({name: np.ascontiguousarray(ckpt.read(name)) for name in ckpt.tensors.by_name},
              str(folder / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


@pytest.mark.slow  # two compiles: 2-5 minutes on a loaded machine
@pytest.mark.parametrize("family", list(Q4_1_SOURCES))
def test_q4_1_gguf_keeps_its_blocks_in_a_q4_bundle(family, tmp_path):
    from air.compiler.build import compile_bundle
    from air.compiler.recipe import load_recipe

    source = make_checkpoint(tmp_path / "source", seed=6, **{"layers": 1, **Q4_1_SOURCES[family]})
    path = write_gguf(source, tmp_path / "q41.gguf", "Q4_1")
    recipe = load_recipe("host").with_overrides(max_context=64, quantization="q4", head_quantization="q4")
    compile_bundle(str(path), None, recipe, tmp_path / "kept", quiet=True)
    dequantized = _dequantized_folder(load_checkpoint(path), source, tmp_path / "dequantized")
    compile_bundle(str(dequantized), None, recipe, tmp_path / "requantized", quiet=True)

    entry = json.loads((tmp_path / "kept" / "manifest.json").read_text())["models"]["target"]
    matrices = [name for name in load_checkpoint(path).tensors.by_name if name.endswith("proj.weight")
                or name in ("model.embed_tokens.weight", "lm_head.weight")]
    assert sorted(entry["source_blocks"]["kept"]) == sorted(matrices) and entry["source_blocks"]["requantized"] == []
    inspect = CliRunner().invoke(main, ["inspect", str(tmp_path / "kept")])
    assert f"{len(matrices)} matrices kept as stored" in inspect.stdout and "0 dequantized and re-quantized" \
        in inspect.stdout, inspect.stdout
    as_json = CliRunner().invoke(main, ["inspect", "--json", str(tmp_path / "kept")])
    assert json.loads(as_json.stdout)["models"]["target"]["source_blocks"] == entry["source_blocks"]

    prompt = [5, 17, 42, 99, 123, 7, 250, 31]
    kept, again = (Bundle.load(tmp_path / name).target for name in ("kept", "requantized"))
    for model in (kept, again):
        model.reset()
    np.testing.assert_allclose(kept.verify(prompt), again.verify(prompt), atol=1e-4)


def test_other_formats_and_types_are_requantized(tmp_path):
    """A Q8_0 file into q4, a Q4_1 file into q8: every matrix re-quantized, none kept."""
    from air.compiler.kernels import packing
    from air.compiler.weights import WrittenWeights, _pack_matrix

    source = make_checkpoint(tmp_path / "source", "llama", layers=1)
    for qtype, scheme in (("Q8_0", "q4"), ("Q4_1", "q8")):
        ckpt = load_checkpoint(write_gguf(source, tmp_path / f"{qtype}.gguf", qtype))
        written = WrittenWeights(0, [], [])
        names = ["model.layers.0.mlp.down_proj.weight"]
        packed = _pack_matrix(ckpt, "model.layers.0.mlp.down_proj", names, scheme, written)
        assert written.kept == [] and written.requantized == names
        np.testing.assert_array_equal(packed["qs"], packing.pack(ckpt.read(names[0]), scheme)["qs"])


# -- hostile files ---------------------------------------------------------------------------------

def _field_value_offset(reader, key: str) -> int:
    field = reader.fields[key]
    return field.offset + sum(int(p.nbytes) for p in field.parts[:3])  # after key length, key, type


def _tensor_offset_field(reader, index: int) -> int:
    field = reader.tensors[index].field
    return field.offset + sum(int(p.nbytes) for p in field.parts[:5])  # after name, dims and type


def _corrupt(kind: str, data: bytearray, reader) -> bytearray:
    """The valid file's bytes with one thing broken."""
    if kind == "truncated-data":
        return data[: len(data) - 1000]
    if kind == "truncated-header":
        return data[:200]
    if kind == "magic":
        data[:4] = b"GGML"
    elif kind == "version":
        struct.pack_into("<I", data, 4, 99)
    elif kind == "tensor-count":
        struct.pack_into("<Q", data, 8, 1 << 60)
    elif kind == "kv-count":
        struct.pack_into("<Q", data, 16, 1 << 60)
    elif kind == "string-length":
        struct.pack_into("<Q", data, _field_value_offset(reader, "general.architecture"), 1 << 62)
    elif kind == "array-length":
        struct.pack_into("<Q", data, _field_value_offset(reader, "tokenizer.ggml.tokens") + 4, 1 << 40)
    elif kind == "tensor-offset":
        struct.pack_into("<Q", data, _tensor_offset_field(reader, 3), 1 << 50)
    elif kind == "misaligned":
        offset = _tensor_offset_field(reader, 3)
        struct.pack_into("<Q", data, offset, struct.unpack_from("<Q", data, offset)[0] + 4)
    elif kind == "overlap":
        first = struct.unpack_from("<Q", data, _tensor_offset_field(reader, 2))[0]
        struct.pack_into("<Q", data, _tensor_offset_field(reader, 3), first)
    elif kind == "tensor-type":
        struct.pack_into("<I", data, _tensor_offset_field(reader, 1) - 4, int(gguf.GGMLQuantizationType.Q8_1))
    elif kind == "unknown-tensor-type":
        struct.pack_into("<I", data, _tensor_offset_field(reader, 1) - 4, 1000)
    elif kind == "missing-metadata":
        at = data.index(b"llama.block_count")
        data[at:at + 17] = b"llama.block_cnt__"
    elif kind == "metadata-type":  # the layer count's 4 bytes read as a float32
        struct.pack_into("<I", data, _field_value_offset(reader, "llama.block_count") - 4,
                         int(gguf.GGUFValueType.FLOAT32))
    elif kind == "architecture":
        at = data.index(b"llama", _field_value_offset(reader, "general.architecture"))
        data[at:at + 5] = b"gemma"
    else:
        raise ValueError(kind)
    return data


BAD_FILES = {
    "truncated-data": "runs past the end of the file",
    "truncated-header": "22 metadata key entries cannot fit",
    "magic": "not a GGUF file",
    "version": "unsupported GGUF version 99",
    "tensor-count": "1152921504606846976 tensor entries cannot fit",
    "kv-count": "1152921504606846976 metadata key entries cannot fit",
    "string-length": "runs past the end of the file",
    "array-length": "1099511627776 array entries cannot fit",
    "tensor-offset": "runs past the end of the file",
    "misaligned": "is not aligned to 32 bytes",
    "overlap": "overlap in the file",
    "tensor-type": "has type Q8_1, which the gguf library cannot dequantize",
    "unknown-tensor-type": "has unknown type 1000",
    "missing-metadata": "missing required GGUF metadata 'llama.block_count'",
    "metadata-type": "GGUF metadata 'llama.block_count' is 1.4",
    "architecture": "unsupported GGUF architecture 'gemma' (supported: llama, qwen2, qwen3, phi3, gemma3)",
}


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid-gguf")
    return write_gguf(make_checkpoint(root / "source", "llama", layers=1), root / "valid.gguf")


def _compile_in_process(args: list[str]):
    result = CliRunner().invoke(main, ["compile", *args])
    return result.exit_code, result.stderr


def _compile_subprocess(args: list[str]):
    result = subprocess.run([sys.executable, "-m", "air.compiler", "compile", *args],
                            capture_output=True, text=True, timeout=120)
    return result.returncode, result.stderr


# Every kind through the CLI's code in this process; one of each family also as a real command
# (each start of the CLI imports TVM, 4-14 s on a loaded machine).
@pytest.mark.parametrize("kind,compile_", [(kind, _compile_in_process) for kind in BAD_FILES] + [
    (kind, _compile_subprocess) for kind in ("array-length", "overlap", "missing-metadata")])
def test_hostile_gguf_is_refused_with_one_line(kind, compile_, valid_gguf, tmp_path):
    bad = tmp_path / f"{kind}.gguf"
    bad.write_bytes(_corrupt(kind, bytearray(valid_gguf.read_bytes()), gguf.GGUFReader(valid_gguf)))
    status, stderr = compile_(["--target-model", str(bad), "--output", str(tmp_path / "out"), "--quiet"])
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"air-build: error: {bad}: "), stderr
    assert BAD_FILES[kind] in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == [bad.name]


def test_gemma3_gguf_compiles_to_transformers_logits_past_the_window(tmp_path):
    """A gemma3 GGUF as llama.cpp writes it (norms stored as 1 + w, queries scaled by head_dim):
    the bundle's logits are transformers' on the folder it came from, and greedy tokens run past the window."""
    from checkpoints import load_reference

    from air.compiler.build import compile_bundle
    from air.compiler.recipe import load_recipe

    folder = make_checkpoint(tmp_path / "gemma3", "gemma3", layers=6, head_dim=16, tied=True, sliding_window=8,
                             query_pre_attn_scalar=16, final_logit_softcapping=8.0, seed=23)
    path = write_gguf(folder, tmp_path / "gemma3.gguf")
    ckpt = load_checkpoint(path)
    assert ckpt.spec == load_checkpoint(folder).spec
    recipe = load_recipe("host").with_overrides(max_context=64, quantization="f32", kv_cache="f32")
    compile_bundle(str(path), None, recipe, tmp_path / "bundle", quiet=True)
    model = Bundle.load(tmp_path / "bundle").target
    ids = [int(x) for x in np.random.default_rng(3).integers(2, 300, size=30)]
    with torch.no_grad():
        expected = load_reference(folder)(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(model.verify(ids), expected, atol=2e-4, rtol=0)
    model.reset()
    np.testing.assert_allclose(model.prefill(ids[:5]), expected[4], atol=2e-4, rtol=0)
    for i in range(5, len(ids)):
        np.testing.assert_allclose(model.decode(ids[i]), expected[i], atol=2e-4, rtol=0)


GEMMA3_PATTERNS = {  # metadata llama.cpp's gemma3 loader reads -> (layer kinds, local rope base)
    "defaults": ({}, "SSSSSF", 10000.0),
    "count": ({"gemma3.attention.sliding_window_pattern": 3, "gemma3.rope.freq_base_swa": 5000.0}, "SSFSSF", 5000.0),
    "flags": ({"gemma3.attention.sliding_window_pattern": [True, False, True, True, True, False]}, "SFSSSF", 10000.0),
    "no window": ({"gemma3.attention.sliding_window": None}, "FFFFFF", 10000.0),
}


@pytest.mark.parametrize("case", list(GEMMA3_PATTERNS))
def test_gemma3_gguf_layer_pattern_and_local_rope_base(case, tmp_path):
    from air.compiler.spec import FULL, SLIDING

    metadata, kinds, local_base = GEMMA3_PATTERNS[case]
    folder = make_checkpoint(tmp_path / "gemma3", "gemma3", layers=6, head_dim=16, tied=True, sliding_window=8,
                             query_pre_attn_scalar=16, seed=5)
    spec = load_checkpoint(write_gguf(folder, tmp_path / "g.gguf", metadata=metadata)).spec
    assert spec.layer_types == tuple({"S": SLIDING, "F": FULL}[k] for k in kinds)
    assert spec.rope_local_theta == local_base


@pytest.mark.parametrize("pattern", [0, "six"])
def test_gemma3_gguf_with_a_bad_layer_pattern_is_refused(pattern, tmp_path):
    folder = make_checkpoint(tmp_path / "gemma3", "gemma3", layers=6, head_dim=16, tied=True, sliding_window=8, seed=5)
    path = write_gguf(folder, tmp_path / "g.gguf", metadata={"gemma3.attention.sliding_window_pattern": pattern})
    result = CliRunner().invoke(main, ["compile", "--target-model", str(path), "--recipe", "host",
                                       "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "sliding_window_pattern" in lines[0] and repr(pattern) in lines[0], result.output
    assert not (tmp_path / "out").exists()


def test_phi4_mini_gguf_bundle_generates_the_folders_greedy_tokens(tmp_path):
    """A Phi-4-mini (phi3: fused qkv and gate/up, longrope factors as tensors, partial rotary)
    GGUF: the bundle's greedy tokens are transformers' on the source folder, past the longrope
    switch to the long factors (original context 32)."""
    from checkpoints import load_reference

    from air.compiler.build import compile_bundle
    from air.compiler.recipe import load_recipe

    folder = make_checkpoint(tmp_path / "phi4-mini", seed=11, **PHI3_VARIANTS["phi4-mini"])
    path = write_gguf(folder, tmp_path / "phi4-mini.gguf")
    recipe = load_recipe("host").with_overrides(max_context=64, quantization="f32", kv_cache="f32")
    compile_bundle(str(path), None, recipe, tmp_path / "bundle", quiet=True)
    bundle = Bundle.load(tmp_path / "bundle")
    bundle.eos_token_ids = set()
    prompt = [int(x) for x in np.random.default_rng(5).integers(3, 300, size=12)]
    with torch.no_grad():
        expected = load_reference(folder).generate(torch.tensor([prompt]), max_new_tokens=28, min_new_tokens=28,
                                                   do_sample=False)[0, len(prompt):].tolist()
    assert bundle.generate(prompt_ids=prompt, max_tokens=28, speculate=0).tokens == expected
