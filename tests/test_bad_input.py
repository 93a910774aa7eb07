"""Bad input to the ``minillm`` command: every case ends with exit status 2 and one line on stderr that
says what is wrong, before any work is done, and without a traceback. Cases are grouped by command; a
case is (arguments, words the message must contain)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minillm.cli import console_main

PRETRAIN = [
    (["--steps", "0"], "--steps: must be a whole number >= 1"),
    (["--steps", "-1"], "--steps"), (["--steps", "ten"], "--steps"), (["--steps", "2.5"], "--steps"),
    (["--lr", "-1"], "--lr: must be a finite number > 0"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"), (["--warmup", "-5"], "--warmup"), (["--eval-steps", "0"], "--eval-steps"),
    (["--eval-every", "-1"], "--eval-every"), (["--checkpoint-every", "-2"], "--checkpoint-every"),
    (["--n-heads", "0"], "--n-heads"), (["--n-layers", "0"], "--n-layers"), (["--d-model", "0"], "--d-model"),
    (["--d-ff", "0"], "--d-ff"), (["--context-length", "0"], "--context-length"),
    (["--batch-size", "0"], "--batch-size"),
    (["--objective", "denoise", "--batch-size", "0"], "--batch-size"),
    (["--dropout", "1.5"], "--dropout"),
    (["--arch", "llama", "--objective", "span"], "--arch llama is a decoder: it needs --objective clm"),
    (["--n-kv-heads", "2"], "--n-kv-heads needs --arch llama"), (["--arch", "bert"], "invalid choice"),
    (["--arch", "llama", "--n-kv-heads", "3"], "--n-kv-heads 3 must divide --n-heads 4"),
    (["--arch", "llama", "--n-kv-heads", "0"], "--n-kv-heads"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "1"], "--dropout"),
    (["--num-stories", "0"], "--num-stories"), (["--mix-tasks", "2"], "--mix-tasks"),
    (["--seed", "-1"], "--seed"), (["--objective", "gpt"], "invalid choice"),
    (["--export-dtype", "int8"], "invalid choice"),
    (["--data", "{tmp}/missing.txt"], "missing.txt' does not exist"),
    (["--data", "{tmp}"], "is not a file"),
    (["--tokenizer", "{tmp}/missing.json"], "does not exist"),
    (["--resume", "{tmp}/missing.npz"], "does not exist"),
    (["--init", "{tmp}/missing.npz"], "does not exist"),
    (["--out", "{tmp}/a_file"], "exists and is not a folder"),
    (["--out", "{tmp}/a_file/sub"], "is a file"),
    (["--export", "{tmp}"], "is a folder, not a file"),
    (["--d-model", "30", "--n-heads", "4", "--steps", "1"], "divisible"),
    (["--story-weights", "dragons=1", "--steps", "1"], "dragons"),
    (["--resume", "{tmp}/model.npz", "--steps", "1", "--out", "{tmp}/run"], "not a training checkpoint"),
    (["--resume", "{tmp}/weights.npz", "--steps", "1", "--out", "{tmp}/run"], "not an .npz archive"),
]
GENERATE = [
    (["--temperature", "nan"], "--temperature"), (["--temperature", "0"], "--temperature"),
    (["--temperature", "-1"], "--temperature"), (["--num-samples", "-2"], "--num-samples"),
    (["--num-samples", "0"], "--num-samples"), (["--top-k", "0"], "--top-k"), (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"), (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--seed", "-1"], "--seed"), (["--ckpt", "{tmp}/missing.npz"], "does not exist"),
    (["--ckpt", "{tmp}/weights.npz"], "not an .npz archive"), (["--ckpt", "{tmp}/plain.npz"], "no metadata"),
    (["--ckpt", "{tmp}/bad_config.npz"], "config.npz: its config is not valid: GPTConfig: n_heads must be"),
    (["--ckpt", "{tmp}/model.npz"], "embeds no tokenizer"),  # vocab 40: the shipped tokenizer's ids overflow
]
SFT = [
    (["--steps", "0"], "--steps"), (["--steps", "-4"], "--steps"), (["--lr", "-1"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--n-train", "0"], "--n-train"),
    (["--n-eval", "0"], "--n-eval"),
    (["--seed", "-3"], "--seed"), (["--task", "poetry"], "invalid choice"),
    (["--from", "{tmp}/missing.npz"], "does not exist"),
    (["--data", "{tmp}/missing.jsonl"], "does not exist"),
    (["--out", "{tmp}/a_file/model.npz"], "is a file"), (["--out", "{tmp}"], "is a folder"),
    (["--data", "{tmp}/bad_json.jsonl", "--no-eval"], "bad_json.jsonl:2: not valid JSON"),
    (["--data", "{tmp}/not_utf8.jsonl", "--no-eval"], "not_utf8.jsonl:1: not UTF-8"),
    (["--data", "{tmp}/deep.jsonl", "--no-eval"], "deep.jsonl:1: unreadable JSON"),
    (["--data", "{tmp}/no_messages.jsonl", "--no-eval"], "no_messages.jsonl:1: each line must be an object"),
    (["--data", "{tmp}/bad_role.jsonl", "--no-eval"], "bad_role.jsonl:1: message 0 has role 'robot'"),
    (["--data", "{tmp}/number_content.jsonl", "--no-eval"], "content must be a string"),
    (["--data", "{tmp}/bad_tool_calls.jsonl", "--no-eval"], "jsonl:1: message 1 (assistant): tool_calls"),
    (["--data", "{tmp}/tool_call_not_object.jsonl", "--no-eval"], "tool call 0 must be"),
]
CHAT = [
    (["--max-calls", "-1"], "--max-calls"), (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"), (["--ckpt", "{tmp}/missing.npz"], "does not exist"),
]
DPO = [
    (["--from", "{tmp}/missing.npz"], "does not exist"), (["--steps", "0"], "--steps"),
    (["--beta", "0"], "--beta"),
    (["--beta", "-1"], "--beta"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--rpo-alpha", "-1"], "--rpo-alpha"), (["--samples", "0"], "--samples"), (["--lr", "nan"], "--lr"),
    (["--sft-steps", "-1"], "--sft-steps"), (["--pairs", "{tmp}/missing.jsonl"], "does not exist"),
    (["--out", "{tmp}/a_file"], "not a folder"), (["--save-sft", "{tmp}"], "is a folder"),
    (["--loss-type", "kto"], "invalid choice"),
    (["--pairs", "{tmp}/pair_number_prompt.jsonl", "--quick"], "number_prompt.jsonl:1: a prompt must be"),
    (["--pairs", "{tmp}/pair_null_prompt.jsonl", "--quick"], "pair_null_prompt.jsonl:1: a prompt must be"),
    (["--pairs", "{tmp}/pair_missing.jsonl", "--quick"], "pair_missing.jsonl:1: a preference triplet needs"),
    (["--pairs", "{tmp}/pair_bad_message.jsonl", "--quick"], "pair_bad_message.jsonl:1: message 0"),
]
CLASSIFY = [
    (["--n-test", "0"], "--n-test"), (["--labels", "0,5"], "--labels"), (["--labels", "many"], "--labels"),
    (["--steps", "0"], "--steps"),
    (["--lr", "-3"], "--lr"),
    (["--ckpt", "{tmp}/missing.npz"], "does not exist"),
    (["--pooling", "max"], "invalid choice"),
]
MEMORY = [
    (["--params", "inf"], "--params"), (["--params", "-5"], "--params"), (["--params", "nan"], "--params"),
    (["--layers", "0"], "--layers"), (["--r", "0"], "--r"), (["--seq", "-1"], "--seq"),
    (["--hidden", "4095"], "divisible"), (["--method", "magic"], "invalid choice"),
]
OTHER = [
    (["bench", "nosuch"], "unknown benchmark 'nosuch'"), (["pipeline", "--seed", "-1"], "--seed"),
    (["pipeline", "--out", "{tmp}/a_file"], "not a folder"),
    (["--backend", "tpu", "pipeline"], "invalid choice"),
    (["nosuch"], "invalid choice"), ([], "required"),
    (["workshop"], "give --out DIR"), (["workshop", "--out", "{tmp}/a_file"], "not a folder"),
    (["workshop", "--bundle", "{tmp}/a_file/b"], "is a file"),
]
BY_COMMAND = {"pretrain": PRETRAIN, "generate": GENERATE, "sft": SFT, "chat": CHAT, "dpo": DPO,
              "finetune-classify": CLASSIFY, "memory": MEMORY, None: OTHER}
CASES = [(command, *case) for command, cases in BY_COMMAND.items() for case in cases]


def _bad_files(tmp):
    """The hand-broken inputs the cases point at."""
    (tmp / "a_file").write_text("not a folder")
    np.save(tmp / "w.npy", np.ones(3))
    (tmp / "w.npy").rename(tmp / "weights.npz")
    np.savez(tmp / "plain.npz", x=np.ones(2))
    from minillm.models import GPT, GPTConfig

    GPT(GPTConfig(vocab_size=40, context_length=8, d_model=8, n_heads=2, n_layers=1)).save_checkpoint(
        tmp / "model.npz")
    import minillm

    state = minillm.load(tmp / "model.npz")
    state["config"]["n_heads"] = "2"  # a hand-edited config
    minillm.save(state, tmp / "bad_config.npz")
    user = {"role": "user", "content": "hi"}
    lines = {
        "bad_json.jsonl": [json.dumps({"messages": [user]}), "{not json"],
        "deep.jsonl": ['{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"],
        "no_messages.jsonl": [json.dumps({"prompt": "hi"})],
        "bad_role.jsonl": [json.dumps({"messages": [{"role": "robot", "content": "x"}]})],
        "number_content.jsonl": [json.dumps({"messages": [{"role": "user", "content": 42}]})],
        "bad_tool_calls.jsonl": [json.dumps({"messages": [user, {"role": "assistant", "content": None,
                                                                  "tool_calls": "calculator"}]})],
        "tool_call_not_object.jsonl": [json.dumps({"messages": [user, {"role": "assistant", "content": None,
                                                                        "tool_calls": [3]}]})],
        "pair_number_prompt.jsonl": [json.dumps({"prompt": 7, "chosen": "a", "rejected": "b"})],
        "pair_null_prompt.jsonl": [json.dumps({"prompt": None, "chosen": "a", "rejected": "b"})],
        "pair_missing.jsonl": [json.dumps({"prompt": "hi", "chosen": "a"})],
        "pair_bad_message.jsonl": [json.dumps({"prompt": [{"role": "user"}], "chosen": "a",
                                                "rejected": "b"})],
    }
    for name, rows in lines.items():
        (tmp / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp / "not_utf8.jsonl").write_bytes(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}\n')


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    _bad_files(tmp)
    return tmp


@pytest.mark.parametrize("command,args,words", CASES,
                         ids=[f"{c[0]} {' '.join(c[1])}"[:60] for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(command, args, words, bad_dir, capsys, monkeypatch):
    monkeypatch.delenv("MINILLM_TRACEBACK", raising=False)
    argv = ([command] if command else []) + [a.replace("{tmp}", str(bad_dir)) for a in args]
    try:
        code = console_main(argv)
    except SystemExit as e:  # argparse rejects at parse time
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert words in lines[0], lines[0]
    assert "Traceback" not in err


def test_cases_cover_every_command():
    from minillm.cli import COMMANDS

    covered = {c[0] for c in CASES} | {c[1][0] for c in CASES if c[0] is None and c[1]}
    assert set(COMMANDS) - covered == set()
