"""The kernel layer: hand-written TIR kernels and the numpy packing of the weights they read.

  common     tiles, vectors, prefetch, the serial-or-parallel fork, the remainder-row dispatch
  isa        the 4-byte integer dot products of each CPU (VNNI, AVX-512BW, AVX2, sdot, generic)
  layout     PackedLayout: where each weight of a q8 / q4 matrix lives
  packing    numpy: weights into the kernels' layouts (every format), activations' int8 model
  dense      f32 / f16 matmul
  packed     q8 / q4 matmul and the activation quantizer
  norms      RMSNorm (with the residual add, float or int8 output), SwiGLU, per-head norms
  attention  RoPE, cache append and attention for a KVLayout
  kv_codecs  per KV-cache dtype: store, score, accumulate
  embedding  table lookups (dense and packed) and the last-row selection
  cache      @cached_kernel: every builder's PrimFunc parsed once, kept in process and on disk
"""
