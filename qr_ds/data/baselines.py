"""The paper's Table 1 baselines (§3.4) as data: the templates that write new questions, the training
tasks of the multi-task objectives with their prefixes and loss weights, and each baseline as the
styles it asks the teacher for and the objective it trains with.

A written question is never trained on as written: ``qr_ds.teacher.derive`` has the teacher solve it in
a second call, and the filter keeps that solution only when its answer agrees with the gold the
question carries (the original's for a rephrase, the writer's stated one otherwise), then the judge
checks its steps.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAIN = "main"  # question -> path: what eval asks every student, so it never has a prefix


@dataclass(frozen=True)
class Writer:
    """A template whose reply is a question (with, unless ``keeps_answer``, its answer), not a path."""

    template: str  # with {question}
    solve_style: str  # the style that solves the written question in the second call
    keeps_answer: bool  # a rephrase: the original's gold is the written question's gold
    train_task: str  # the training task the solved question's path serves


@dataclass(frozen=True)
class TrainTask:
    prefix: str  # put before the question the student sees: which task the model is asked to do
    weight: float  # default loss weight (data.task_weights overrides it)


@dataclass(frozen=True)
class Baseline:
    styles: tuple[str, ...]  # what `qr-ds generate` asks per question (path styles, then writers)
    objective: str = "sft"  # data.objective to train with
    min_samples: int = 1  # samples_per_style the method needs


WRITERS: dict[str, Writer] = {
    "rephrase": Writer(
        "Rephrase the following question without changing its meaning or its answer. Do not solve it.\n"
        "{question}\n\nReply with one line: 'Rephrased question: ...'", "cot", True, MAIN),
    "new_question": Writer(
        "Here is an example question. Write one new question of the same kind and difficulty, with other "
        "names and numbers, and give its answer.\n{question}\n\n"
        "Reply with two lines: 'New question: ...' and 'Answer: ...'", "cot", False, MAIN),
    "backward_question": Writer(
        "Here is a question. Write its backward question: one that gives the original question's answer as "
        "known and asks for a number the original question gave, and give that number as its answer.\n"
        "{question}\n\nReply with two lines: 'Backward question: ...' and 'Answer: ...'",
        "backward_reasoning", False, "backward_reasoning"),
}
# The styles that solve a written question, beside the six path styles of data/styles.py.
SOLVE_TEMPLATES: dict[str, str] = {
    "backward_reasoning": "{question}\n\nThis question runs a story backwards: undo its operations from the last "
                          "one to the first, writing each step, then give the final answer.",
}
WRITTEN = re.compile(r"^\s*\**(?:rephrased question|new question|backward question)\**\s*:\s*(.+?)\s*$",
                     re.IGNORECASE | re.MULTILINE)
STATED = re.compile(r"^\s*\**answer\**\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)

TRAIN_TASKS: dict[str, TrainTask] = {
    MAIN: TrainTask("", 1.0),  # next-token SFT on the path (SKD, Li et al. 2023b)
    # Distill Step-by-Step (Hsieh et al. 2023): L = L_label + lambda * L_rationale, lambda = 1, each task
    # marked by a prefix on the input. Here the label task keeps the bare question (what eval asks) and
    # answers in one line; the rationale task's target is the whole path (its last line states the answer).
    "label": TrainTask("", 1.0),
    "rationale": TrainTask("[rationale] ", 1.0),
    # RevThink (Chen et al. 2024): the mean of three losses with equal weights: question -> forward
    # reasoning (the main task), question -> backward question, backward question -> backward reasoning.
    # The backward question is asked for with its own instruction; a prefix marks it here.
    "backward_question": TrainTask("[backward question] ", 1.0),
    "backward_reasoning": TrainTask("", 1.0),
}
# data.objective -> {a record's train_task: the tasks it is trained as} (train/encoding.py expands them)
OBJECTIVES: dict[str, dict[str, tuple[str, ...]]] = {
    "sft": {},
    "step_by_step": {MAIN: ("label", "rationale")},
    "revthink": {"backward_reasoning": ("backward_reasoning", "backward_question")},
}


def _source_question(r) -> str:
    return r.meta["example_meta"]["source_question"]


def _answer_line(r) -> str:
    if r.answer is None:
        raise ValueError(f"path {r.id}: the label task trains on the filter's extracted answer, and this path "
                         "has none: train on `qr-ds filter`'s output")
    return f"The answer is {r.answer}."


# task -> (the question the student sees, the target) of a record trained as that task
TARGETS = {
    MAIN: lambda r: (r.question, r.response),
    "label": lambda r: (r.question, _answer_line(r)),
    "rationale": lambda r: (r.question, r.response),
    "backward_question": lambda r: (_source_question(r), r.question),
    "backward_reasoning": lambda r: (r.question, r.response),
}


# Table 1's rows (§3.4) by name: SKD, Distill Step-by-Step, Rephrase Question, Question Aug, Answer Aug, RevThink
BASELINES: dict[str, Baseline] = {
    "skd": Baseline(("cot",)),
    "step_by_step": Baseline(("cot",), objective="step_by_step"),
    "rephrase": Baseline(("cot", "rephrase")),
    "question_aug": Baseline(("cot", "new_question")),
    "answer_aug": Baseline(("cot",), min_samples=2),
    "revthink": Baseline(("cot", "backward_question"), objective="revthink"),
}


def teacher_calls(baseline: str, samples_per_style: int) -> int:
    """Teacher calls per question: every style's samples, and one more call per written question to solve it."""
    b = BASELINES[baseline]
    return sum(samples_per_style * (2 if s in WRITERS else 1) for s in b.styles)


def written_question(style: str, reply: str, gold: str) -> tuple[str, str] | None:
    """(question, its gold) from a writer's reply, or None when the reply does not hold them."""
    q = WRITTEN.search(reply)
    if not q:
        return None
    if WRITERS[style].keeps_answer:
        return q.group(1), gold
    a = STATED.search(reply)
    return (q.group(1), a.group(1)) if a else None
