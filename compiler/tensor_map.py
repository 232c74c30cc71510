"""Which checkpoint tensors each compiled parameter is made from, written out per family.

Names on the left are the compiled model's (model.py); on the right the checkpoint's, in
Hugging Face naming (a GGUF loader renames blk.0.attn_q.weight and the like to these names
before they get here). A parameter with several sources stacks them along the output rows:
the fused q/k/v and gate/up layers. A family whose checkpoint already fuses them (Phi-3's
qkv_proj, gate_up_proj) lists one source; one with extra norms (Gemma 3) lists those too.

`matrices` are weight matrices, keyed by layer: weights.py packs them into the layer's
"tiles" (f32, f16) or "qs" and "scales" (q8, q4). `vectors` (norms, biases) are keyed by
parameter name and stored as they are, except those in `unit_offset` (Gemma's norms, which
scale by 1 + w): stored as 1 + w, computed in f32 as transformers computes it, so exactly.
"""

from __future__ import annotations

import dataclasses

from .spec import DecoderSpec

Sources = tuple[tuple[str, tuple[int, ...]], ...]  # (checkpoint tensor, its shape), stacked in order


@dataclasses.dataclass(frozen=True)
class TensorMap:
    matrices: dict[str, Sources]
    vectors: dict[str, Sources]
    unit_offset: frozenset[str] = frozenset()

    def all_sources(self) -> Sources:
        return tuple(source for group in (self.matrices, self.vectors) for sources in group.values() for source in sources)


def _hf_decoder(s: DecoderSpec, fused: bool = False) -> TensorMap:
    """Llama, Mistral, Qwen2, Qwen3 and Gemma 3: separate q/k/v and gate/up projections. `fused` (Phi-3):
    the checkpoint already stacks them as one qkv_proj (the query heads' rows, then the key
    heads', then the value heads', the grouped-query split of our own qkv_proj) and one
    gate_up_proj (gate rows, then up rows)."""
    hidden, q_rows, kv_rows, width = s.hidden_size, s.num_heads * s.head_dim, s.kv_width, s.intermediate_size
    matrices: dict[str, Sources] = {"model.embed_tokens": (("model.embed_tokens.weight", (s.vocab_size, hidden)),)}
    vectors: dict[str, Sources] = {"model.norm.weight": (("model.norm.weight", (hidden,)),)}
    for i in range(s.num_layers):
        layer, attn, mlp = f"model.layers.{i}", f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        qkv = (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows))
        gate_up = (("gate_proj", width), ("up_proj", width))
        if fused:
            matrices[f"{attn}.qkv_proj"] = ((f"{attn}.qkv_proj.weight", (q_rows + 2 * kv_rows, hidden)),)
            matrices[f"{mlp}.gate_up_proj"] = ((f"{mlp}.gate_up_proj.weight", (2 * width, hidden)),)
        else:
            matrices[f"{attn}.qkv_proj"] = tuple((f"{attn}.{part}.weight", (rows, hidden)) for part, rows in qkv)
            matrices[f"{mlp}.gate_up_proj"] = tuple((f"{mlp}.{part}.weight", (rows, hidden)) for part, rows in gate_up)
        matrices[f"{attn}.o_proj"] = ((f"{attn}.o_proj.weight", (hidden, q_rows)),)
        matrices[f"{mlp}.down_proj"] = ((f"{mlp}.down_proj.weight", (hidden, width)),)
        sandwich = ("pre_feedforward_layernorm", "post_feedforward_layernorm") if s.sandwich_norms else ()
        for norm in ("input_layernorm", "post_attention_layernorm", *sandwich):
            vectors[f"{layer}.{norm}.weight"] = ((f"{layer}.{norm}.weight", (hidden,)),)
        if s.qk_norm:
            for norm in ("q_norm", "k_norm"):
                vectors[f"{attn}.{norm}.weight"] = ((f"{attn}.{norm}.weight", (s.head_dim,)),)
        if s.qkv_bias:
            vectors[f"{attn}.qkv_proj.bias"] = tuple((f"{attn}.{part}.bias", (rows,)) for part, rows in qkv)
        if s.o_bias:
            vectors[f"{attn}.o_proj.bias"] = ((f"{attn}.o_proj.bias", (hidden,)),)
        if s.mlp_bias:
            vectors[f"{mlp}.gate_up_proj.bias"] = tuple((f"{mlp}.{part}.bias", (rows,)) for part, rows in gate_up)
            vectors[f"{mlp}.down_proj.bias"] = ((f"{mlp}.down_proj.bias", (hidden,)),)
    if not s.tie_word_embeddings:
        matrices["lm_head"] = (("lm_head.weight", (s.vocab_size, hidden)),)
    offset = frozenset(name for name in vectors if name.endswith("norm.weight")) if s.unit_offset_norms else frozenset()
    return TensorMap(matrices, vectors, offset)


# Architecture (config.json "architectures") -> its mapping; spec.FAMILIES lists the same names.
FAMILY_TENSORS = {
    "LlamaForCausalLM": _hf_decoder,
    "MistralForCausalLM": _hf_decoder,
    "Qwen2ForCausalLM": _hf_decoder,
    "Qwen3ForCausalLM": _hf_decoder,
    "Phi3ForCausalLM": lambda s: _hf_decoder(s, fused=True),
    "Gemma3ForCausalLM": _hf_decoder,
}


def tensor_map(spec: DecoderSpec) -> TensorMap:
    return FAMILY_TENSORS[spec.architecture](spec)
