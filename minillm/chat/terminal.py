"""``minillm chat``: talk to a chat model in the terminal, with the tools enabled.

Reads one user message per line from standard input (interactive or piped), runs the agent loop
(``minillm.chat.tools.run_agent_turn``) and prints each tool call, its result and the reply.
"""

from __future__ import annotations

import sys

from minillm import options as opt
from minillm.chat import template as chat
from minillm.chat.tools import default_registry, run_agent_turn
from minillm.models.gpt import GPT
from minillm.shipped import SHIPPED_SFT


def add_arguments(p) -> None:
    """The ``minillm chat`` options."""
    p.add_argument("--ckpt", type=opt.input_file,
                   help="checkpoint (default: the shipped minillm/checkpoints/gpt_sft.npz)")
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-new-tokens", type=opt.positive_int, default=None,
                   help="reply length cap (default: the rest of the context; the whole prompt stays in view)")
    p.add_argument("--max-calls", type=opt.nonnegative_int, default=3, help="tool calls per turn at most")
    p.add_argument("--temperature", type=opt.nonnegative_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=opt.nonnegative_int, default=None)
    p.add_argument("--keep-history", action="store_true", help="keep earlier turns (the context is short)")


def main(args) -> int:
    """``minillm chat --ckpt ...``: a terminal chat with the tools enabled (reads stdin; works piped)."""
    model, tok = GPT.load_with_tokenizer(args.ckpt or SHIPPED_SFT)
    generate = chat.make_generate_fn(model, tok, max_new_tokens=args.max_new_tokens,
                                     temperature=args.temperature, seed=args.seed)
    registry = default_registry()
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"minillm chat ({', '.join(registry.names())} enabled); empty line or Ctrl-D quits")
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict] = list(system)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = read_line()
        if not line or (interactive and not line.strip()):
            break
        if not line.strip():
            continue
        if not args.keep_history:
            messages = list(system)
        messages.append({"role": "user", "content": line.strip()})
        messages, trace = run_agent_turn(generate, messages, registry, max_calls=args.max_calls)
        for step in trace:
            if step.result is not None:
                print(f"  [tool call] {step.output.strip()}")
                print(f"  [tool result] {step.result.content}")
        print(f"assistant> {messages[-1]['content']}", flush=True)
    return 0


def read_line() -> str:
    """One line of standard input; bytes that are not UTF-8 become U+FFFD instead of ending the chat."""
    raw = sys.stdin.buffer.readline() if hasattr(sys.stdin, "buffer") else sys.stdin.readline()
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
