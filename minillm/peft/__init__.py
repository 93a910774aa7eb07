"""Parameter-efficient fine-tuning: LoRA, QLoRA (NF4), prefix tuning, bottleneck adapters, and the
memory arithmetic that motivates them. Each method freezes the pre-trained model and trains a small add-on.

Imports go one way: ``surgery`` (find and replace sub-modules) ← ``lora`` ← ``qlora`` (quantise + LoRA);
``adapter`` uses ``surgery`` too.
"""

from minillm.peft.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    format_trainable_parameters,
    load_lora_state_dict,
    lora_disabled,
    lora_param_count,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    print_trainable_parameters,
    trainable_parameters,
    unmerge_lora,
)
from minillm.peft.qlora import NF4_CODE, QuantizedLinear, apply_qlora, nf4_code_values, quantize_nf4
from minillm.peft.surgery import find_modules, is_linear_like, matches, parent_and_name, replace_module

__all__ = [
    "LoRAConfig", "LoRALinear", "NF4_CODE", "QuantizedLinear", "apply_lora", "apply_qlora",
    "find_modules", "format_trainable_parameters", "is_linear_like", "load_lora_state_dict", "lora_disabled",
    "lora_param_count", "lora_state_dict", "matches", "merge_and_unload", "merge_lora", "nf4_code_values",
    "parent_and_name", "print_trainable_parameters", "quantize_nf4", "replace_module", "trainable_parameters",
    "unmerge_lora",
]
