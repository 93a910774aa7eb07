"""The chat template: conversations (OpenAI-style message dicts) to token ids and a loss mask.

A conversation renders as role-tagged turns, each closed by ``<|end|>``::

    <|system|>You are helpful.<|end|><|user|>What is sqrt(15625)?<|end|>
    <|assistant|><|tool_call|>{"tool_call": {"name": "calculator", "arguments": {...}}}<|end|>
    <|tool_result|>{"result": 125}<|end|><|assistant|>sqrt(15625) = 125.<|end|>

Only what the assistant writes (its text, the ``<|tool_call|>`` token and the call's JSON, and the closing
``<|end|>``) has loss mask 1; the role headers, the system/user turns and the tool results have mask 0, so
supervised fine-tuning learns to answer, not to predict prompts. ``sft_example`` turns (ids, mask) into
next-token (inputs, labels) with labels -100 where the mask is 0 (``F.cross_entropy`` ignores those).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy

from minillm import backend as B

SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
TOOL_CALL, TOOL_RESULT, END = "<|tool_call|>", "<|tool_result|>", "<|end|>"
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT, "tool": TOOL_RESULT}
IGNORE_INDEX = -100


class ChatFormatError(ValueError):
    """A conversation is not a list of well-formed message dicts (the message says which and why)."""


def _check_message(i: int, m) -> None:
    if not isinstance(m, dict):
        raise ChatFormatError(f"message {i} must be a dict, got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLE_TOKENS:
        raise ChatFormatError(f"message {i} has role {role!r}; expected one of {list(ROLE_TOKENS)}")
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        raise ChatFormatError(f"message {i} ({role}) content must be a string or None, got "
                              f"{type(content).__name__}")
    if role != "assistant" and content is None:
        raise ChatFormatError(f"message {i} ({role}) has no content")
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or not calls:
            raise ChatFormatError(f"message {i} ({role}): tool_calls must be a non-empty list on an "
                                  "assistant message")
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(
                    fn.get("arguments", {}), (str, dict)):
                raise ChatFormatError(f"message {i} tool call {j} must be {{\"function\": {{\"name\": str, "
                                      "\"arguments\": object or JSON string}}")
    if m.get("raw_tool_call") is not None and not isinstance(m["raw_tool_call"], str):
        raise ChatFormatError(f"message {i}: raw_tool_call must be a string")


def check_conversation(conversation) -> list[dict]:
    """``conversation`` if it is a list of well-formed messages (what ``render`` accepts), else
    ChatFormatError naming the first bad message and what is wrong with it."""
    if not isinstance(conversation, list):
        raise ChatFormatError(f"a conversation is a list of messages, got {type(conversation).__name__}")
    for i, m in enumerate(conversation):
        _check_message(i, m)
    return conversation


def assistant_text(message: dict) -> str:
    """What the assistant wrote for this message, exactly as it is tokenized (after ``<|assistant|>``).

    A ``tool_calls`` message is written as ``<|tool_call|>`` + ``{"tool_call": {"name", "arguments"}}``
    (one call per message); a malformed call the agent loop kept verbatim (``raw_tool_call``) as itself.
    """
    from minillm.chat.tools import format_tool_call

    if message.get("tool_calls"):
        fn = message["tool_calls"][0]["function"]
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        return TOOL_CALL + format_tool_call(fn["name"], args)
    if message.get("raw_tool_call") is not None:
        raw = message["raw_tool_call"]
        return raw if raw.startswith(TOOL_CALL) else TOOL_CALL + raw
    return message.get("content") or ""


def _encode_assistant(tokenizer, text: str) -> list[int]:
    ids = []
    if text.startswith(TOOL_CALL):
        ids.append(tokenizer.token_to_id(TOOL_CALL))
        text = text[len(TOOL_CALL):]
    return ids + tokenizer.encode_ordinary(text)


def render(conversation: list[dict], tokenizer, add_generation_prompt: bool = False
           ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Token ids (int64) and a loss mask (int8, 1 = the assistant wrote this token) for a conversation.

    Message text is encoded as ordinary text, so a user typing ``<|end|>`` cannot forge a turn.
    ``add_generation_prompt`` appends ``<|assistant|>`` so a model continues with the assistant's reply.
    """
    check_conversation(list(conversation) if isinstance(conversation, tuple) else conversation)
    end = tokenizer.token_to_id(END)
    ids: list[int] = []
    mask: list[int] = []
    for m in conversation:
        ids.append(tokenizer.token_to_id(ROLE_TOKENS[m["role"]]))
        mask.append(0)
        if m["role"] == "assistant":
            body = _encode_assistant(tokenizer, assistant_text(m)) + [end]
            ids += body
            mask += [1] * len(body)
        else:
            body = tokenizer.encode_ordinary(m["content"]) + [end]
            ids += body
            mask += [0] * len(body)
    if add_generation_prompt:
        ids.append(tokenizer.token_to_id(ASSISTANT))
        mask.append(0)
    return numpy.asarray(ids, dtype=numpy.int64), numpy.asarray(mask, dtype=numpy.int8)


def render_prompt(conversation: list[dict], tokenizer) -> numpy.ndarray:
    """The ids a model continues to write the next assistant message (ends with ``<|assistant|>``)."""
    return render(conversation, tokenizer, add_generation_prompt=True)[0]


def sft_example(ids: numpy.ndarray, mask: numpy.ndarray) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Next-token (inputs, labels): inputs ids[:-1], labels ids[1:] with -100 wherever the predicted token
    is not the assistant's (its mask is 0), so prompts and tool results add nothing to the loss."""
    x = numpy.asarray(ids[:-1], dtype=numpy.int64)
    y = numpy.where(numpy.asarray(mask[1:]) == 1, ids[1:], IGNORE_INDEX).astype(numpy.int64)
    return x, y


def collate(examples: list[tuple[numpy.ndarray, numpy.ndarray]], pad_id: int, length: int | None = None
            ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Right-pad (x, y) pairs into (B, T) arrays: x with ``pad_id``, y with -100."""
    T = length or max(len(x) for x, _ in examples)
    X = numpy.full((len(examples), T), pad_id, dtype=numpy.int64)
    Y = numpy.full((len(examples), T), IGNORE_INDEX, dtype=numpy.int64)
    for i, (x, y) in enumerate(examples):
        n = min(T, len(x))
        X[i, :n], Y[i, :n] = x[:n], y[:n]
    return X, Y


def decode_reply(tokenizer, ids) -> str:
    """The text of generated assistant ids, cut at ``<|end|>`` (the ``<|tool_call|>`` token kept as text)."""
    end = tokenizer.token_to_id(END)
    ids = [int(i) for i in ids]
    if end in ids:
        ids = ids[:ids.index(end)]
    return tokenizer.decode(ids)


def make_generate_fn(model, tokenizer, max_new_tokens: int | None = 64, temperature: float = 0.0,
                     top_k: int | None = None, seed: int | None = None,
                     min_new_tokens: int = 16) -> Callable[[list[dict]], str]:
    """``generate(messages) -> assistant text`` for ``minillm.chat.tools.run_agent_turn``: renders the prompt
    (keeping its last ``context_length - max_new_tokens`` tokens if it is too long), samples with
    ``minillm.generate.generate`` until ``<|end|>``, and decodes the reply.

    ``max_new_tokens=None`` fills the context instead: the whole prompt is kept (its last
    ``context_length - min_new_tokens`` tokens at most) and the reply may use the rest of the context, the
    budget a model trained on conversations of ``context_length`` tokens had. A fixed ``max_new_tokens``
    near the context length would cut the prompt (e.g. 96 of 128 keeps only its last 32 tokens)."""
    from minillm.generate import generate

    end = tokenizer.token_to_id(END)
    ctx = model.config.context_length
    keep = max(1, ctx - (max_new_tokens if max_new_tokens is not None else min_new_tokens))

    def reply(messages: list[dict]) -> str:
        prompt = render_prompt(messages, tokenizer)[-keep:]
        n_new = max_new_tokens if max_new_tokens is not None else ctx - len(prompt)
        out = generate(model, prompt, max_new_tokens=n_new, temperature=temperature, top_k=top_k,
                       stop_tokens=[end], seed=seed)
        out = B.to_numpy(out).reshape(-1)[len(prompt):]
        return decode_reply(tokenizer, out)

    return reply
