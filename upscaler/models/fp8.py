"""FP8 linear layers for the DiT (``precision = "fp8"``), opt-in.

Weights are quantised once, at load, to e4m3 with one fp32 scale per output channel; activations per
row (token) to e4m3 with one fp32 scale per row, by the kernel that produces them where that kernel is
ours (the layer norms: :func:`kernels.layer_norm.add_layer_norm` with ``fp8=True``; the FFN's GELU:
:func:`kernels.fp8_quant.quantise_rows` with ``gelu=True``), else by one stand-alone pass (the attention
outputs before ``o``). The product runs as ``torch._scaled_mm`` with rowwise scales on CUDA GPUs with FP8
tensor cores (compute capability >= 8.9); everywhere else (the CPU, older GPUs) the same roundings are
emulated: quantise, dequantise, fp32 matrix product; so quality checks and tests run anywhere.

Layer groups (``fp8_layers``): ``self_qkv`` (self-attention q/k/v, one product of their stacked weights),
``self_o``, ``cross_q``, ``cross_o``, ``ffn_up``, ``ffn_down``. The cross-attention's k/v run once per prompt
and stay in the model dtype. ``ffn_fused`` (with both FFN groups, opt-in) has the up projection's product
write the down projection's input in e4m3 with one scale per 128 values of a row
(:mod:`kernels.fp8_ffn_up`), and the down projection multiply with those block scales and 128x128 weight
tiles (``torch._scaled_mm``'s block scaling, cuBLAS on sm_90): the 8960-wide hidden activations are written
once, in e4m3, and not read again by a quantising pass. The list may also name the LQ projection's convs
(``lq_conv1``, ``lq_conv2``): :mod:`upscaler.models.lq_proj_fp8`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.settings import DIT_FP8_GROUPS, FFN_FUSED, FP8_LAYER_GROUPS

log = logging.getLogger(__name__)

SCALED_MM_MIN_CAPABILITY = (8, 9)
BLOCK_SCALED_MM_CAPABILITY = (9, 0)  # cuBLAS's 1x128 / 128x128 block scaling runs on sm_90 only
SCALE_STRIDE_MULTIPLES = (1, 4)  # row strides of weight-tile scales that PyTorch releases take (packed; 16 bytes)


@dataclass(frozen=True)
class QuantisedRows:
    """Activations quantised per row: ``data`` e4m3 ``(..., K)``, ``scale`` fp32 ``(..., 1)``."""

    data: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.data.shape


@dataclass(frozen=True)
class BlockScaledLayout:
    """How this PyTorch and cuBLAS take a block-scaled product (:func:`block_scaled_mm_layout`): the multiple
    the 128x128 weight-tile scales' row stride is rounded up to, and whether the bias runs in the product's
    epilogue (else one add after it)."""

    scale_stride_multiple: int = 1
    bias_in_product: bool = True


@dataclass(frozen=True)
class QuantisedBlocks:
    """Activations quantised in blocks of 128 along each row: ``data`` e4m3 ``(..., K)``, ``scale`` fp32
    ``(rows, K / 128)`` over the flattened rows, stride ``(1, rows)`` (the layout cuBLAS reads)."""

    data: torch.Tensor
    scale: torch.Tensor


def scaled_mm_supported(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` runs FP8 products with rowwise scales and a bias on ``device``: a GPU
    with FP8 tensor cores, and one small product that runs and matches the emulated one (a PyTorch build
    without the rowwise kernels refuses it; the emulated path then runs, with a warning)."""
    if not (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= SCALED_MM_MIN_CAPABILITY):
        return False
    from kernels.fp8_quant import quantise_rows_torch

    g = torch.Generator(device="cpu").manual_seed(0)
    x, weight = (torch.randn(shape, generator=g).to(device, torch.bfloat16) for shape in ((32, 64), (48, 64)))
    bias = torch.randn(48, generator=g).to(device, torch.bfloat16)
    (a, a_scale), (w, w_scale) = quantise_rows_torch(x), quantise_rows_torch(weight)
    w_scale = w_scale.reshape(1, -1).contiguous()
    try:
        got = torch._scaled_mm(a, w.t(), scale_a=a_scale, scale_b=w_scale, bias=bias, out_dtype=torch.bfloat16)
    except (RuntimeError, TypeError) as exc:
        log.warning("torch._scaled_mm with rowwise scales is not available here (%s); FP8 linears are emulated "
                    "(not faster): use a PyTorch build with FP8 rowwise kernels, or precision = \"bf16\"",
                    str(exc).splitlines()[0])
        return False
    want = emulated_scaled_mm(a, a_scale, w, w_scale, bias, torch.bfloat16)
    error = float((got.float() - want.float()).norm() / want.float().norm())
    if error > 1e-2:
        log.warning("torch._scaled_mm disagrees with the emulated FP8 product (relative error %.3g); "
                    "FP8 linears are emulated", error)
        return False
    return True


def block_scaled_mm_layout(device: torch.device) -> BlockScaledLayout | None:
    """How ``torch._scaled_mm`` multiplies with 1x128 activation blocks and 128x128 weight tiles on ``device``
    (it needs cuBLAS 12.9+ on sm_90 and PyTorch 2.9+), or None where it does not. PyTorch releases differ in
    the row stride they take for the tile scales (packed, or padded to 16 bytes), and a cuBLAS may refuse the
    bias epilogue with block scales: each layout is tried on one small product, with the bias in the product
    first, and checked against the emulated one."""
    if device.type != "cuda":
        return None
    from kernels.fp8_quant import quantise_blocks_torch

    g = torch.Generator(device="cpu").manual_seed(0)
    x, weight = (torch.randn(shape, generator=g).to(device, torch.bfloat16) for shape in ((64, 384), (128, 384)))
    bias = torch.randn(128, generator=g).to(device, torch.bfloat16)
    a, a_scale = quantise_blocks_torch(x)
    refusals = []
    for multiple in SCALE_STRIDE_MULTIPLES:  # 3 tiles along K: packed and padded strides differ
        for bias_in_product in (True, False):
            layout = BlockScaledLayout(multiple, bias_in_product)
            layer = FP8BlockLinear(_linear_of(weight, bias), use_scaled_mm=True, layout=layout)
            try:
                got = layer(QuantisedBlocks(a, a_scale))
            except (RuntimeError, TypeError, ValueError) as exc:
                refusals.append(f"{layout}: {str(exc).splitlines()[0]}")
                continue
            want = emulated_block_scaled_mm(a, a_scale, layer.weight, layer.tile_scales(), bias, torch.bfloat16)
            error = float((got.float() - want.float()).norm() / want.float().norm())
            if error <= 1e-2:
                return layout
            refusals.append(f"{layout}: relative error {error:.3g} against the emulated product")
    log.warning("torch._scaled_mm with block scales does not run here (%s); fp8_layers %r is off, the FFN runs as "
                "two rowwise products: use PyTorch 2.9+ built with CUDA 12.9+ on an sm_90 GPU",
                "; ".join(refusals), FFN_FUSED)
    return None


def _linear_of(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    linear.weight, linear.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    return linear


def quantise(x: torch.Tensor, *, gelu: bool = False) -> QuantisedRows:
    """Quantise the rows of ``x`` (``gelu``: of ``gelu_tanh(x)``): one Triton pass on CUDA, PyTorch elsewhere."""
    if x.is_cuda:
        from kernels.fp8_quant import quantise_rows
    else:
        from kernels.fp8_quant import quantise_rows_torch as quantise_rows
    return QuantisedRows(*quantise_rows(x, gelu=gelu))


class FP8Linear(nn.Module):
    """An ``nn.Linear`` whose product runs in FP8; takes model-dtype activations or :class:`QuantisedRows`,
    returns the bias dtype (the model dtype)."""

    def __init__(self, linear: nn.Linear, *, use_scaled_mm: bool, fast_accum: bool = False) -> None:
        super().__init__()
        from kernels.fp8_quant import quantise_rows_torch

        weight, weight_scale = quantise_rows_torch(linear.weight.detach())
        self.register_buffer("weight", weight)  # (N, K) e4m3, one scale per output channel
        self.register_buffer("weight_scale", weight_scale.reshape(1, -1).contiguous())  # (1, N) fp32
        self.register_buffer("bias", linear.bias.detach() if linear.bias is not None else None)
        self.out_dtype = linear.weight.dtype
        self.use_scaled_mm = use_scaled_mm
        self.fast_accum = fast_accum  # only the tensor-core product has it; the emulated one is exact fp32

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor | QuantisedRows) -> torch.Tensor:
        rows = x if isinstance(x, QuantisedRows) else quantise(x)
        lead = rows.data.shape[:-1]
        a = rows.data.reshape(-1, self.in_features)
        a_scale = rows.scale.reshape(-1, 1)
        if self.use_scaled_mm:
            out = torch._scaled_mm(a, self.weight.t(), scale_a=a_scale, scale_b=self.weight_scale, bias=self.bias,
                                   out_dtype=self.out_dtype, use_fast_accum=self.fast_accum)
        else:
            out = emulated_scaled_mm(a, a_scale, self.weight, self.weight_scale, self.bias, self.out_dtype)
        return out.unflatten(0, lead)

    def gelu_blocks(self, x: torch.Tensor | QuantisedRows) -> QuantisedBlocks:
        """``gelu_tanh(self(x))`` quantised in 1x128 blocks by the product's own epilogue
        (:mod:`kernels.fp8_ffn_up`) where the tensor-core path runs, else with the same roundings in PyTorch."""
        rows = x if isinstance(x, QuantisedRows) else quantise(x)
        a = rows.data.reshape(-1, self.in_features)
        if self.use_scaled_mm:
            from kernels.fp8_ffn_up import up_gelu_quantise as up_gelu
        else:
            from kernels.fp8_ffn_up import up_gelu_quantise_torch as up_gelu
        data, scale = up_gelu(a, rows.scale.reshape(-1), self.weight, self.weight_scale, self.bias)
        return QuantisedBlocks(data.unflatten(0, rows.data.shape[:-1]), scale)


class FP8BlockLinear(nn.Module):
    """An ``nn.Linear`` whose product runs in FP8 with block scales: its weight in 128x128 tiles, each with one
    scale, its input :class:`QuantisedBlocks`; returns the bias dtype (the model dtype). The tile scales'
    rows and the bias go to ``torch._scaled_mm`` as it takes them here (``layout``,
    :func:`block_scaled_mm_layout`)."""

    def __init__(self, linear: nn.Linear, *, use_scaled_mm: bool,
                 layout: BlockScaledLayout = BlockScaledLayout()) -> None:
        super().__init__()
        from kernels.fp8_quant import quantise_tiles_torch

        weight, tile_scales = quantise_tiles_torch(linear.weight.detach())
        tiles_n, tiles_k = tile_scales.shape
        multiple = layout.scale_stride_multiple
        stored = tile_scales.new_zeros(tiles_n, -(-tiles_k // multiple) * multiple)
        stored[:, :tiles_k] = tile_scales
        self.register_buffer("weight", weight)  # (N, K) e4m3
        self.register_buffer("weight_scale", stored)  # (N / 128, K / 128 rounded up to the multiple) fp32
        self.register_buffer("bias", linear.bias.detach() if linear.bias is not None else None)
        self.out_dtype = linear.weight.dtype
        self.use_scaled_mm = use_scaled_mm
        self.layout = layout
        self.tiles_k = tiles_k

    def tile_scales(self) -> torch.Tensor:
        """The ``(N / 128, K / 128)`` tile scales (a view of the stored ones)."""
        return self.weight_scale[:, :self.tiles_k]

    def forward(self, x: QuantisedBlocks) -> torch.Tensor:
        lead = x.data.shape[:-1]
        a = x.data.reshape(-1, self.weight.shape[1])
        if self.use_scaled_mm:
            in_product = self.layout.bias_in_product
            out = torch._scaled_mm(a, self.weight.t(), scale_a=x.scale, scale_b=self.tile_scales().t(),
                                   bias=self.bias if in_product else None, out_dtype=self.out_dtype)
            if not in_product and self.bias is not None:
                out += self.bias
        else:
            out = emulated_block_scaled_mm(a, x.scale, self.weight, self.tile_scales(), self.bias, self.out_dtype)
        return out.unflatten(0, lead)


def emulated_scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                       bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``torch._scaled_mm``'s result computed in fp32: ``(a @ weight^T) * a_scale * weight_scale + bias``."""
    out = (a.float() @ weight.float().t()) * a_scale * weight_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def emulated_block_scaled_mm(a: torch.Tensor, a_scale: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                             bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``torch._scaled_mm``'s block-scaled result computed in fp32: ``a`` dequantised with its 1x128 block scales
    ``(M, K / 128)``, ``weight`` with its 128x128 tile scales ``(N / 128, K / 128)``, multiplied, plus ``bias``."""
    from kernels.fp8_quant import BLOCK, dequantise_blocks_torch

    a_full = dequantise_blocks_torch(a, a_scale)
    w_full = weight.float() * weight_scale.float().repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    out = a_full @ w_full.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def feed_forward_fp8(up: nn.Module, down: nn.Module, x: torch.Tensor | QuantisedRows) -> torch.Tensor:
    """``down(gelu_tanh(up(x)))`` where ``up`` and/or ``down`` is an :class:`FP8Linear`: the GELU runs in
    the quantising pass of the down projection's input when ``down`` is FP8, or in the up projection's own
    epilogue when ``down`` takes block scales (``ffn_fused``)."""
    if isinstance(down, FP8BlockLinear):
        return down(up.gelu_blocks(x))
    hidden = up(x)
    if isinstance(down, FP8Linear):
        return down(quantise(hidden, gelu=True))
    return down(F.gelu(hidden, approximate="tanh"))


def _targets(block: nn.Module, group: str) -> list[tuple[nn.Module, tuple[str, ...], str]]:
    """(parent, source linears, target attribute) of each FP8 product of ``group`` in one DiT block: the
    self-attention's q, k and v become one product of their stacked weights (``qkv``)."""
    return {
        "self_qkv": [(block.self_attn, ("q", "k", "v"), "qkv")],
        "self_o": [(block.self_attn, ("o",), "o")],
        "cross_q": [(block.cross_attn, ("q",), "q")],
        "cross_o": [(block.cross_attn, ("o",), "o")],
        "ffn_up": [(block.ffn, ("0",), "0")],
        "ffn_down": [(block.ffn, ("2",), "2")],
    }[group]


def stacked_linear(linears: list[nn.Linear]) -> nn.Linear:
    """One ``nn.Linear`` whose output is the outputs of ``linears`` (same input width) side by side; a single
    linear is returned as it is. Rowwise weight scales make its FP8 product equal to the separate ones."""
    if len(linears) == 1:
        return linears[0]
    first = linears[0]
    if any(linear.in_features != first.in_features for linear in linears):
        raise ValueError(f"cannot stack linears of input widths {[linear.in_features for linear in linears]}")
    stacked = nn.Linear(first.in_features, sum(linear.out_features for linear in linears),
                        bias=first.bias is not None, device="meta")
    stacked.weight = nn.Parameter(torch.cat([linear.weight.detach() for linear in linears]), requires_grad=False)
    if first.bias is not None:
        stacked.bias = nn.Parameter(torch.cat([linear.bias.detach() for linear in linears]), requires_grad=False)
    return stacked


def convert_dit_linears(dit: nn.Module, groups: Iterable[str], *, fast_accum: bool = False) -> frozenset[str]:
    """Replace the linears of ``groups`` in every block of ``dit`` by :class:`FP8Linear` (weights
    quantised now, the model-dtype weights released; ``fast_accum``: products without fp32 promotion)
    and tell each block which of its inputs to quantise; logs once which product path runs. Returns the
    groups converted."""
    unknown = set(groups) - set(FP8_LAYER_GROUPS)
    if unknown:
        raise ValueError(f"unknown FP8 layer groups {sorted(unknown)}; choose from {FP8_LAYER_GROUPS}")
    chosen = frozenset(groups) & {*DIT_FP8_GROUPS, FFN_FUSED}
    if FFN_FUSED in chosen and not {"ffn_up", "ffn_down"} <= chosen:
        raise ValueError(f"FP8 layer group {FFN_FUSED!r} fuses the FFN's two FP8 products: add 'ffn_up' and 'ffn_down'")
    device = next(dit.parameters()).device
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < SCALED_MM_MIN_CAPABILITY:
        # our quantising kernels store e4m3, which Triton compiles only from sm_89 on
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"precision = \"fp8\" needs a GPU of compute capability 8.9 or newer (H100, H200, L40, "
                         f"RTX 4090); {torch.cuda.get_device_name(device)} is {major}.{minor}: set precision = \"bf16\"")
    use_scaled_mm = scaled_mm_supported(device)
    if use_scaled_mm and dit.dtype != torch.bfloat16:
        log.warning("FP8 products with rowwise scales write bf16, the model runs in %s: FP8 linears are emulated "
                    "(not faster); set dtype = \"bf16\" with precision = \"fp8\"", str(dit.dtype).removeprefix("torch."))
        use_scaled_mm = False
    ffn_dim, dim = dit.blocks[0].ffn[0].weight.shape
    block_layout = ffn_fused_layout(dim, ffn_dim, use_scaled_mm, device) if FFN_FUSED in chosen else None
    if block_layout is None:
        chosen -= {FFN_FUSED}
    converted = 0
    for block in dit.blocks:
        for group in DIT_FP8_GROUPS:
            if group not in chosen:
                continue
            for parent, sources, target in _targets(block, group):
                linear = stacked_linear([getattr(parent, name) for name in sources])
                for name in sources:
                    setattr(parent, name, None)  # the model-dtype weights go
                if group == "ffn_down" and FFN_FUSED in chosen:
                    setattr(parent, target, FP8BlockLinear(linear, use_scaled_mm=use_scaled_mm, layout=block_layout))
                else:
                    setattr(parent, target, FP8Linear(linear, use_scaled_mm=use_scaled_mm, fast_accum=fast_accum))
                converted += len(sources)
        block.fp8_inputs = chosen
    if use_scaled_mm:
        fused = (f" ffn up writes e4m3 in 1x128 blocks, ffn down block-scaled (128x128 weight tiles, {block_layout})"
                 if FFN_FUSED in chosen else "")
        log.info("dit fp8 linears=%d groups=%s path=torch._scaled_mm (rowwise scales, FP8 tensor cores)%s "
                 "fast_accum=%s", converted, ",".join(sorted(chosen)), fused, fast_accum)
    else:
        log.info("dit fp8 linears=%d groups=%s path=emulated (quantise, dequantise, fp32 product: no FP8 tensor "
                 "cores on %s) - same roundings, not faster", converted, ",".join(sorted(chosen)),
                 _device_name(device))
    return chosen


def ffn_fused_layout(dim: int, ffn_dim: int, use_scaled_mm: bool, device: torch.device) -> BlockScaledLayout | None:
    """The block-scaled product's layout ``ffn_fused`` runs with here (FP8 linears on the tensor-core path or
    emulated, ``use_scaled_mm``), or None where it cannot run: both FFN widths must be multiples of
    128 (the blocks), and the tensor-core path needs an sm_90 GPU whose ``torch._scaled_mm`` takes block
    scales; says why not in the log."""
    from kernels.fp8_quant import BLOCK

    if dim % BLOCK or ffn_dim % BLOCK:
        log.warning("fp8_layers %r needs FFN widths that are multiples of %d, this model has %d and %d: it is off",
                    FFN_FUSED, BLOCK, dim, ffn_dim)
        return None
    if not use_scaled_mm:
        return BlockScaledLayout()  # emulated with the same roundings
    if torch.cuda.get_device_capability(device) != BLOCK_SCALED_MM_CAPABILITY:
        log.warning("fp8_layers %r needs cuBLAS's block scaling, which runs on sm_90 GPUs (H100, H200) only; %s "
                    "runs the FFN as two rowwise products", FFN_FUSED, _device_name(device))
        return None
    return block_scaled_mm_layout(device)


def _device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
