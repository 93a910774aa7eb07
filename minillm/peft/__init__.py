"""Parameter-efficient fine-tuning: LoRA, QLoRA (NF4), prefix tuning, bottleneck adapters, and the
memory arithmetic that motivates them. Each method freezes the pre-trained model and trains a small add-on.
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

__all__ = [
    "LoRAConfig", "LoRALinear", "NF4_CODE", "QuantizedLinear", "apply_lora", "apply_qlora",
    "format_trainable_parameters", "load_lora_state_dict", "lora_disabled", "lora_param_count",
    "lora_state_dict",
    "merge_and_unload", "merge_lora", "nf4_code_values", "print_trainable_parameters", "quantize_nf4",
    "trainable_parameters", "unmerge_lora",
]
