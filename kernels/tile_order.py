"""The order in which a product's programs take their output tiles (shared by our FP8 product kernels)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, row_tiles, col_tiles, GROUP_M: tl.constexpr):
    """``(row_tile, col_tile)`` of program ``pid``: ``GROUP_M`` row tiles run through every column tile
    together, so the weight tiles they share are read from L2 rather than memory."""
    group = pid // (GROUP_M * col_tiles)
    first_row_tile = group * GROUP_M
    rows_in_group = tl.minimum(row_tiles - first_row_tile, GROUP_M)
    row_tile = first_row_tile + (pid % (GROUP_M * col_tiles)) % rows_in_group
    col_tile = (pid % (GROUP_M * col_tiles)) // rows_in_group
    return row_tile, col_tile
