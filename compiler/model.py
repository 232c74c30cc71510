"""One decoder definition (tvm.relax.frontend.nn) for every supported family.

Parameter names follow the Hugging Face checkpoints (tensor_map.py lists each one's sources).
The exported functions prefill, decode and verify (signature: runtime/contract.py's
function_inputs) share one forward pass. Each writes the new keys and values into the
runtime's cache tensors in place, through the KV layout's kernels (kernels/attention.py).
"""

from __future__ import annotations

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from air.runtime.contract import FUNCTIONS, function_inputs

from .kernels.attention import append_kernel, attention_kernel
from .kernels.embedding import last_row_kernel
from .kv_layouts import KVLayout
from .layers import Embedding, Linear, RMSNorm, WeightFormat, head_norms, swiglu
from .spec import DecoderSpec


class Attention(nn.Module):
    def __init__(self, spec: DecoderSpec, fmt: WeightFormat):
        self.spec = spec
        s = spec
        q_rows, kv_rows = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        self.qkv_proj = Linear(s.hidden_size, q_rows + 2 * kv_rows, s.qkv_bias, fmt,
                               parts=(("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)))
        self.o_proj = Linear(s.num_heads * s.head_dim, s.hidden_size, s.o_bias, fmt)
        if s.qk_norm:
            self.q_norm = RMSNorm(s.head_dim, s.rms_norm_eps, None)
            self.k_norm = RMSNorm(s.head_dim, s.rms_norm_eps, None)

    def forward(self, x, cache, layer: int, start_pos, inv_freq, kv: KVLayout):
        s = self.spec
        qkv = self.qkv_proj(x)  # x: f32 rows or QuantizedRows
        n = qkv.shape[0]
        # [n, heads + 2 kv_heads, head_dim]: the query heads, then the key heads, then the value
        # heads; the cache kernels read their heads from it in place.
        qkv = op.reshape(qkv, (n, s.num_heads + 2 * s.num_kv_heads, s.head_dim))
        if s.qk_norm:
            qkv = head_norms(qkv, self.q_norm, self.k_norm, s.num_heads, s.num_kv_heads)
        layer_index = tirx.IntImm("int64", layer)
        data, scales = cache
        # RoPE is applied inside the cache kernels (keys on append, queries in attention).
        cache = op.tensor_ir_inplace_op(
            append_kernel(kv), "kv_append", [qkv, inv_freq, data, scales, start_pos, layer_index], [2, 3],
            [nn.Tensor.placeholder(data.shape, data.dtype), nn.Tensor.placeholder(scales.shape, scales.dtype)],
        )
        attended = op.tensor_ir_op(
            attention_kernel(kv), "kv_attention", [qkv, inv_freq, *cache, start_pos, layer_index],
            nn.Tensor.placeholder((n, s.num_heads, s.head_dim), "float32"),
        )
        return self.o_proj(op.reshape(attended, (n, s.num_heads * s.head_dim))), cache


class MLP(nn.Module):
    def __init__(self, spec: DecoderSpec, fmt: WeightFormat):
        s = spec
        self.fmt = fmt
        width = s.intermediate_size
        self.gate_up_proj = Linear(s.hidden_size, 2 * width, s.mlp_bias, fmt,
                                   parts=(("gate_proj", width), ("up_proj", width)))
        self.down_proj = Linear(s.intermediate_size, s.hidden_size, s.mlp_bias, fmt)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_up_proj(x), self.fmt))


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec, fmt: WeightFormat):
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, fmt)
        self.self_attn = Attention(spec, fmt)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, fmt)
        self.mlp = MLP(spec, fmt)

    def forward(self, x, delta, cache, layer, start_pos, inv_freq, kv):
        """x: the residual stream; delta: what the previous layer adds to it (None before the
        first), added inside the norm's kernel. Returns (x, this layer's delta, cache)."""
        if delta is None:
            h = self.input_layernorm(x)
        else:
            x, h = self.input_layernorm(x, delta)
        attn_out, cache = self.self_attn(h, cache, layer, start_pos, inv_freq, kv)
        x, h = self.post_attention_layernorm(x, attn_out)
        return x, self.mlp(h), cache


class Backbone(nn.Module):
    def __init__(self, spec: DecoderSpec, fmt: WeightFormat):
        self.embed_tokens = Embedding(spec.vocab_size, spec.hidden_size, fmt)
        self.layers = nn.ModuleList([DecoderLayer(spec, fmt) for _ in range(spec.num_layers)])
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, fmt)


class CausalLM(nn.Module):
    def __init__(self, spec: DecoderSpec, kv: KVLayout, fmt: WeightFormat):
        self.spec = spec
        self.kv = kv
        self.model = Backbone(spec, fmt)
        if not spec.tie_word_embeddings:
            self.lm_head = Linear(spec.hidden_size, spec.logit_rows, False, fmt)
        # Built by the compiler from the config (not a checkpoint tensor).
        self.rope_inv_freq = nn.Parameter((spec.rotary_dim // 2,), "float32")

    def _residual(self, tokens, cache, start_pos):
        """The residual stream after the last layer, as (x, last delta): the final norm adds them."""
        x, delta = self.model.embed_tokens.lookup(tokens), None
        for index, layer in enumerate(self.model.layers):
            x, delta, cache = layer(x, delta, cache, index, start_pos, self.rope_inv_freq, self.kv)
        return x, delta

    def _logits(self, x, delta):
        _, hidden = self.model.norm(x, delta)
        if self.spec.tie_word_embeddings:
            return self.model.embed_tokens.as_lm_head(hidden)
        return self.lm_head(hidden)

    # The arguments are contract.function_inputs' (only tensors, so TVM RPC can call them).
    def prefill(self, tokens, cache_data, cache_scales, start):
        x, delta = self._residual(tokens, (cache_data, cache_scales), start)
        last_row = last_row_kernel(self.spec.hidden_size)
        width = self.spec.hidden_size
        x, delta = (op.tensor_ir_op(last_row, "last_row", [t], nn.Tensor.placeholder((1, width), "float32"))
                    for t in (x, delta))
        return self._logits(x, delta)

    def decode(self, token, cache_data, cache_scales, start):
        return self._logits(*self._residual(token, (cache_data, cache_scales), start))

    def verify(self, tokens, cache_data, cache_scales, start):
        return self._logits(*self._residual(tokens, (cache_data, cache_scales), start))

    def export_spec(self) -> dict:
        kv = self.kv.cache_spec()
        spec = {}
        for function in FUNCTIONS:
            spec[function] = {arg.name: nn.spec.Tensor(list(arg.shape), arg.dtype) for arg in function_inputs(function, kv)}
            spec[function]["$"] = {"param_mode": "plain", "effect_mode": "none"}
        return spec
