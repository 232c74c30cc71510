"""PackedLayout: where each weight of a q8 / q4 matrix lives. The numpy packing, the packed
matmul and the packed embedding lookup all address the arrays through it.

An nn.Linear weight [N, K]: output rows in tiles of TILE (the last padded), K in blocks of
BLOCK. Each (tile, block) is one packed row of `qbytes`; rows go chunk by chunk of K_CHUNK
blocks, within a chunk tile by tile, within a tile block by block, so that a core streams its
tiles' share of a chunk from one contiguous range.

  qs      uint8   [tiles * blocks, qbytes]   (q8: 512, q4: 256)
          q8: byte 64*j + 4*l + c holds row 16t+l, k = 32b + 4j + c            (j = 0..7)
          q4: byte 64*j + 4*l + c holds row 16t+l: low nibble k = 32b + 4j + c,
              high nibble k = 32b + 16 + 4j + c                                  (j = 0..3)
          so one OPERAND_BYTES load is one vpdpbusd operand: 16 rows (one i32 lane each) x 4 k.
  scales  float16 [tiles * groups, nscales]  (q8: d of the 16 rows; q4: their d, then their mn)
          one group per SCALE_BLOCKS blocks, in the same chunk-major order over (tile, group)
The same packed arrays serve every dot-product path, target and thread count.
"""

from __future__ import annotations

import dataclasses

from .common import TILE, tile_count

SCHEMES = ("q4", "q8")
BLOCK = 32  # weights and activations share one scale per 32 consecutive k
K_CHUNK = 32  # K blocks a matmul task walks per tile before the next tile (activations stay in L1)
OPERAND_BYTES = 64  # packed bytes per dot-product operand: TILE rows x 4 k
SCALE_BLOCKS = {"q8": 4, "q4": 1}  # blocks per scale group (K_CHUNK is a multiple)
_QBYTES = {"q8": 512, "q4": 256}  # packed bytes per tile and block
_NSCALES = {"q8": 16, "q4": 32}  # f16 scales per tile and group


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    scheme: str
    n: int  # output rows (out_features)
    k: int  # in_features, a multiple of BLOCK

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown weight quantization scheme '{self.scheme}' (known: {', '.join(SCHEMES)})")
        if self.n < 1 or self.k < 1 or self.k % BLOCK:
            raise ValueError(f"cannot quantize a [{self.n}, {self.k}] weight: K (in_features) must be a positive "
                             f"multiple of {BLOCK}, got {self.k}")

    @property
    def tiles(self) -> int:
        return tile_count(self.n)

    @property
    def full_tiles(self) -> int:
        return self.n // TILE

    @property
    def blocks(self) -> int:
        return self.k // BLOCK

    @property
    def scale_blocks(self) -> int:
        return SCALE_BLOCKS[self.scheme]

    @property
    def groups(self) -> int:
        return -(-self.blocks // self.scale_blocks)

    @property
    def group_chunk(self) -> int:
        """Scale groups per chunk of K."""
        return K_CHUNK // self.scale_blocks

    @property
    def chunks(self) -> int:
        return -(-self.blocks // K_CHUNK)

    @property
    def qbytes(self) -> int:
        return _QBYTES[self.scheme]

    @property
    def nscales(self) -> int:
        return _NSCALES[self.scheme]

    @property
    def shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The shapes of "qs" and "scales"."""
        return (self.tiles * self.blocks, self.qbytes), (self.tiles * self.groups, self.nscales)

    @property
    def nbytes(self) -> int:
        (qs_rows, _), (scale_rows, _) = self.shapes
        return qs_rows * self.qbytes + scale_rows * self.nscales * 2

    def first_block(self, chunk, tile, minimum):
        """The packed row of tile's first block in K chunk `chunk` (its others follow it).
        minimum: np.minimum, or T.min for the kernels (any int expressions work)."""
        return chunk * K_CHUNK * self.tiles + tile * minimum(K_CHUNK, self.blocks - chunk * K_CHUNK)

    def first_group(self, chunk, tile, minimum):
        """The scales row of tile's first scale group in K chunk `chunk`."""
        return chunk * self.group_chunk * self.tiles \
            + tile * minimum(self.group_chunk, self.groups - chunk * self.group_chunk)

    def block_row(self, tile, block, minimum):
        return self.first_block(block // K_CHUNK, tile, minimum) + block % K_CHUNK

    def group_row(self, tile, group, minimum):
        return self.first_group(group // self.group_chunk, tile, minimum) + group % self.group_chunk

    def byte_of(self, lane, w):
        """The byte of a packed row holding weight w (0 .. BLOCK-1) of tile row `lane`
        (for q4 the low nibble when w < 16, else the high one)."""
        if self.scheme == "q4":
            return OPERAND_BYTES * ((w % 16) // 4) + 4 * lane + w % 4
        return OPERAND_BYTES * (w // 4) + 4 * lane + w % 4
