"""The instructor's guide ``minillm workshop`` writes: run order, what each lesson needs first, measured run
times, which exercises fit a 90-minute and a full-day session, and the paper behind each lesson."""

from __future__ import annotations

import json
from pathlib import Path

# lesson -> (lessons to do first, shipped files it starts from, the paper and section it follows)
LESSONS: dict[int, tuple[tuple[int, ...], str, str]] = {
    1: ((), "nothing", "Rumelhart, Hinton & Williams 1986, *Learning representations by back-propagating "
                       "errors*; Baydin et al. 2018, *Automatic differentiation in machine learning*, §3"),
    2: ((), "nothing (it trains its own tokenizer)",
        "Sennrich, Haddow & Birch 2016, *Neural Machine Translation of Rare Words with Subword Units*, §3.1; "
        "Radford et al. 2019 (GPT-2), §2.2 (byte-level BPE)"),
    3: ((1,), "gpt_tiny.npz", "Vaswani et al. 2017, *Attention Is All You Need*, §3.2"),
    4: ((2, 3), "gpt_tiny.npz", "Radford et al. 2019 (GPT-2), §2; Holtzman et al. 2020, *The Curious Case "
                                "of Neural Text Degeneration*, §3.1 (nucleus sampling)"),
    5: ((2, 3), "bert_tiny.npz", "Devlin et al. 2019, *BERT*, §3.1 (MLM 80/10/10, NSP)"),
    6: ((5,), "bart_tiny.npz, t5_tiny.npz", "Lewis et al. 2020, *BART*, §2.2; Raffel et al. 2020, *T5*, "
                                            "§2.1 (relative position buckets) and §3.3 (span corruption)"),
    7: ((5,), "bert_tiny.npz", "Gururangan et al. 2020, *Don't Stop Pretraining*, §3; Schick & Schütze 2021, "
                               "*Exploiting Cloze Questions* (PET), §2"),
    8: ((4,), "gpt_tiny.npz, gpt_sft.npz, gpt_sft_code.npz", "Ouyang et al. 2022, *InstructGPT*, §3.5 (SFT); "
                                                            "Chen et al. 2021, *Codex*, §2.1 (pass@k)"),
    9: ((8,), "gpt_tiny.npz, gpt_sft_cot.npz", "Wei et al. 2022, *Chain-of-Thought Prompting*, §2–3"),
    10: ((8,), "gpt_tiny.npz, gpt_sft.npz",
         "Schick et al. 2023, *Toolformer*, §2; Yao et al. 2023, *ReAct*, §2"),
    11: ((8,), "gpt_sft_mixed.npz, dpo_pairs.jsonl",
         "Rafailov et al. 2023, *Direct Preference Optimization*, §4 (Eq. 7) and §5"),
    12: ((4,), "gpt_tiny.npz", "Hu et al. 2021, *LoRA*, §4.1"),
    13: ((12,), "gpt_tiny.npz",
         "Dettmers et al. 2023, *QLoRA*, §3 (NF4, double quantisation); Li & Liang 2021, *Prefix-Tuning*, "
         "§4; "
         "Houlsby et al. 2019, *Parameter-Efficient Transfer Learning*, §2"),
    14: ((1, 3), "nothing (g++ for the CPU emulator; a GPU is optional)",
         "Dao et al. 2022, *FlashAttention*, §3.1; Milakov & Gimelshein 2018, *Online normalizer calculation "
         "for softmax*, §3"),
    15: ((3, 4), "gpt_tiny.npz (its learned position table, for one comparison)",
         "Zhang & Sennrich 2019, *Root Mean Square Layer Normalization*, §3; Su et al. 2021, *RoFormer*, "
         "§3.2–3.4; Shazeer 2020, *GLU Variants Improve Transformer*, §2; Ainslie et al. 2023, *GQA*, §2; "
         "Touvron et al. 2023, *LLaMA*, §2.2"),
    16: ((4, 13), "nothing (a tiny GPT trained from scratch; mpi4py and mpich for the 2-rank run)",
         "Rajbhandari et al. 2020, *ZeRO: Memory Optimizations Toward Training Trillion Parameter "
         "Models*, §5 and §7; Patarasuk & Yuan 2009, *Bandwidth optimal all-reduce algorithms for "
         "clusters of workstations*"),
}

# Seconds to execute each notebook top to bottom (nbclient, one BLAS thread, an idle 2-core machine, in CI):
# (fastest, slowest) of 2 runs, the instructor copy and the student copy.
RUN_SECONDS: dict[int, tuple[float, float]] = {
    1: (2.4, 3.0),
    2: (4.1, 4.6),
    3: (2.7, 5.0),
    4: (62.4, 64.5),
    5: (2.8, 3.0),
    6: (3.3, 3.4),
    7: (144.2, 144.4),
    8: (50.5, 51.4),
    9: (12.5, 14.3),
    10: (13.0, 14.5),
    11: (48.3, 51.9),
    12: (51.5, 53.3),
    13: (57.1, 61.5),
    14: (4.5, 4.9),
    15: (85.0, 104.5),
    16: (5.3, 7.5),
}

NINETY_MINUTES = (1, 3, 11, 12)  # lessons whose exercises make a 90-minute session: engine to alignment


def _title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"]).splitlines()[0]
    return first.lstrip("# ").split("·", 1)[-1].strip()


def _run_time(lesson: int) -> str:
    if lesson not in RUN_SECONDS:
        return "not measured"
    lo, hi = RUN_SECONDS[lesson]
    return f"{lo:.0f}–{hi:.0f} s"


def guide_text(lessons: Path) -> str:
    """The whole guide as Markdown."""
    from minillm.exercises import by_lesson

    paths = {int(p.name[:2]): p for p in sorted(lessons.glob("[0-9][0-9]_*.ipynb"))}
    rows = []
    for n, path in paths.items():
        needs, files, paper = LESSONS.get(n, ((), "", ""))
        first = ", ".join(f"{k:02d}" for k in needs) or "—"
        names = ", ".join(f"`{ex.name}`" for ex in by_lesson(n)) or "—"
        rows.append(f"| {n:02d} | {_title(path)} | {first} | {files} | {_run_time(n)} | {names} | {paper} |")
    short = [ex.name for n in NINETY_MINUTES for ex in by_lesson(n)]
    every = [ex.name for n in paths for ex in by_lesson(n)]
    return "\n".join([
        "# minillm workshop: instructor's guide", "",
        "`student/` holds the notebooks the learners open: each exercise is a function whose body is "
        "`raise NotImplementedError()`; the check after it says *not attempted yet* until the learner's "
        "version passes, and the cells below keep running on minillm's own implementation meanwhile. "
        "`instructor/` holds the same notebooks with the solutions (between nbgrader's `### BEGIN SOLUTION` "
        "/ `### END SOLUTION` markers, so they can be nbgrader's source).", "",
        "## Before the day (the only step that needs a network)", "",
        "```bash", "minillm workshop --bundle bundle/      # minillm's wheel and every dependency",
        "# on each laptop, offline:", 'pip install --no-index --find-links bundle/ "minillm[lessons]"',
        "jupyter lab student/", "```", "",
        "Nothing in the lessons downloads: the data come from minillm's generators and the checkpoints ship "
        "with the package. A laptop needs Python 3.10+, about 1 GB of disk and no GPU.", "",
        "## Run order", "",
        "| lesson | title | do first | starts from | run time | exercises | paper |",
        "| --- | --- | --- | --- | --- | --- | --- |", *rows, "",
        "Run times are measured here (one BLAS thread, a shared 2-core machine); a laptop is usually faster.",
        "",
        "## A 90-minute session", "",
        f"Lessons {', '.join(f'{n:02d}' for n in NINETY_MINUTES)}: the engine, attention, the DPO loss and "
        f"LoRA — {len(short)} exercises ({', '.join(f'`{n}`' for n in short)}). Each lesson runs on its "
        "shipped checkpoint, so none needs an earlier one to have run.", "",
        "## A full day", "",
        f"All {len(paths)} lessons in order, {len(every)} exercises: 01–04 in the morning (engine, "
        "tokenizer, attention, pre-training), 05–07 and 08–10 after lunch (encoders, transfer, SFT, "
        "reasoning, tools), "
        "11–16 to close (DPO, LoRA, QLoRA and memory, GPU kernels in CUDA C on the CPU emulator, today's "
        "decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention; data parallelism: the ring all-reduce and "
        "ZeRO on two MPI ranks).", "",
        "## Grading", "",
        "Every exercise is checked in the notebook by `minillm.exercises.check`, against minillm's reference "
        "on generated inputs; a wrong answer names the first failing case and, for a common mistake, a hint "
        "(never the solution). With nbgrader, use `instructor/` as the source folder.", "",
    ])
