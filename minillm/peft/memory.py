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
* **KV cache** (generation, not training): 2 (k, v) · L · n_kv_heads · head_dim · seq · batch · bytes, what
  ``Llama.kv_cache_bytes`` counts and ``forward_cached`` allocates (n_kv_heads < n_heads is GQA).
* **ZeRO** (Rajbhandari et al. 2020, §5) across N data-parallel ranks: the trainable parameters flattened in
  ``model.parameters()`` order into one buffer of Ψ elements, zero-padded to a multiple of N, each rank
  owning shard = ceil(Ψ/N) elements. Stage 1 shards the optimizer state, stage 2 also the gradients, stage 3
  also the parameters (``zero_bytes_per_rank``; the paper's mixed-precision figures beside it).

Shapes come from presets (``ARCHS``: LLaMA-7B, GPT-2 124M), from minillm configs and checkpoints, or from a
Hugging Face config.json (``shape_from_config_file``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("full-fp32", "mixed", "lora", "qlora")
GB = 1e9


@dataclass
class TransformerShape:
    """What the memory arithmetic needs to know about a decoder-only transformer (counted, not allocated).

    ``gated_mlp`` means LLaMA's SwiGLU (three d × d_ff matrices); otherwise GPT's two. ``max_positions`` is
    the size of a learned position table (0 for rotary embeddings). ``n_kv_heads`` (None: ``n_heads``) is
    grouped-query attention: k_proj and v_proj map d_model to n_kv_heads·head_dim. ``linear_names`` maps
    the per-layer projection names (as ``target_modules`` would name them) to their roles.
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
    n_kv_heads: int | None = None

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for n in ("n_layers", "d_model", "n_heads", "vocab_size", "n_kv_heads"):
            if int(getattr(self, n)) < 1:
                raise ValueError(f"TransformerShape: {n} must be positive, got {getattr(self, n)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerShape: d_model {self.d_model} is not divisible by "
                             f"n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"TransformerShape: n_kv_heads {self.n_kv_heads} must divide "
                             f"n_heads {self.n_heads}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"TransformerShape: norm must be 'rms' or 'layer', got {self.norm!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        """Width of k_proj's and v_proj's output: n_kv_heads · head_dim (d_model without GQA)."""
        return self.n_kv_heads * self.head_dim

    def linear_shapes(self) -> dict:
        """Per-layer projection name → (d_in, d_out)."""
        h, f, kv = self.d_model, self.d_ff, self.kv_dim
        roles = {"q": (h, h), "k": (h, kv), "v": (h, kv), "o": (h, h), "up": (h, f), "down": (f, h)}
        if self.gated_mlp:
            roles["gate"] = (h, f)
        return {name: roles[role] for name, role in self.linear_names.items() if role in roles}

    def linear_params(self) -> int:
        """Weights of the per-layer Linear layers (what QLoRA quantises), all layers."""
        return self.n_layers * sum(i * o for i, o in self.linear_shapes().values())

    def block_params(self) -> int:
        """Parameters of one transformer block: its projections, their biases and its two norms."""
        h, f = self.d_model, self.d_ff
        norm = h if self.norm == "rms" else 2 * h
        n = sum(i * o for i, o in self.linear_shapes().values()) + 2 * norm
        if self.bias:
            n += 2 * h + 2 * self.kv_dim + (2 * f if self.gated_mlp else f) + h
        return n

    def num_parameters(self) -> int:
        h = self.d_model
        norm = h if self.norm == "rms" else 2 * h
        emb = self.vocab_size * h + self.max_positions * h
        head = 0 if self.tied_embeddings else self.vocab_size * h
        return emb + self.n_layers * self.block_params() + norm + head

    def kv_cache_bytes(self, n_tokens: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
        """Bytes of a KV cache holding ``n_tokens`` positions: 2 (k, v) · L · n_kv_heads · head_dim per token
        per sequence (``Llama.kv_cache_bytes``; GPT's cache is the n_kv_heads = n_heads case)."""
        return 2 * self.n_layers * self.kv_dim * n_tokens * batch_size * bytes_per_value


LLAMA_7B = TransformerShape(n_layers=32, d_model=4096, n_heads=32, vocab_size=32000, d_ff=11008,
                            gated_mlp=True, bias=False, norm="rms", tied_embeddings=False, name="LLaMA-7B")
GPT2_SMALL = TransformerShape(n_layers=12, d_model=768, n_heads=12, vocab_size=50257, d_ff=3072,
                              gated_mlp=False, bias=True, norm="layer", tied_embeddings=True,
                              max_positions=1024, name="GPT-2 124M")
ARCHS = {"llama": LLAMA_7B, "gpt2": GPT2_SMALL}


def shape_from_gpt_config(config) -> TransformerShape:
    """The ``TransformerShape`` of a ``minillm.models.gpt.GPTConfig`` (LayerNorm, biases, learned positions,
    GELU MLP with up_proj/down_proj, optionally tied head)."""
    return TransformerShape(n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                            vocab_size=config.vocab_size, d_ff=config.d_ff, gated_mlp=False, bias=True,
                            norm="layer", tied_embeddings=config.tie_weights,
                            max_positions=config.context_length, name="minillm GPT")


def shape_from_llama_config(config) -> TransformerShape:
    """The ``TransformerShape`` of a ``minillm.models.llama.LlamaConfig`` (RMSNorm, no biases, RoPE,
    SwiGLU, GQA with ``n_kv_heads``, head untied unless ``tie_weights``)."""
    return TransformerShape(n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                            n_kv_heads=config.n_kv_heads, vocab_size=config.vocab_size, d_ff=config.d_ff,
                            gated_mlp=True, bias=False, norm="rms", tied_embeddings=config.tie_weights,
                            max_positions=0, name="minillm Llama")


def shape_from_hf_config(d: dict, source: str = "config.json") -> TransformerShape:
    """The shape in a Hugging Face ``config.json`` of ``model_type`` gpt2 or llama (missing keys take
    transformers' documented defaults: GPT2Config's are GPT-2 124M, LlamaConfig's LLaMA-7B)."""
    kind = d.get("model_type")
    if kind == "gpt2":
        h = int(d.get("n_embd", 768))
        return TransformerShape(n_layers=int(d.get("n_layer", 12)), d_model=h,
                                n_heads=int(d.get("n_head", 12)), vocab_size=int(d.get("vocab_size", 50257)),
                                d_ff=int(d.get("n_inner") or 4 * h),
                                gated_mlp=False, bias=True, norm="layer",
                                tied_embeddings=bool(d.get("tie_word_embeddings", True)),
                                max_positions=int(d.get("n_positions", 1024)), name=f"{source} (gpt2)")
    if kind == "llama":
        bias = bool(d.get("attention_bias", False)), bool(d.get("mlp_bias", False))
        if bias[0] != bias[1]:
            raise ValueError(f"{source}: attention_bias and mlp_bias differ; the calculator counts biases "
                             "everywhere or nowhere")
        heads = int(d.get("num_attention_heads", 32))
        return TransformerShape(n_layers=int(d.get("num_hidden_layers", 32)),
                                d_model=int(d.get("hidden_size", 4096)),
                                n_heads=heads, n_kv_heads=int(d.get("num_key_value_heads") or heads),
                                vocab_size=int(d.get("vocab_size", 32000)),
                                d_ff=int(d.get("intermediate_size", 11008)), gated_mlp=True, bias=bias[0],
                                norm="rms", tied_embeddings=bool(d.get("tie_word_embeddings", False)),
                                name=f"{source} (llama)")
    raise ValueError(f"{source}: model_type {kind!r} is not supported (expected 'gpt2' or 'llama')")


def shape_from_minillm_config(kind: str, d: dict, source: str) -> TransformerShape:
    """The shape of a minillm GPTConfig/LlamaConfig given as a dict (``kind`` "gpt" or "llama")."""
    from minillm.models.common import config_from_dict
    from minillm.models.gpt import GPTConfig
    from minillm.models.llama import LlamaConfig

    kind = kind.lower()
    family = next((k for k in ("gpt", "llama") if kind.startswith(k)), None)
    if family is None:
        raise ValueError(f"{source} holds a {kind!r} model; the memory calculator needs a decoder "
                         "('gpt' or 'llama')")
    cls, to_shape = (GPTConfig, shape_from_gpt_config) if family == "gpt" else (LlamaConfig,
                                                                                shape_from_llama_config)
    try:
        config = config_from_dict(cls, d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: not a valid {cls.__name__}: {e}") from None
    shape = to_shape(config)
    shape.name = f"{source} ({family})"
    return shape


def shape_from_config_file(path) -> TransformerShape:
    """The shape described by ``path``: a minillm checkpoint (.npz), a minillm config JSON (a
    GPTConfig/LlamaConfig dict, bare or as ``{"kind", "config"}``) or a Hugging Face config.json."""
    import json
    from pathlib import Path

    from minillm.checkpoint import load

    path, name = Path(path), Path(path).name
    with open(path, "rb") as f:
        is_npz = f.read(4) == b"PK\x03\x04"
    if is_npz:
        state = load(path)
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise ValueError(f"{path} holds no model config (expected a 'config' entry)")
        return shape_from_minillm_config(str(state.get("kind", "gpt")), state["config"], name)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is neither a checkpoint nor a JSON config: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    if "model_type" in d:
        return shape_from_hf_config(d, name)
    if isinstance(d.get("config"), dict):
        return shape_from_minillm_config(str(d.get("kind", "gpt")), d["config"], name)
    llama_keys = {"n_kv_heads", "rope_theta", "rms_norm_eps"}
    return shape_from_minillm_config(str(d.get("kind", "llama" if llama_keys & d.keys() else "gpt")), d, name)


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


# ------------------------------------------------------------------ ZeRO: sharding across data-parallel ranks
def zero_shard(n_params: int, world_size: int) -> int:
    """Elements each rank owns: the flat buffer of all trainable parameters (``model.parameters()`` order),
    padded with zeros to a multiple of ``world_size``, split evenly: ceil(Ψ / N)."""
    if int(n_params) < 1 or int(world_size) < 1:
        raise ValueError(f"zero_shard: n_params and world_size must be >= 1, got {n_params}, {world_size}")
    return -(-int(n_params) // int(world_size))


def _zero(n_params: int, world_size: int, stage: int, p_bytes: int, g_bytes: int, o_bytes: int) -> dict:
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0, 1, 2 or 3, got {stage!r}")
    shard = zero_shard(n_params, world_size)
    # stage 1 shards the optimizer state, 2 also the gradients, 3 also the parameters (Rajbhandari et al.)
    count = {"params": shard if stage >= 3 else n_params, "grads": shard if stage >= 2 else n_params,
             "optimizer": shard if stage >= 1 else n_params}
    return {"params": p_bytes * count["params"], "grads": g_bytes * count["grads"],
            "optimizer": o_bytes * count["optimizer"]}


def zero_bytes_per_rank(n_params: int, world_size: int, stage: int, bytes_per_value: int = 4) -> dict:
    """Per-rank bytes {"params", "grads", "optimizer"} of float32 training with AdamW (two moments) under
    ZeRO ``stage`` 0 (DDP: 4Ψ, 4Ψ, 8Ψ), 1 (optimizer 8·shard), 2 (+ grads 4·shard), 3 (+ params 4·shard),
    shard = ``zero_shard(n_params, world_size)``. Stage 3's transiently gathered block is not included
    (``zero_peak_gathered_bytes``)."""
    b = int(bytes_per_value)
    return _zero(int(n_params), int(world_size), stage, b, b, 2 * b)


def zero_mixed_precision_bytes_per_rank(n_params: int, world_size: int, stage: int) -> dict:
    """The ZeRO paper's mixed-precision Adam (§5, K = 12): 16-bit params 2Ψ and grads 2Ψ, float32 master
    weights and moments 12Ψ; stage 1: 4Ψ + 12Ψ/N, stage 2: 2Ψ + 14Ψ/N, stage 3: 16Ψ/N (Ψ/N = shard)."""
    return _zero(int(n_params), int(world_size), stage, 2, 2, 12)


def zero_peak_gathered_bytes(shape: TransformerShape, bytes_per_value: int = 4) -> int:
    """Stage 3's transient extra: the full parameters of the largest single transformer block, gathered
    for its forward/backward and freed after (``bytes_per_value`` · ``shape.block_params()``)."""
    return bytes_per_value * shape.block_params()


def format_zero_table(n_params: int, world_size: int, stages, unit: float = GB) -> str:
    """Per-rank params/grads/optimizer for each stage: float32 + AdamW beside mixed precision (ZeRO §5)."""
    head = (f"{'stage':<6} {'params':>8} {'grads':>8} {'optim.':>8} {'total':>8}  | "
            f"{'params':>8} {'grads':>8} {'optim.':>8} {'total':>8}   (GB per rank)")
    lines = [f"{'':<6} {'float32 + AdamW (minillm)':^35}  | {'mixed precision, 2+2+12 B (ZeRO §5)':^35}",
             head, "-" * len(head)]
    for stage in stages:
        cells = []
        for d in (zero_bytes_per_rank(n_params, world_size, stage),
                  zero_mixed_precision_bytes_per_rank(n_params, world_size, stage)):
            cells.append(" ".join(f"{v / unit:>8.2f}" for v in (*d.values(), sum(d.values()))))
        lines.append(f"{stage:<6} {cells[0]}  | {cells[1]}")
    return "\n".join(lines)


# ------------------------------------------------------------------ ``minillm memory``
SHAPE_FLAGS = {"layers": "n_layers", "hidden": "d_model", "heads": "n_heads", "kv_heads": "n_kv_heads",
               "vocab": "vocab_size", "ffn": "d_ff"}


def shape_from_args(args) -> TransformerShape:
    """``--config FILE``, or the ``--arch`` preset (default llama: LLaMA-7B) with any explicit
    --layers/--hidden/--heads/--kv-heads/--vocab/--ffn/--plain-mlp overriding it."""
    from dataclasses import replace

    given = {f: getattr(args, a) for a, f in SHAPE_FLAGS.items() if getattr(args, a, None) is not None}
    if args.plain_mlp:
        given["gated_mlp"] = False
    if args.config is not None:
        if given:
            flags = ", ".join("--" + a.replace("_", "-") for a in (*SHAPE_FLAGS, "plain_mlp")
                              if getattr(args, a, None) not in (None, False))
            raise ValueError(f"--config {args.config} gives the whole shape; drop {flags}")
        return shape_from_config_file(args.config)
    preset = ARCHS[args.arch or "llama"]
    if not given:
        return preset
    if "n_heads" in given and "n_kv_heads" not in given and preset.n_kv_heads == preset.n_heads:
        given["n_kv_heads"] = None  # multi-head preset: stay multi-head with the new head count
    return replace(preset, **given, name=f"{preset.name}, modified")


def describe_shape(shape: TransformerShape, n: int) -> str:
    kv = f" ({shape.n_kv_heads} kv)" if shape.n_kv_heads != shape.n_heads else ""
    return (f"{n / 1e9:.3g}B parameters, {shape.name or 'custom'}: {shape.n_layers} layers, hidden "
            f"{shape.d_model}, {shape.n_heads} heads{kv}, vocab {shape.vocab_size}, "
            f"ffn {shape.d_ff}{' (SwiGLU)' if shape.gated_mlp else ''}")


def kv_cache_line(shape: TransformerShape, methods, batch: int, seq: int) -> str:
    """One line: the KV cache of generating ``seq`` tokens at ``batch``, per method (float32 for full-fp32,
    16-bit for the others)."""
    widths = {m: 4 if m == "full-fp32" else 2 for m in methods}
    parts = [f"{m} {shape.kv_cache_bytes(seq, batch, b) / GB:.3f}" for m, b in widths.items()]
    return (f"KV cache for generation, seq {seq}, batch {batch} (2·L·n_kv·head_dim·seq·batch·bytes, "
            f"not in the totals): {', '.join(parts)} GB")


def main(args) -> int:
    """``minillm memory``: the fine-tuning memory table for a model shape, or with ``--zero-stage`` the
    per-rank ZeRO table."""
    if (args.zero_stage is None) != (args.world_size is None):
        raise ValueError("--zero-stage and --world-size go together: give both (e.g. --zero-stage all "
                         "--world-size 8) or neither")
    shape = shape_from_args(args)
    params = int(args.params) if args.params else None
    n = params or shape.num_parameters()
    if args.zero_stage is not None:
        return print_zero(shape, n, args.world_size, args.zero_stage)
    methods = METHODS if args.method == "all" else (args.method,)
    rows = memory_table(shape, args.batch, args.seq, args.recompute == "on", params, methods, args.r)
    print(f"fine-tuning memory for {describe_shape(shape, n)}; batch {args.batch}, seq {args.seq}, "
          f"recompute {args.recompute}; LoRA r={args.r} on q_proj, v_proj")
    print(format_memory_table(rows))
    print(kv_cache_line(shape, methods, args.batch, args.seq))
    return 0


def print_zero(shape: TransformerShape, n: int, world_size: int, stage: str) -> int:
    """Print the ZeRO per-rank table for ``stage`` ("0".."3" or "all")."""
    stages = (0, 1, 2, 3) if stage == "all" else (int(stage),)
    shard = zero_shard(n, world_size)
    print(f"ZeRO per-rank memory for {describe_shape(shape, n)}; world size {world_size}: Ψ = {n:,} "
          f"parameters flattened and zero-padded to {shard * world_size:,} = {world_size} × {shard:,} "
          "(shard) elements; activations not included")
    print(format_zero_table(n, world_size, stages))
    if 3 in stages:
        print(f"stage 3 peak gathered (one transformer block, {shape.block_params():,} parameters, "
              f"gathered then freed): {zero_peak_gathered_bytes(shape, 4) / GB:.3f} GB float32, "
              f"{zero_peak_gathered_bytes(shape, 2) / GB:.3f} GB 16-bit")
    return 0


def add_arguments(p) -> None:
    """The ``minillm memory`` flags (default shape: LLaMA-7B)."""
    from minillm import options as opt

    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", choices=sorted(ARCHS), default=None,
                     help="preset shape: llama = LLaMA-7B (default), gpt2 = GPT-2 124M; the shape flags "
                          "below override it")
    src.add_argument("--config", type=opt.input_file, default=None,
                     help="shape from a minillm checkpoint/config JSON or a Hugging Face config.json")
    p.add_argument("--params", type=opt.positive_float, default=None,
                   help="parameter count, e.g. 7e9 (default: computed from the shape)")
    p.add_argument("--layers", type=opt.positive_int, default=None, help="(LLaMA-7B: 32)")
    p.add_argument("--hidden", type=opt.positive_int, default=None, help="(LLaMA-7B: 4096)")
    p.add_argument("--heads", type=opt.positive_int, default=None, help="(LLaMA-7B: 32)")
    p.add_argument("--kv-heads", type=opt.positive_int, default=None,
                   help="key/value heads, grouped-query attention (default: --heads)")
    p.add_argument("--vocab", type=opt.positive_int, default=None, help="(LLaMA-7B: 32000)")
    p.add_argument("--ffn", type=opt.positive_int, default=None, help="feed-forward width (LLaMA-7B: 11008)")
    p.add_argument("--plain-mlp", action="store_true", help="GPT-style 2-matrix MLP instead of SwiGLU")
    p.add_argument("--batch", type=opt.positive_int, default=1)
    p.add_argument("--seq", type=opt.positive_int, default=2048)
    p.add_argument("--recompute", choices=["on", "off"], default="off", help="full activation recomputation")
    p.add_argument("--method", choices=["all", *METHODS], default="all")
    p.add_argument("--r", type=opt.positive_int, default=8, help="LoRA rank")
    p.add_argument("--zero-stage", choices=["0", "1", "2", "3", "all"], default=None,
                   help="print per-rank ZeRO memory for data-parallel training instead (needs --world-size)")
    p.add_argument("--world-size", type=opt.positive_int, default=None, help="data-parallel ranks (ZeRO)")
