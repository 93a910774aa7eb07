"""Every checkpoint and data file that ships with minillm, in one place.

Each is made by one of minillm's own commands (the README gives each recipe) and lives in
``minillm/checkpoints/``; nothing is downloaded. Lessons and commands start from these.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"

TOKENIZER = CHECKPOINTS / "tokenizer.json"            # byte-level BPE on world text (lesson 02)
SHIPPED_GPT = CHECKPOINTS / "gpt_tiny.npz"            # causal-LM pre-training (lesson 04)
SHIPPED_BERT = CHECKPOINTS / "bert_tiny.npz"          # MLM + NSP, with a domain-adaptive stage (05, 07)
SHIPPED_BART = CHECKPOINTS / "bart_tiny.npz"          # denoising (06)
SHIPPED_T5 = CHECKPOINTS / "t5_tiny.npz"              # span corruption + prefixed tasks (06)
SHIPPED_SFT = CHECKPOINTS / "gpt_sft.npz"             # SFT mix: tools, code, CoT (08-10)
SHIPPED_SFT_CODE = CHECKPOINTS / "gpt_sft_code.npz"   # --task code specialist (08)
SHIPPED_SFT_COT = CHECKPOINTS / "gpt_sft_cot.npz"     # --task cot+direct specialist (09)
SHIPPED_SFT_MIXED = CHECKPOINTS / "gpt_sft_mixed.npz"  # mixed-quality SFT: the DPO reference (11)
SHIPPED_DPO_PAIRS = CHECKPOINTS / "dpo_pairs.jsonl"   # judged preference pairs made by minillm dpo (11)

__all__ = [
    "CHECKPOINTS", "SHIPPED_BART", "SHIPPED_BERT", "SHIPPED_DPO_PAIRS", "SHIPPED_GPT", "SHIPPED_SFT",
    "SHIPPED_SFT_CODE", "SHIPPED_SFT_COT", "SHIPPED_SFT_MIXED", "SHIPPED_T5", "TOKENIZER",
]
