"""``minillm bench peft``: NF4 vs int4 quantisation error and storage, then full fine-tuning vs LoRA, QLoRA,
adapters and prefix tuning on the world-QA task (trainable %, held-out exact match, optimizer bytes,
step time, forgetting), all measured in one run."""

from __future__ import annotations

import numpy

from minillm.peft.qlora import int4_roundtrip, quantize_nf4, theoretical_bits_per_param
from minillm.phases import peft_compare as compare


def quantization_report(n: int = 1024, seed: int = 0) -> dict:
    """Errors of NF4 and absmax int4 (block 64) on an n × n standard-normal matrix, and NF4's storage."""
    w = numpy.random.default_rng(seed).standard_normal((n, n)).astype(numpy.float32)
    q = quantize_nf4(w)
    e_nf4 = numpy.abs(q.dequantize() - w)
    e_int4 = numpy.abs(int4_roundtrip(w) - w)
    return {"nf4_mae": float(e_nf4.mean()), "int4_mae": float(e_int4.mean()),
            "nf4_rmse": float(numpy.sqrt((e_nf4 ** 2).mean())),
            "int4_rmse": float(numpy.sqrt((e_int4 ** 2).mean())),
            "bits_per_param": q.bits_per_param, "theory_bits": theoretical_bits_per_param(),
            "nf4_bytes": q.nbytes, "float32_bytes": w.nbytes}


def main(args) -> int:
    r = quantization_report(256 if getattr(args, "quick", False) else 1024)
    print(f"NF4 vs int4 on N(0,1) weights (block 64): mean |error| {r['nf4_mae']:.4f} vs {r['int4_mae']:.4f} "
          f"(NF4 {100 * (1 - r['nf4_mae'] / r['int4_mae']):.0f}% lower); RMSE {r['nf4_rmse']:.4f} vs "
          f"{r['int4_rmse']:.4f}")
    print(f"NF4 + double quantisation: {r['bits_per_param']:.4f} bits/param measured "
          f"({r['theory_bits']:.4f} in theory); {r['nf4_bytes']:,} B vs {r['float32_bytes']:,} B float32 "
          f"({r['float32_bytes'] / r['nf4_bytes']:.2f}x smaller)")
    return compare.main(args)
