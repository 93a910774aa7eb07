"""One door to the four PEFT methods, with Hugging Face PEFT's names: a ``PeftConfig`` says which method
and its sizes, ``get_peft_model`` applies it to a GPT or a Llama, ``disable_adapter`` switches it off (the
base model exactly, with no second copy of its weights), ``save_adapter``/``load_adapter`` write and read
the adapter alone (the trainable arrays, the config and which base they apply to: a small file), and
``merge_peft`` folds LoRA into a plain model that loads like any checkpoint; ``unload`` takes the adapter out.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

from minillm import backend as B
from minillm import nn
from minillm.checkpoint import CheckpointError, load, save
from minillm.peft.adapter import AdaptedSublayer, adapter_state_dict, adapters_disabled, apply_adapters
from minillm.peft.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_disabled,
    lora_state_dict,
    merge_and_unload,
)
from minillm.peft.prefix import PrefixTuning, prefix_disabled, prefix_state_dict
from minillm.peft.qlora import apply_qlora, dequantize_model
from minillm.peft.surgery import check_partial_state, find_modules, is_linear_like, replace_module

PEFT_TYPES = ("lora", "qlora", "prefix", "adapter")
MERGEABLE = ("lora", "qlora")  # LoRA's update is linear and folds into W; a prefix or an adapter does not
ADAPTER_KIND = "peft_adapter"  # the ``kind`` of a saved adapter file
DEFAULT_TARGETS = {"lora": ("q_proj", "v_proj"), "qlora": ("q_proj", "v_proj"), "adapter": ("attn", "mlp")}


@dataclass
class PeftConfig:
    """Which method and its sizes (PEFT's ``LoraConfig``/``PrefixTuningConfig`` field names; ``bottleneck``
    as in ``peft.adapter``). ``target_modules`` None means the method's defaults (``DEFAULT_TARGETS``)."""

    peft_type: str
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple | None = None
    num_virtual_tokens: int = 8
    bottleneck: int = 16

    def __post_init__(self):
        if self.peft_type not in PEFT_TYPES:
            raise ValueError(f"PeftConfig: peft_type must be one of {', '.join(PEFT_TYPES)}, got "
                             f"{self.peft_type!r}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)

    @property
    def targets(self) -> tuple:
        """The target module names in effect (empty for prefix tuning, which targets every layer)."""
        return self.target_modules or DEFAULT_TARGETS.get(self.peft_type, ())

    def lora_config(self) -> LoRAConfig:
        return LoRAConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.targets)


def check_target_modules(model: nn.Module, config: PeftConfig) -> None:
    """Raise ValueError unless every target names a module the method can wrap (a Linear for LoRA/QLoRA, any
    sub-module for adapters), listing the model's names (PEFT: "Target modules ... not found")."""
    lora = config.peft_type in MERGEABLE
    accept = (lambda m: is_linear_like(m) or isinstance(m, LoRALinear)) if lora else (lambda m: True)
    missing = [t for t in config.targets if not find_modules(model, (t,), accept)]
    if missing:
        kind = "Linear layer" if lora else "module"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and accept(m)}
                       - {"lora_A", "lora_B", "base_layer", "lora_dropout"})
        raise ValueError(f"target_modules {', '.join(missing)}: no {kind} of this {type(model).__name__} is "
                         f"named so; its {kind}s are named {', '.join(names)}")


def get_peft_model(model: nn.Module, config: PeftConfig) -> nn.Module:
    """Freeze ``model`` and add the adapter ``config`` describes; returns the model to train (the same object
    for LoRA, QLoRA and adapters, a ``PrefixTuning`` around it for prefix tuning)."""
    check_target_modules(model, config)
    if config.peft_type == "lora":
        return apply_lora(model, config.lora_config())
    if config.peft_type == "qlora":
        return apply_qlora(model, config.lora_config())
    if config.peft_type == "adapter":
        return apply_adapters(model, config.bottleneck, config.targets)
    return PrefixTuning(model, config.num_virtual_tokens)


@contextmanager
def disable_adapter(model: nn.Module):
    """Inside this block ``model`` computes its frozen base alone, whatever the method: LoRA layers use
    their base weight, adapters are skipped, a prefix is left out (PEFT's ``disable_adapter()``)."""
    with lora_disabled(model), adapters_disabled(model), prefix_disabled(model):
        yield model


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries a LoRA layer, an adapter or a prefix."""
    return any(isinstance(m, (LoRALinear, AdaptedSublayer, PrefixTuning)) for m in model.modules())


def peft_state_dict(model: nn.Module, peft_type: str) -> dict:
    """The adapter's arrays alone: LoRA's A and B, the adapters' weights, or the folded prefix."""
    if peft_type in MERGEABLE:
        return dict(lora_state_dict(model))
    if peft_type == "adapter":
        return adapter_state_dict(model)
    return prefix_state_dict(model)


def unload(model: nn.Module) -> nn.Module:
    """The base model with every adapter taken out, not merged (PEFT's ``unload()``), in place; returns it."""
    if isinstance(model, PrefixTuning):
        return model.model
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALinear, AdaptedSublayer))]:
        if isinstance(m, LoRALinear):
            m.unmerge()
        replace_module(model, name, m.base_layer)
    return model


def merge_peft(model: nn.Module) -> nn.Module:
    """LoRA folded into the weights and a QLoRA base dequantized: the plain architecture, in place, ready for
    ``save_checkpoint``. Only LoRA and QLoRA merge (ValueError for a prefix or adapters)."""
    if any(isinstance(m, (AdaptedSublayer, PrefixTuning)) for m in model.modules()):
        raise ValueError("merge_peft: only LoRA and QLoRA fold into the weights; a prefix or adapters cannot")
    return dequantize_model(merge_and_unload(model))


# ------------------------------------------------------------------ the adapter file
def save_adapter(model: nn.Module, config: PeftConfig, path, base_model_name_or_path: str | None = None
                 ) -> None:
    """Write the adapter alone to ``path`` (``minillm.save``: .npz + JSON): its arrays, ``config``, and the
    base it applies to (its source and its config, checked again when it is loaded)."""
    save({"kind": ADAPTER_KIND, "peft_config": asdict(config), "base_config": asdict(model.config),
          "base_model_name_or_path": base_model_name_or_path,
          "adapter": {k: B.to_numpy(v) for k, v in peft_state_dict(model, config.peft_type).items()}}, path)


def read_adapter(path) -> dict:
    """An adapter file's contents: ``config`` (PeftConfig), ``base_model_name_or_path``, ``base_config``
    (dict) and ``state`` (arrays); CheckpointError if ``path`` holds no adapter."""
    state = load(path)
    if not isinstance(state, dict) or state.get("kind") != ADAPTER_KIND:
        kind = state.get("kind", "no kind") if isinstance(state, dict) else "no kind"
        raise CheckpointError(f"{path} is not an adapter file (it holds {kind!r}; adapters are written by "
                              "minillm sft/dpo --peft)")
    try:
        config = PeftConfig(**state["peft_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its PEFT config is not valid: {e}") from None
    return {"config": config, "base_model_name_or_path": state.get("base_model_name_or_path"),
            "base_config": dict(state["base_config"]), "state": state["adapter"]}


def adapter_base(path) -> str:
    """The base model an adapter file names (a checkpoint or a model folder); ValueError if it names none
    or that path is gone."""
    from pathlib import Path

    base = read_adapter(path)["base_model_name_or_path"]
    if not base or not Path(base).exists():
        why = "names no base model" if not base else f"applies to {base!r}, which does not exist"
        raise ValueError(f"{path} {why}: give the base with --ckpt or --from-pretrained")
    return str(base)


def load_adapter(model: nn.Module, path) -> nn.Module:
    """Apply the adapter saved at ``path`` onto its base ``model`` (PEFT's ``PeftModel.from_pretrained``);
    returns the model to run. ValueError if ``model`` is not the base the adapter was trained on."""
    info = read_adapter(path)
    have = asdict(model.config)
    diff = [f"{k} {have.get(k)!r} (adapter's base: {v!r})" for k, v in info["base_config"].items()
            if have.get(k) != v]
    if diff:
        raise ValueError(f"{path} was trained on another base model: this one has {', '.join(diff)}")
    config = info["config"]
    peft = get_peft_model(model, config) if config.peft_type != "prefix" else \
        PrefixTuning(model, config.num_virtual_tokens, reparameterize=False)
    state = {k: B.asarray(v) for k, v in info["state"].items()}
    if config.peft_type in MERGEABLE:
        load_lora_state_dict(peft, state)
    else:
        check_partial_state(f"load_adapter({path})", peft_state_dict(peft, config.peft_type), state)
        peft.load_state_dict(state, strict=False)
    return peft


__all__ = ["ADAPTER_KIND", "DEFAULT_TARGETS", "MERGEABLE", "PEFT_TYPES", "PeftConfig", "adapter_base",
           "check_target_modules", "disable_adapter", "get_peft_model", "has_adapter", "load_adapter",
           "merge_peft", "peft_state_dict", "read_adapter", "save_adapter", "unload"]
