"""``minillm generate``: sample continuations of a prompt from a checkpoint (GPT or Llama), a Hugging Face
model folder, or a base model with a PEFT adapter applied (``--adapter``). The sampling itself is
``minillm.generate``; this module only chooses the model."""

from __future__ import annotations

from minillm.generate import generate_text
from minillm.models.auto import add_model_arguments, model_source


def add_arguments(p) -> None:
    """The ``minillm generate`` options."""
    from minillm import options as opt

    add_model_arguments(p, "--ckpt", "ckpt", "checkpoint, GPT or Llama (default: the shipped "
                                             "minillm/checkpoints/gpt_tiny.npz, or an --adapter's base)")
    p.add_argument("--adapter", type=opt.input_file,
                   help="a PEFT adapter written by minillm sft/dpo --peft, applied onto its base")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=opt.positive_int, default=100)
    p.add_argument("--temperature", type=opt.positive_float, default=0.8, help="> 0 (use --greedy for 0)")
    p.add_argument("--top-k", type=opt.positive_int, default=None)
    p.add_argument("--top-p", type=opt.top_p_value, default=None)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=opt.nonnegative_int, default=None, help="seed for reproducible sampling")
    p.add_argument("--num-samples", type=opt.positive_int, default=1)
    p.add_argument("--no-cache", action="store_true", help="recompute every position (no KV cache)")


def main(args) -> int:
    """``minillm generate``: sample ``--num-samples`` continuations of ``--prompt`` from a checkpoint (GPT or
    Llama), a Hugging Face folder, or a base with ``--adapter`` applied."""
    from minillm.models.auto import load_causal_lm
    from minillm.peft.peft_model import adapter_base, load_adapter
    from minillm.shipped import SHIPPED_GPT

    source = model_source(args, "ckpt", None)
    if args.adapter and source is None:
        source = adapter_base(args.adapter)
    model, tok = load_causal_lm(source or SHIPPED_GPT)
    if args.adapter:
        model = load_adapter(model, args.adapter)
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        text = generate_text(model, tok, args.prompt, args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p, greedy=args.greedy, seed=seed,
                             use_cache=not args.no_cache)
        print(args.prompt + text)
        if i + 1 < args.num_samples:
            print("---")
    return 0
