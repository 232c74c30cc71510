"""One decoder definition (tvm.relax.frontend.nn) for every supported family.

Parameter names follow the Hugging Face checkpoints (tensor_map.py lists each one's sources).
The exported functions prefill, decode and verify (signature: runtime/contract.py's
function_inputs) share one forward pass. Each writes the new keys and values into the
runtime's cache tensors in place, through the KV layout's kernels (kernels/attention.py).
"""

from __future__ import annotations

import inspect

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from air.runtime.contract import CAPACITY, FUNCTIONS, function_inputs

from .kernels.attention import append_kernel, attention_kernel
from .kernels.embedding import last_row_kernel
from .kv_layouts import KVLayout
from .layers import Embedding, Linear, RMSNorm, WeightFormat, head_norms, softcap, swiglu
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
        self.fmt, self.activation = fmt, spec.activation
        width = s.intermediate_size
        self.gate_up_proj = Linear(s.hidden_size, 2 * width, s.mlp_bias, fmt,
                                   parts=(("gate_proj", width), ("up_proj", width)))
        self.down_proj = Linear(s.intermediate_size, s.hidden_size, s.mlp_bias, fmt)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_up_proj(x), self.fmt, self.activation))


class DecoderLayer(nn.Module):
    """With sandwich_norms (Gemma 3) the attention and MLP outputs are normed before they are
    added to the residual stream: post_attention_layernorm then norms the attention output, and
    pre_feedforward_layernorm is the norm before the MLP."""

    def __init__(self, spec: DecoderSpec, fmt: WeightFormat):
        width, eps = spec.hidden_size, spec.rms_norm_eps
        self.sandwich = spec.sandwich_norms
        self.input_layernorm = RMSNorm(width, eps, fmt)
        self.self_attn = Attention(spec, fmt)
        self.post_attention_layernorm = RMSNorm(width, eps, None if self.sandwich else fmt)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(width, eps, fmt)
            self.post_feedforward_layernorm = RMSNorm(width, eps, None)
        self.mlp = MLP(spec, fmt)

    def forward(self, x, delta, cache, layer, start_pos, inv_freq, kv):
        """x: the residual stream; delta: what the previous layer adds to it (None before the
        first), added inside the norm's kernel. Returns (x, this layer's delta, cache)."""
        if delta is None:
            h = self.input_layernorm(x)
        else:
            x, h = self.input_layernorm(x, delta)
        attn_out, cache = self.self_attn(h, cache, layer, start_pos, inv_freq, kv)
        if not self.sandwich:
            x, h = self.post_attention_layernorm(x, attn_out)
            return x, self.mlp(h), cache
        x, h = self.pre_feedforward_layernorm(x, self.post_attention_layernorm(attn_out))
        return x, self.post_feedforward_layernorm(self.mlp(h)), cache


class Backbone(nn.Module):
    def __init__(self, spec: DecoderSpec, fmt: WeightFormat, head_fmt: WeightFormat):
        self.embed_tokens = Embedding(spec.vocab_size, spec.hidden_size, head_fmt, spec.embedding_scale)
        self.layers = nn.ModuleList([DecoderLayer(spec, fmt) for _ in range(spec.num_layers)])
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, head_fmt)  # feeds the LM head


class CausalLM(nn.Module):
    """`kv`: the recipe's cache layout; its groups() say which cache tensors each layer uses
    (one pair for most families; Gemma 3's sliding and full layers each have their own).
    `head_fmt`: the token table's and LM head's format (default: the layers' `fmt`)."""

    def __init__(self, spec: DecoderSpec, kv: KVLayout, fmt: WeightFormat, head_fmt: WeightFormat | None = None):
        self.spec = spec
        self.kv = kv
        self.groups = kv.groups()
        self.model = Backbone(spec, fmt, head_fmt or fmt)
        if not spec.tie_word_embeddings:
            self.lm_head = Linear(spec.hidden_size, spec.logit_rows, False, head_fmt or fmt)
        # Built by the compiler from the config (not checkpoint tensors).
        self.rope_inv_freq = nn.Parameter((spec.rotary_dim // 2,), "float32")
        if spec.rope_local_theta is not None:
            self.rope_local_inv_freq = nn.Parameter((spec.rotary_dim // 2,), "float32")
        cache_spec = kv.cache_spec()
        for function, body in (("prefill", self._prefill), ("decode", self._forward), ("verify", self._forward)):
            setattr(self, function, _method(function_inputs(function, cache_spec), body))

    def _residual(self, tokens, caches, start_pos):
        """The residual stream after the last layer, as (x, last delta): the final norm adds them."""
        x, delta = self.model.embed_tokens.lookup(tokens), None
        caches = [tuple(caches[2 * g:2 * g + 2]) for g in range(len(self.groups))]  # (data, scales) per group
        for index, layer in enumerate(self.model.layers):
            g, slot = self.kv.locate(index)
            inv_freq = self.rope_local_inv_freq if self.spec.sliding(index) else self.rope_inv_freq
            x, delta, caches[g] = layer(x, delta, caches[g], slot, start_pos, inv_freq, self.groups[g])
        return x, delta

    def _logits(self, x, delta):
        _, hidden = self.model.norm(x, delta)
        if self.spec.tie_word_embeddings:
            logits = self.model.embed_tokens.as_lm_head(hidden)
        else:
            logits = self.lm_head(hidden)
        cap = self.spec.final_logit_softcap
        return logits if cap is None else softcap(logits, cap)

    # The arguments are contract.function_inputs' (only tensors, so TVM RPC can call them):
    # the tokens, every group's cache tensors, start.
    def _prefill(self, tokens, *rest):
        x, delta = self._residual(tokens, rest[:-1], rest[-1])
        last_row = last_row_kernel(self.spec.hidden_size)
        width = self.spec.hidden_size
        x, delta = (op.tensor_ir_op(last_row, "last_row", [t], nn.Tensor.placeholder((1, width), "float32"))
                    for t in (x, delta))
        return self._logits(x, delta)

    def _forward(self, tokens, *rest):
        """decode and verify: the logits of every row."""
        return self._logits(*self._residual(tokens, rest[:-1], rest[-1]))

    def export_spec(self) -> dict:
        kv = self.kv.cache_spec()
        # Each group's capacity is its own symbolic dimension (one name would make them one).
        capacity = {t.name: CAPACITY if g == 0 else f"{CAPACITY}_{g}" for g, group in enumerate(kv.groups)
                    for t in group.tensors}
        spec = {}
        for function in FUNCTIONS:
            spec[function] = {arg.name: nn.spec.Tensor([capacity[arg.name] if d == CAPACITY else d for d in arg.shape],
                                                       arg.dtype) for arg in function_inputs(function, kv)}
            spec[function]["$"] = {"param_mode": "plain", "effect_mode": "none"}
        return spec


def _method(arguments, body):
    """body(*tensors) with a signature naming `arguments`: nn's exporter matches a method's
    argument names to the spec, and the number of cache tensors depends on the model."""
    def method(*tensors):
        return body(*tensors)
    parameter = inspect.Parameter.POSITIONAL_OR_KEYWORD
    method.__signature__ = inspect.Signature([inspect.Parameter(arg.name, parameter) for arg in arguments])
    return method
