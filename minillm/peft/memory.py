"""The memory bill of fine-tuning: weights, gradients, optimizer states and activations.

Sources of the formulas (Ψ = parameter count, Ψₜ = trainable parameters):

* **Full fine-tuning in float32 with Adam**: weights 4Ψ, gradients 4Ψ, Adam's two moments 8Ψ: 16 B/param.
  This is what minillm itself allocates (``predicted_training_bytes`` vs ``measured_training_bytes``).
* **Mixed precision with Adam** (Rajbhandari et al. 2020, ZeRO, §3.1: "2Ψ + 2Ψ + KΨ" with K = 12): 16-bit
  weights 2Ψ and gradients 2Ψ, plus float32 master weights, momentum and variance 12Ψ: again 16 B/param,
  but activations are stored in 16 bits (half of float32).
* **LoRA** (Hu et al. 2021): the frozen base in 16 bits (2Ψ), and mixed-precision training of the adapter
  only: 16 B per *trainable* parameter (2 weights + 2 gradients + 12 optimizer).
* **QLoRA** (Dettmers et al. 2023): the base's Linear weights in NF4 with double-quantised scales,
  4.127 bits = 0.516 B/param; embeddings, norms and the output head stay 16-bit; the adapter as in LoRA.
* **Activations** (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", eq. 1): one transformer layer stores s·b·h·(34 + 5·a·s/h) bytes with 16-bit activations
  (s sequence, b batch, h hidden, a heads; includes the attention scores/softmax, 5as²b, and the 1-byte
  dropout masks). With full activation recomputation only each layer's input is kept: 2·s·b·h bytes
  (§4.1). Added here: the float32 logits the loss keeps, 4·s·b·V bytes. For float32 training the
  activations are counted at twice the 16-bit figure. For LoRA/QLoRA the same activation estimate is used:
  gradients must still flow back through every frozen layer to reach earlier adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("full-fp32", "mixed", "lora", "qlora")
GB = 1e9


@dataclass
class TransformerShape:
    """What the memory arithmetic needs to know about a decoder-only transformer (counted, not allocated).

    ``gated_mlp`` means LLaMA's SwiGLU (three d × d_ff matrices); otherwise GPT's two. ``max_positions`` is
    the size of a learned position table (0 for rotary embeddings). ``linear_names`` maps the
    per-layer projection names (as ``target_modules`` would name them) to their roles.
    """

    n_layers: int
    d_model: int
    n_heads: int
    vocab_size: int
    d_ff: int | None = None
    gated_mlp: bool = False
    bias: bool = False
    norm: str = "rms"             # "rms" (weight only) or "layer" (weight + bias)
    tied_embeddings: bool = False
    max_positions: int = 0
    name: str = ""
    linear_names: dict = field(default_factory=lambda: {
        "q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o",
        "gate_proj": "gate", "up_proj": "up", "down_proj": "down"})

    def __post_init__(self):
        for n in ("n_layers", "d_model", "n_heads", "vocab_size"):
            if int(getattr(self, n)) < 1:
                raise ValueError(f"TransformerShape: {n} must be positive, got {getattr(self, n)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerShape: d_model {self.d_model} is not divisible by "
                             f"n_heads {self.n_heads}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"TransformerShape: norm must be 'rms' or 'layer', got {self.norm!r}")

    def linear_shapes(self) -> dict:
        """Per-layer projection name → (d_in, d_out)."""
        h, f = self.d_model, self.d_ff
        roles = {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (h, f), "down": (f, h)}
        if self.gated_mlp:
            roles["gate"] = (h, f)
        return {name: roles[role] for name, role in self.linear_names.items() if role in roles}

    def linear_params(self) -> int:
        """Weights of the per-layer Linear layers (what QLoRA quantises), all layers."""
        return self.n_layers * sum(i * o for i, o in self.linear_shapes().values())

    def num_parameters(self) -> int:
        h, f, L = self.d_model, self.d_ff, self.n_layers
        norm = h if self.norm == "rms" else 2 * h
        per_layer = sum(i * o for i, o in self.linear_shapes().values()) + 2 * norm
        if self.bias:
            per_layer += 4 * h + (2 * f if self.gated_mlp else f) + h
        emb = self.vocab_size * h + self.max_positions * h
        head = 0 if self.tied_embeddings else self.vocab_size * h
        return emb + L * per_layer + norm + head


LLAMA_7B = TransformerShape(n_layers=32, d_model=4096, n_heads=32, vocab_size=32000, d_ff=11008,
                            gated_mlp=True, bias=False, norm="rms", tied_embeddings=False, name="LLaMA-7B")


def shape_from_gpt_config(config) -> TransformerShape:
    """The ``TransformerShape`` of a ``minillm.models.gpt.GPTConfig`` (LayerNorm, biases, learned positions,
    GELU MLP with up_proj/down_proj, optionally tied head)."""
    return TransformerShape(n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                            vocab_size=config.vocab_size, d_ff=config.d_ff, gated_mlp=False, bias=True,
                            norm="layer", tied_embeddings=config.tie_weights,
                            max_positions=config.context_length, name="minillm GPT")


@dataclass
class MemoryEstimate:
    method: str
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict:
        return {"method": self.method, "params": self.params, "trainable": self.trainable,
                "weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}


def activation_bytes(shape: TransformerShape, batch: int, seq: int, recompute: bool = False,
                     bytes_per_value: int = 2) -> float:
    """Korthikanti et al. 2022: L·s·b·h·(34 + 5as/h) (no recomputation) or L·2sbh (full recomputation),
    plus 4·s·b·V for float32 logits. ``bytes_per_value=4`` doubles the layer part (float32 activations)."""
    s, b, h, a, L = seq, batch, shape.d_model, shape.n_heads, shape.n_layers
    per_layer = 2 * s * b * h if recompute else s * b * h * (34 + 5 * a * s / h)
    return L * per_layer * (bytes_per_value / 2) + 4 * s * b * shape.vocab_size


def estimate_memory(shape: TransformerShape, method: str = "mixed", batch: int = 1, seq: int = 2048,
                    recompute: bool = False, params: int | None = None, lora_r: int = 8,
                    lora_targets: tuple = ("q_proj", "v_proj"), nf4_bits: float | None = None
                    ) -> MemoryEstimate:
    """Bytes for one fine-tuning step of ``shape`` with ``method`` (see the module docstring for sources).

    ``params`` overrides the parameter count computed from the shape (e.g. ``--params 7e9``); the
    quantised share for QLoRA is then everything but the embeddings, head and norms.
    """
    from minillm.peft.lora import LoRAConfig, lora_param_count_for_shape
    from minillm.peft.qlora import theoretical_bits_per_param

    if method not in METHODS:
        raise ValueError(f"estimate_memory: unknown method {method!r}; choose from {METHODS}")
    for n, v in (("batch", batch), ("seq", seq)):
        if int(v) < 1:
            raise ValueError(f"estimate_memory: {n} must be positive, got {v}")
    N = int(params) if params is not None else shape.num_parameters()
    lora_n = lora_param_count_for_shape(shape, LoRAConfig(r=lora_r, target_modules=tuple(lora_targets)))
    act16 = activation_bytes(shape, batch, seq, recompute, 2)
    if method == "full-fp32":
        act32 = activation_bytes(shape, batch, seq, recompute, 4)
        return MemoryEstimate(method, N, N, 4 * N, 4 * N, 8 * N, act32)
    if method == "mixed":
        return MemoryEstimate(method, N, N, 2 * N, 2 * N, 12 * N, act16)
    if method == "lora":
        return MemoryEstimate(method, N + lora_n, lora_n, 2 * N + 2 * lora_n, 2 * lora_n, 12 * lora_n, act16)
    bits = theoretical_bits_per_param() if nf4_bits is None else nf4_bits
    n_q = min(N, shape.linear_params())
    weights = n_q * bits / 8 + 2 * (N - n_q) + 2 * lora_n
    return MemoryEstimate(method, N + lora_n, lora_n, weights, 2 * lora_n, 12 * lora_n, act16)


def memory_table(shape: TransformerShape, batch: int = 1, seq: int = 2048, recompute: bool = False,
                 params: int | None = None, methods=METHODS, lora_r: int = 8,
                 lora_targets: tuple = ("q_proj", "v_proj")) -> list[MemoryEstimate]:
    return [estimate_memory(shape, m, batch, seq, recompute, params, lora_r, lora_targets) for m in methods]


def format_memory_table(rows: list[MemoryEstimate], unit: float = GB, unit_name: str = "GB") -> str:
    """A plain-text table, one row per method, in GB (10⁹ bytes)."""
    head = (f"{'method':<10} {'trainable':>14} {'weights':>9} {'grads':>9} {'optimizer':>9} "
            f"{'activ.':>9} {'total':>9}   ({unit_name})")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.method:<10} {r.trainable:>14,d} {r.weights / unit:>9.2f} "
                     f"{r.gradients / unit:>9.2f} "
                     f"{r.optimizer / unit:>9.2f} {r.activations / unit:>9.2f} {r.total / unit:>9.2f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ checking the arithmetic on minillm itself
def measured_training_bytes(model, optimizer) -> dict:
    """Bytes minillm actually holds after a training step: parameter arrays, gradient arrays, optimizer state
    (and buffers, e.g. NF4-packed weights)."""
    params = list(model.parameters())
    return {"weights": sum(int(p.data.nbytes) for p in params),
            "gradients": sum(int(p.grad.nbytes) for p in params if p.grad is not None),
            "optimizer": int(optimizer.state_nbytes()),
            "buffers": sum(int(getattr(v, "nbytes", 0)) for _, v in model.named_buffers())}


def predicted_training_bytes(n_params: int, n_trainable: int, bytes_per_value: int = 4) -> dict:
    """minillm's own rule (float32 weights, gradients and AdamW's m and v for trainable parameters only):
    weights 4Ψ, gradients 4Ψₜ, optimizer 8Ψₜ."""
    return {"weights": bytes_per_value * n_params, "gradients": bytes_per_value * n_trainable,
            "optimizer": 2 * bytes_per_value * n_trainable}


def main(args) -> int:
    """``minillm memory``: print the fine-tuning memory table for a model shape."""
    shape = TransformerShape(n_layers=args.layers, d_model=args.hidden, n_heads=args.heads,
                             vocab_size=args.vocab,
                             d_ff=args.ffn, gated_mlp=not args.plain_mlp, name="custom")
    methods = METHODS if args.method == "all" else (args.method,)
    recompute = args.recompute == "on"
    params = int(args.params) if args.params else None
    rows = memory_table(shape, args.batch, args.seq, recompute, params, methods, args.r)
    n = params or shape.num_parameters()
    print(f"fine-tuning memory for {n / 1e9:.3g}B parameters ({shape.n_layers} layers, "
          f"hidden {shape.d_model}, {shape.n_heads} heads, vocab {shape.vocab_size}, ffn {shape.d_ff}); "
          f"batch {args.batch}, seq {args.seq}, "
          f"recompute {args.recompute}; LoRA r={args.r} on q_proj, v_proj")
    print(format_memory_table(rows))
    return 0


def add_arguments(p) -> None:
    """The ``minillm memory`` flags (LLaMA-7B-like defaults)."""
    from minillm import options as opt

    p.add_argument("--params", type=opt.positive_float, default=None,
                   help="parameter count, e.g. 7e9 (default: computed from the shape)")
    p.add_argument("--layers", type=opt.positive_int, default=32)
    p.add_argument("--hidden", type=opt.positive_int, default=4096)
    p.add_argument("--heads", type=opt.positive_int, default=32)
    p.add_argument("--vocab", type=opt.positive_int, default=32000)
    p.add_argument("--ffn", type=opt.positive_int, default=11008, help="feed-forward width (LLaMA-7B: 11008)")
    p.add_argument("--plain-mlp", action="store_true", help="GPT-style 2-matrix MLP instead of SwiGLU")
    p.add_argument("--batch", type=opt.positive_int, default=1)
    p.add_argument("--seq", type=opt.positive_int, default=2048)
    p.add_argument("--recompute", choices=["on", "off"], default="off", help="full activation recomputation")
    p.add_argument("--method", choices=["all", *METHODS], default="all")
    p.add_argument("--r", type=opt.positive_int, default=8, help="LoRA rank")
