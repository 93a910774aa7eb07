"""QLoRA: LoRA on top of a frozen base stored in 4-bit NormalFloat (Dettmers et al. 2023, arXiv:2305.14314).

Three ideas from the paper, each a function here:

1. **NF4 code values** (``nf4_code_values``): pre-trained weights are roughly normal, so the 16 levels
   of a 4-bit code are placed at quantiles of N(0, 1) rather than evenly: each level then receives about
   the same number of weights. To have an exact zero (padding, and weights that are exactly 0) the code is
   asymmetric: 8 positive levels, 7 negative and 0, scaled so the extremes are −1 and +1.
2. **Blockwise absmax quantisation** (``quantize_nf4``): the weights are cut into blocks of 64; each block
   is divided by its absolute maximum (so it lies in [−1, 1]) and every weight is replaced by the index
   of its nearest code value. Two 4-bit indices share one byte.
3. **Double quantisation**: the per-block absmax scales (one float32 per 64 weights = 0.5 bit/param) are
   themselves quantised to 8 bits in blocks of 256 (after subtracting their mean), leaving
   8/64 + 32/(64·256) = 0.127 bit/param of scale overhead: 4.127 bits per parameter in all.

``QuantizedLinear`` keeps only that packed form and dequantises in its forward pass (the base stays
frozen; gradients still flow through it to the input, and to LoRA's A and B on top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from minillm import backend as B
from minillm import functional as F
from minillm import nn
from minillm.peft.lora import LoRAConfig, apply_lora
from minillm.peft.surgery import matches, replace_module
from minillm.tensor import Tensor

NF4_BLOCK_SIZE = 64
SCALE_BLOCK_SIZE = 256

# ------------------------------------------------------------------ the inverse normal CDF, by hand
# Acklam's rational approximation of Φ⁻¹ (relative error < 1.15e-9), refined by one Halley step on
# Φ(x) − p computed with math.erfc: accurate to ~1e-15, no scipy needed.
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _ppf_scalar(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"norm_ppf: p must be in (0, 1), got {p}")
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1)
    elif p <= 1 - lo:
        q = p - 0.5
        r = q * q
        x = (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5]) * q / \
            (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1)
    else:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / \
            ((((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p  # Φ(x) − p
    u = e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)
    return x - u / (1 + x * u / 2)  # Halley's step


def norm_ppf(p) -> numpy.ndarray:
    """Φ⁻¹(p), the standard normal quantile function, elementwise (NumPy float64)."""
    p = numpy.asarray(p, dtype=numpy.float64)
    return numpy.vectorize(_ppf_scalar, otypes=[numpy.float64])(p)


def norm_cdf(x) -> numpy.ndarray:
    """Φ(x) = ½ erfc(−x/√2), elementwise (NumPy float64)."""
    x = numpy.asarray(x, dtype=numpy.float64)
    return numpy.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)), otypes=[numpy.float64])(x)


def nf4_code_values() -> numpy.ndarray:
    """The 16 NF4 levels, sorted, from −1 to 1 with an exact 0 (float32).

    QLoRA §3 builds a k-bit NormalFloat from quantiles of N(0, 1),
        q_i = ½ (Q_X(i / (2ᵏ + 1)) + Q_X((i + 1) / (2ᵏ + 1))),                       (QLoRA, eq. 4)
    and makes it asymmetric so that 0 is exactly representable: 2^(k−1) = 8 quantiles for the positive
    half and 2^(k−1) − 1 = 7 for the negative half, joined at one shared zero, then divided by the largest
    so the range is [−1, 1]. The outermost quantile is taken at δ = 1 − ½(1/(2·15) + 1/(2·16)) = 0.96771
    (the midpoint of the two halves' extreme quantile positions of eq. 4, as in the authors' bitsandbytes
    ``create_normal_map``) because Φ⁻¹(1) is infinite:
        positive: Φ⁻¹(p) for the 8 first of 9 points evenly spaced from δ down to ½,
        negative: −Φ⁻¹(p) for the 7 first of 8 points evenly spaced from δ down to ½.
    """
    delta = 1 - 0.5 * (1 / (2 * 15) + 1 / (2 * 16))
    pos = norm_ppf(numpy.linspace(delta, 0.5, 9)[:-1])
    neg = -norm_ppf(numpy.linspace(delta, 0.5, 8)[:-1])
    v = numpy.sort(numpy.concatenate([pos, [0.0], neg]))
    return (v / v.max()).astype(numpy.float32)


NF4_CODE = nf4_code_values()  # computed once at import (16 values; microseconds)
INT4_CODE = (numpy.arange(-7, 8) / 7).astype(numpy.float32)  # symmetric absmax int4: 15 evenly spaced levels


# ------------------------------------------------------------------ packing
def pack_4bit(codes):
    """Two 4-bit codes (0..15) per byte: byte = (first << 4) | second. Length must be even."""
    xp = B.xp
    codes = xp.asarray(codes)
    if codes.ndim != 1 or codes.size % 2:
        raise ValueError(f"pack_4bit: need a flat array of even length, got shape {codes.shape}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError(f"pack_4bit: codes must be in 0..15, got range "
                         f"[{int(codes.min())}, {int(codes.max())}]")
    c = codes.astype(xp.uint8)
    return (c[0::2] << 4) | c[1::2]


def unpack_4bit(packed):
    """Inverse of ``pack_4bit``: (n,) bytes → (2n,) codes."""
    xp = B.xp
    packed = xp.asarray(packed, dtype=xp.uint8)
    return xp.stack([packed >> 4, packed & 0x0F], axis=-1).reshape(-1)


# ------------------------------------------------------------------ blockwise quantisation
def _blocks(w, block_size: int):
    """Flatten and zero-pad to whole blocks: (n_blocks, block_size)."""
    xp = B.xp
    flat = xp.asarray(w).reshape(-1)
    pad = (-flat.size) % block_size
    if pad:
        flat = xp.concatenate([flat, xp.zeros(pad, dtype=flat.dtype)])
    return flat.reshape(-1, block_size)


def _nearest_code(x, code):
    """Index of the nearest value of the sorted ``code`` for each element of x (ties to the lower)."""
    xp = B.xp
    code = xp.asarray(code, dtype=xp.float32)
    mid = (code[1:] + code[:-1]) / 2
    return xp.searchsorted(mid, x.astype(xp.float32), side="left").astype(xp.uint8)


def quantize_blockwise(w, code, block_size: int = NF4_BLOCK_SIZE):
    """Absmax quantisation to a codebook: (codes (n_blocks·block,) uint8, absmax (n_blocks,) float32)."""
    xp = B.xp
    blocks = _blocks(xp.asarray(w, dtype=xp.float32), block_size)  # (n_blocks, block)
    absmax = xp.abs(blocks).max(axis=1)
    safe = xp.where(absmax > 0, absmax, 1.0)
    codes = _nearest_code(blocks / safe[:, None], code)
    return codes.reshape(-1), absmax.astype(xp.float32)


def dequantize_blockwise(codes, absmax, code, shape, block_size: int = NF4_BLOCK_SIZE):
    """code[codes] · absmax per block, cut back to ``shape``."""
    xp = B.xp
    n = int(numpy.prod(shape))
    vals = xp.asarray(code, dtype=xp.float32)[codes].reshape(-1, block_size) * absmax[:, None]
    return vals.reshape(-1)[:n].reshape(shape)


def quantize_scales_8bit(absmax, block_size: int = SCALE_BLOCK_SIZE):
    """Double quantisation (QLoRA §3): absmax − mean, then blockwise absmax to int8 in blocks of 256.

    Returns (q int8 (n,), scale float32 (n_blocks2,), mean float32 ()). QLoRA uses an 8-bit float for
    this second level; a linear int8 code is used here, with the same 8 bits and block size.
    """
    xp = B.xp
    mean = absmax.mean().astype(xp.float32)
    blocks = _blocks(absmax - mean, block_size)
    scale = xp.abs(blocks).max(axis=1)
    safe = xp.where(scale > 0, scale, 1.0)
    q = xp.clip(xp.rint(blocks / safe[:, None] * 127), -127, 127).astype(xp.int8).reshape(-1)[:absmax.size]
    return q, scale.astype(xp.float32), mean


def dequantize_scales_8bit(q, scale, mean, block_size: int = SCALE_BLOCK_SIZE):
    xp = B.xp
    blocks = _blocks(q.astype(xp.float32), block_size)
    return ((blocks / 127) * scale[:, None]).reshape(-1)[:q.size] + mean


@dataclass
class NF4Weight:
    """A tensor in NF4: packed codes, per-block scales (double-quantised or float32), its shape."""

    packed: object            # uint8 (ceil(n/64)·32,)
    shape: tuple
    absmax: object = None     # float32 (n_blocks,), without double quantisation
    absmax_q: object = None   # int8 (n_blocks,), with double quantisation
    absmax_scale: object = None  # float32 (ceil(n_blocks/256),)
    absmax_mean: object = None   # float32 ()
    block_size: int = NF4_BLOCK_SIZE

    @property
    def numel(self) -> int:
        return int(numpy.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes actually stored (packed codes + all scale arrays)."""
        arrays = (self.packed, self.absmax, self.absmax_q, self.absmax_scale, self.absmax_mean)
        return int(sum(a.nbytes for a in arrays if a is not None))

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / self.numel

    def scales(self):
        if self.absmax is not None:
            return self.absmax
        return dequantize_scales_8bit(self.absmax_q, self.absmax_scale, self.absmax_mean)

    def dequantize(self, dtype=None):
        """The float weight this stands for (float32 unless ``dtype``)."""
        codes = unpack_4bit(self.packed)
        w = dequantize_blockwise(codes, self.scales(), NF4_CODE, self.shape, self.block_size)
        return w if dtype is None else w.astype(dtype)


def quantize_nf4(w, block_size: int = NF4_BLOCK_SIZE, double_quant: bool = True) -> NF4Weight:
    """Quantise an array to NF4 with blockwise absmax scaling (and double-quantised scales)."""
    if block_size % 2:
        raise ValueError(f"quantize_nf4: block_size must be even (two codes per byte), got {block_size}")
    w = B.xp.asarray(w)
    codes, absmax = quantize_blockwise(w, NF4_CODE, block_size)
    out = NF4Weight(packed=pack_4bit(codes), shape=tuple(w.shape), block_size=block_size)
    if double_quant:
        out.absmax_q, out.absmax_scale, out.absmax_mean = quantize_scales_8bit(absmax)
    else:
        out.absmax = absmax
    return out


def int4_roundtrip(w, block_size: int = NF4_BLOCK_SIZE):
    """Plain 4-bit integer absmax quantisation (levels −7..7 / 7 per block) and back: NF4's baseline."""
    codes, absmax = quantize_blockwise(w, INT4_CODE, block_size)
    return dequantize_blockwise(codes, absmax, INT4_CODE, tuple(w.shape), block_size)


def nf4_roundtrip(w, block_size: int = NF4_BLOCK_SIZE, double_quant: bool = True):
    return quantize_nf4(w, block_size, double_quant).dequantize()


def theoretical_bits_per_param(block_size: int = NF4_BLOCK_SIZE, double_quant: bool = True,
                               scale_block_size: int = SCALE_BLOCK_SIZE) -> float:
    """4 + 32/64 = 4.5 bits without double quantisation; 4 + 8/64 + 32/(64·256) = 4.127 with it."""
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * scale_block_size)
    return 4 + 32 / block_size


# ------------------------------------------------------------------ the layer
class QuantizedLinear(nn.Module):
    """A frozen Linear whose weight is stored in NF4 and dequantised on the fly in forward.

    The packed codes and scales are buffers (saved in the state dict, never trained); the bias stays a
    frozen float parameter. Wrap it in ``LoRALinear`` (``apply_qlora`` does) to fine-tune on top of it.
    """

    def __init__(self, linear: nn.Linear, block_size: int = NF4_BLOCK_SIZE, double_quant: bool = True):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.block_size, self.double_quant = block_size, double_quant
        q = quantize_nf4(linear.weight.data, block_size, double_quant)
        for name in ("packed", "absmax", "absmax_q", "absmax_scale", "absmax_mean"):
            if getattr(q, name) is not None:
                self.register_buffer(f"weight_{name}", getattr(q, name))
        self.bias = (None if linear.bias is None
                     else nn.Parameter(linear.bias.data.copy(), requires_grad=False))

    def nf4(self) -> NF4Weight:
        g = lambda name: getattr(self, f"weight_{name}", None)
        return NF4Weight(packed=g("packed"), shape=(self.out_features, self.in_features), absmax=g("absmax"),
                         absmax_q=g("absmax_q"), absmax_scale=g("absmax_scale"), absmax_mean=g("absmax_mean"),
                         block_size=self.block_size)

    def dequantize(self, dtype=None):
        """The (out_features, in_features) float weight."""
        return self.nf4().dequantize(dtype)

    def forward(self, x: Tensor) -> Tensor:
        w = Tensor(self.dequantize(x.dtype))  # a constant: no gradient to the frozen base
        return F.linear(x, w, self.bias)

    @property
    def weight_nbytes(self) -> int:
        return self.nf4().nbytes

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, NF4 block "
                f"{self.block_size}, double_quant={self.double_quant}")


def quantize_model(model: nn.Module, block_size: int = NF4_BLOCK_SIZE, double_quant: bool = True,
                   skip_modules: tuple = ("lm_head",)) -> nn.Module:
    """Replace every nn.Linear (except names ending in ``skip_modules``) by a frozen QuantizedLinear."""
    for name, m in list(model.named_modules()):
        if name and isinstance(m, nn.Linear) and not matches(name, tuple(skip_modules)):
            replace_module(model, name, QuantizedLinear(m, block_size, double_quant))
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Undo ``quantize_model``: every QuantizedLinear becomes a frozen float ``nn.Linear`` holding its
    dequantized weight (what ``merge_and_unload`` leaves of a QLoRA model, as a plain checkpoint)."""
    for name, m in list(model.named_modules()):
        if name and isinstance(m, QuantizedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.data = B.asarray(m.dequantize(), dtype=B.default_dtype)
            if m.bias is not None:
                lin.bias.data = m.bias.data.copy()
            replace_module(model, name, lin.requires_grad_(False))
    return model


def apply_qlora(model: nn.Module, config: LoRAConfig | None = None, block_size: int = NF4_BLOCK_SIZE,
                double_quant: bool = True, skip_modules: tuple = ("lm_head",)) -> nn.Module:
    """QLoRA in one call: quantise the base's Linear layers to NF4, freeze everything, add LoRA on the
    ``config.target_modules`` (which now wrap QuantizedLinear bases). ``lm_head`` stays in float by default
    (as in Hugging Face's 4-bit loading), which also keeps a weight tied to the embedding intact."""
    quantize_model(model, block_size, double_quant, skip_modules)
    return apply_lora(model, config or LoRAConfig())


def quantized_storage(model: nn.Module) -> dict:
    """Measured bytes of the quantised weights vs the same weights in float32."""
    qs = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    n = sum(m.in_features * m.out_features for m in qs)
    stored = sum(m.weight_nbytes for m in qs)
    return {"quantized_params": n, "nf4_bytes": stored, "float32_bytes": 4 * n,
            "bits_per_param": 8 * stored / n if n else float("nan"),
            "ratio_vs_float32": stored / (4 * n) if n else float("nan")}


__all__ = [
    "INT4_CODE", "NF4_CODE", "NF4Weight", "QuantizedLinear", "apply_qlora", "dequantize_blockwise",
    "dequantize_model",
    "dequantize_scales_8bit", "int4_roundtrip", "nf4_code_values", "nf4_roundtrip", "norm_cdf", "norm_ppf",
    "pack_4bit", "quantize_blockwise", "quantize_model", "quantize_nf4", "quantize_scales_8bit",
    "quantized_storage", "theoretical_bits_per_param", "unpack_4bit",
]
