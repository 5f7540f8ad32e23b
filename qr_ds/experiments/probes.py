"""Premise probes for the demo task: does it give each part of QR-Distill work, before any method runs?

Plain SFT only (no router, no mutual loss), with the production pieces: the scripted stand-in
teacher and judge through ``generate`` and ``run_filter``, the demo's tiny students
(``build_tiny_student``), ``encode_all``/``collate`` with one context length per student, the
trainer's ``Student`` forward, optimizer and schedule, and accuracy by greedy generation
(``HFBackend``) scored by the task's own answer extraction. Each probe is a set of SFT runs:

- filter: the clean (filtered) pool against the answer-checked and the unfiltered ones, per student;
- style x student: each student on one style at a time;
- knowledge: each student on the styles its context holds (``STYLES_OF``), what it answers that the other does not;
- curve: the clean pool at several step budgets, to fix the demo's;
- harm (harm variant): each student on all six styles against all but the harmful ones, at equal
  steps: what routing could gain by keeping those paths from a student (the oracle's premise). Two
  forms of "without": the kept styles in full batches (a dropped path replaced by another), and all
  six in the same batches with the harmful ones at weight 0 (a dropped path not replaced, as the
  trainer's shared batch drops it): their difference is what the lost exposure costs. And both forms
  again for the harmful paths alone (``HARMFUL``: the teacher's corrected-late paths), not their
  styles: a router decides per path, and the harm styles' other paths may help.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qr_ds.data.pool import PathRecord, load_pool
from qr_ds.data.styles import STYLES
from qr_ds.tasks import Example, get_task, solve_steps
from qr_ds.teacher.scripted import LONG_STYLES, QUICK_STYLES, corrected_late

KINDS = ("llama-bpe", "qwen-bpe")
# the short-context student learns the quick styles only; the long-context one, all six
STYLES_OF = {"llama-bpe": QUICK_STYLES, "qwen-bpe": STYLES}


@dataclass(frozen=True)
class Knobs:
    """Fixed before any QR-Distill run; the demo's values where it has them (qr_ds/demo.py)."""
    train_questions: int = 150
    test_questions: int = 200
    # training context per student: 150 holds every quick-style path of the short student (prompt
    # included) and cuts every long-style one before its answer line; 512 holds every path
    max_len: dict = field(default_factory=lambda: {"llama-bpe": 150, "qwen-bpe": 512})
    lr: float = 3e-3
    batch_paths: int = 8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # the trainer's linear decay to 0.1 x lr
    grad_clip: float = 1.0
    vocab_size: int = 600
    hidden: int = 128
    layers: int = 2
    max_new_tokens: int = 448  # the longest response (420 of the Qwen2 student's tokens), with room
    harm_styles: tuple[str, ...] = ()  # the demo's harm variant (qr_ds/demo.py VARIANTS): ("backward",)


POOLS = ("clean", "answer_checked", "unfiltered")
HARMFUL = "harmful"  # in Spec.masked: the harm variant's corrected-late paths, whatever their style


@dataclass
class Data:
    pools: dict[str, list[PathRecord]]  # clean: kept by the answer check and the scripted judge;
    # answer_checked: by the answer check alone; unfiltered: every generated path; harmless: clean
    # but the harm variant's corrected-late paths
    test: list[Example]
    corpus: list[str]  # what the students' tokenizers are trained on, as the demo's


def build_data(work: Path, knobs: Knobs) -> Data:
    """Questions, the scripted stand-in teacher's pool and the scripted judge's filter, as the demo makes them."""
    from qr_ds.config import from_dict
    from qr_ds.filter.config import FilterConfig
    from qr_ds.filter.run import run_filter
    from qr_ds.tasks import write_synthetic
    from qr_ds.teacher.config import GenerateConfig
    from qr_ds.teacher.generate import generate

    work.mkdir(parents=True, exist_ok=True)
    train_q, test_q, pool = work / "train.jsonl", work / "test.jsonl", work / "pool.jsonl"
    kept = {"clean": work / "filtered.jsonl", "answer_checked": work / "answer_checked.jsonl"}
    if not all(p.is_file() for p in kept.values()):
        write_synthetic(train_q, knobs.train_questions, seed=0)
        write_synthetic(test_q, knobs.test_questions, seed=1)
        generate(from_dict(GenerateConfig, {"task": "synthetic", "data": str(train_q), "out": str(pool),
                                            "teacher": {"backend": "scripted", "sampling": {"seed": 0},
                                                        "scripted": {"harm_styles": list(knobs.harm_styles)}}}),
                 progress=False)
        for name, judge in (("clean", "scripted"), ("answer_checked", "none")):
            run_filter(from_dict(FilterConfig, {"pool": str(pool), "out": str(kept[name]),
                                                "judge": {"backend": judge}}), progress=False)
    pools = {name: load_pool(path, log=lambda m: None).records for name, path in kept.items()}
    pools["unfiltered"] = [r for r in load_pool(pool, log=lambda m: None).records if r.ok]
    pools["harmless"] = [r for r in pools["clean"] if not corrected_late(r.response or "")]
    task = get_task("synthetic")
    corpus = [t for r in pools["clean"] for t in (r.question, r.response or "")] + [task.instruction]
    return Data(pools, task.load(str(test_q)), corpus)


def doubles(example: Example) -> bool:
    """Whether the question doubles at some step: where the teacher's one wrong rule acts."""
    return any(" * " in expr for expr, _ in solve_steps(example))


def build_student(work: Path, kind: str, corpus: list[str], seed: int, knobs: Knobs) -> Path:
    """The demo's tiny student of ``kind``, its random init drawn from ``seed``."""
    from qr_ds.tiny import build_tiny_student

    out = work / "students" / f"{kind}-seed{seed}"
    if (out / "config.json").is_file():
        return out
    return build_tiny_student(kind, out, corpus, vocab_size=knobs.vocab_size, hidden=knobs.hidden,
                              layers=knobs.layers, seed=1000 * seed + KINDS.index(kind))


def sft(student_dir: Path, records: list[PathRecord], max_len: int, steps: int, seed: int, knobs: Knobs,
        masked: tuple[str, ...] = ()):
    """Plain SFT for ``steps`` optimizer steps: shuffled epochs of ``batch_paths`` paths, each path's
    loss the mean over its response tokens, weighted 1 / batch_paths (as the trainer weighs a routed
    path); paths of ``masked`` styles (or HARMFUL paths) stay in the batches at weight 0 (routed
    away, not replaced)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qr_ds.tiny import tokenizer_dir
    from qr_ds.train.data import collate
    from qr_ds.train.encoding import encode_all
    from qr_ds.train.optim import build_optimizer, build_schedule
    from qr_ds.train.student import Student

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(student_dir)))
    lm = AutoModelForCausalLM.from_pretrained(str(student_dir))
    encoded = encode_all(records, [tok], max_len, 1)[0][0]
    keep = torch.tensor([not (r.style in masked or HARMFUL in masked and corrected_late(r.response or ""))
                         for r in records], dtype=torch.float32)
    student = Student(lm, None, use_kernels=False)
    opt = build_optimizer([{"params": list(lm.parameters()), "lr": knobs.lr, "weight_decay": 0.0}], "adamw")
    schedule = build_schedule(opt, "linear", knobs.warmup_steps, steps, knobs.min_lr_ratio)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < knobs.batch_paths:
            order += torch.randperm(len(encoded), generator=g).tolist()
        idx, order = order[:knobs.batch_paths], order[knobs.batch_paths:]
        batch = collate([encoded[i] for i in idx], tok.pad_token_id, "cpu")
        labels = batch["labels"]
        n_tok = (labels[:, 1:] != -100).sum(1, keepdim=True).clamp(min=1)
        weights = torch.zeros_like(labels, dtype=torch.float32)
        weights[:, 1:] = (labels[:, 1:] != -100) * keep[idx][:, None] / n_tok / len(idx)
        loss = student(batch["input_ids"], batch["attention_mask"], labels, weights)[0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), knobs.grad_clip)
        opt.step()
        schedule.step()
    return lm, tok


def answers(lm, tok, tok_dir: Path, examples: list[Example], max_new_tokens: int) -> list[dict]:
    """Greedy outputs through the HF eval backend, scored by the task's extraction: one row per question."""
    from qr_ds.data.format import encode_prompt, render_prompt
    from qr_ds.eval.generation import Request, stop_ids
    from qr_ds.eval.hf_backend import HFBackend

    task = get_task("synthetic")
    with tempfile.TemporaryDirectory(prefix="qr_ds_probe_") as d:
        lm.save_pretrained(d)
        reqs = [Request(encode_prompt(tok, render_prompt(tok, ex.question, task.instruction))) for ex in examples]
        gens = HFBackend(batch_size=50, device="cpu").generate(d, str(tok_dir), reqs, stop_ids(tok, d), max_new_tokens)
    rows = []
    for ex, g in zip(examples, gens):
        text = tok.decode(g.token_ids, skip_special_tokens=True)
        pred = task.extract(text, ex)
        rows.append({"id": ex.id, "doubles": doubles(ex), "correct": task.is_correct(pred, ex),
                     "style": style_of(text), "extracted": pred})
    return rows


def style_of(text: str) -> str | None:
    """The style a student's output is written in, by the stand-in teacher's opening line. Spacing
    aside: WordPiece decodes "Let's" as "Let ' s" and drops newlines."""
    from qr_ds.teacher.scripted import OPENERS

    bare = "".join(text.split())
    return next((s for s, o in OPENERS.items() if bare.startswith("".join(o.split()))), None)


@dataclass(frozen=True)
class Spec:
    """One SFT run: a student kind on the paths of ``styles`` in ``pool``; ``masked`` of them stay in
    its batches at weight 0."""
    kind: str
    pool: str
    styles: tuple[str, ...]
    steps: int
    seed: int
    masked: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        styles = "all" if set(self.styles) == set(STYLES) else "+".join(self.styles)
        masked = f"-masked-{'+'.join(self.masked)}" if self.masked else ""
        return f"{self.pool}-{styles}{masked}-{self.kind}-steps{self.steps}-seed{self.seed}"


def execute(work: Path, spec: Spec, knobs: Knobs) -> list[dict]:
    """One SFT run and its scored answers, cached in ``work``/runs (each run takes minutes)."""
    from qr_ds.tiny import tokenizer_dir

    cache = work / "runs" / f"{spec.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["rows"]
    torch.set_num_threads(1)  # runs go side by side, one per core
    data = build_data(work, knobs)
    records = [r for r in data.pools[spec.pool] if r.style in spec.styles]
    student = build_student(work, spec.kind, data.corpus, spec.seed, knobs)
    lm, tok = sft(student, records, knobs.max_len[spec.kind], spec.steps, spec.seed, knobs, spec.masked)
    rows = answers(lm, tok, tokenizer_dir(student), data.test, knobs.max_new_tokens)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"spec": asdict(spec), "knobs": asdict(knobs), "paths": len(records), "rows": rows}))
    return rows


def accuracy(rows: list[dict], where=lambda r: True) -> float:
    picked = [r["correct"] for r in rows if where(r)]
    return sum(picked) / len(picked) if picked else math.nan


def mean_sd(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan


def pm(xs: list[float]) -> str:
    m, sd = mean_sd(xs)
    return f"{m:.3f} ± {sd:.3f}"


# ---- the probes: which runs each needs, and what they say ----------------------------------------

def style_sets(kind: str) -> list[tuple[str, ...]]:
    """The styles its context holds, and (where that is fewer) all six, as a student trains without routing."""
    return [STYLES_OF[kind]] + ([STYLES] if STYLES_OF[kind] != STYLES else [])


def set_name(styles: tuple[str, ...]) -> str:
    return "all six" if set(styles) == set(STYLES) else "quick" if set(styles) == set(QUICK_STYLES) else "+".join(styles)


def filter_specs(steps: int, seeds: list[int]) -> list[Spec]:
    return [Spec(k, pool, st, steps, s) for k in KINDS for st in style_sets(k) for pool in POOLS for s in seeds]


def style_specs(steps: int, seeds: list[int]) -> list[Spec]:
    return [Spec(k, "clean", (style,), steps, s) for k in KINDS for style in STYLES for s in seeds]


def knowledge_specs(steps: int, seeds: list[int]) -> list[Spec]:
    return [Spec(k, "clean", STYLES_OF[k], steps, s) for k in KINDS for s in seeds]


def curve_specs(budgets: list[int], seeds: list[int]) -> list[Spec]:
    return [Spec(k, "clean", st, n, s) for k in KINDS for st in style_sets(k) for n in budgets for s in seeds]


def _by_question(rows: list[dict]) -> dict[str, bool]:
    return {r["id"]: r["correct"] for r in rows}


def _split_accuracy(runs: list[list[dict]]) -> dict:
    return {"accuracy": pm([accuracy(r) for r in runs]),
            "doubling questions": pm([accuracy(r, lambda x: x["doubles"]) for r in runs]),
            "other questions": pm([accuracy(r, lambda x: not x["doubles"]) for r in runs]),
            "acc": [accuracy(r) for r in runs]}


def filter_rows(results: dict[Spec, list[dict]], steps: int, seeds: list[int]) -> list[dict]:
    """Per student, style set and pool: accuracy over seeds, and how far the clean pool is ahead,
    paired by seed (same init and batch order), in units of the larger seed-SD of the two pools."""
    out = []
    for k in KINDS:
        for st in style_sets(k):
            runs = {pool: [results[Spec(k, pool, st, steps, s)] for s in seeds] for pool in POOLS}
            acc = {pool: [accuracy(r) for r in rs] for pool, rs in runs.items()}
            for pool in POOLS:
                lead = [c - a for c, a in zip(acc["clean"], acc[pool])]
                sd = max(mean_sd(acc["clean"])[1], mean_sd(acc[pool])[1])
                out.append({"student": k.split("-")[0], "styles": set_name(st), "pool": pool,
                            **_split_accuracy(runs[pool]),
                            "clean minus this": pm(lead) if pool != "clean" else "",
                            "in seed-SDs": round(mean_sd(lead)[0] / sd, 1) if pool != "clean" and sd > 0 else None,
                            "lead": lead})
    return out


def style_rows(results: dict[Spec, list[dict]], steps: int, seeds: list[int]) -> tuple[list[dict], dict]:
    """Accuracy of each student trained on one style, and the student x style interaction per seed:
    (qwen - llama) on the long styles minus (qwen - llama) on the quick styles."""
    acc = {(k, st): [accuracy(results[Spec(k, "clean", (st,), steps, s)]) for s in seeds] for k in KINDS for st in STYLES}
    rows = [{"style": st, "long": st in LONG_STYLES, **{k.split("-")[0]: pm(acc[(k, st)]) for k in KINDS},
             "gap (qwen - llama)": pm([b - a for a, b in zip(acc[(KINDS[0], st)], acc[(KINDS[1], st)])]),
             **{f"acc {k.split('-')[0]}": acc[(k, st)] for k in KINDS}} for st in STYLES]

    def gap(styles, i):
        return sum(acc[(KINDS[1], st)][i] - acc[(KINDS[0], st)][i] for st in styles) / len(styles)
    per_seed = [gap(LONG_STYLES, i) - gap(QUICK_STYLES, i) for i in range(len(seeds))]
    m, sd = mean_sd(per_seed)
    return rows, {"per_seed": per_seed, "mean": m, "sd": sd, "in_seed_sds": m / sd if sd > 0 else None}


def knowledge_rows(results: dict[Spec, list[dict]], steps: int, seeds: list[int]) -> list[dict]:
    """Each student trained on the styles its context holds: per question type, how many test
    questions it answers and its peer does not (same seed), against how many both answer."""
    out = []
    for doubling in (True, False):
        only, both = {k: [] for k in KINDS}, []
        for s in seeds:
            right = [_by_question(results[Spec(k, "clean", STYLES_OF[k], steps, s)]) for k in KINDS]
            qs = [r["id"] for r in results[Spec(KINDS[0], "clean", STYLES_OF[KINDS[0]], steps, s)]
                  if r["doubles"] == doubling]
            for k, mine, peer in ((KINDS[0], right[0], right[1]), (KINDS[1], right[1], right[0])):
                only[k].append(sum(mine[q] and not peer[q] for q in qs))
            both.append(sum(right[0][q] and right[1][q] for q in qs))
        out.append({"questions": "doubling" if doubling else "no doubling", "n": len(qs),
                    **{f"only {k.split('-')[0]} right": pm(only[k]) for k in KINDS}, "both right": pm(both)})
    return out


def curve_rows(results: dict[Spec, list[dict]], budgets: list[int], seeds: list[int]) -> list[dict]:
    from collections import Counter

    out = []
    for k in KINDS:
        for st in style_sets(k):
            for n in budgets:
                runs = [results[Spec(k, "clean", st, n, s)] for s in seeds]
                written = Counter(r["style"] or "none" for rows in runs for r in rows)
                out.append({"student": k.split("-")[0], "styles": set_name(st), "steps": n, **_split_accuracy(runs),
                            "styles written (per run)": ", ".join(f"{w} {c / len(runs):.0f}"
                                                                  for w, c in written.most_common())})
    return out


def harm_specs(steps: int, seeds: list[int], harm: tuple[str, ...], kinds: tuple[str, ...] = KINDS) -> list[Spec]:
    return [Spec(k, pool, styles, steps, s, masked) for k in kinds for s in seeds
            for _, pool, styles, masked in harm_forms(harm)]


def harm_forms(harm: tuple[str, ...]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    """(name, pool, styles, masked) of the harm probe's runs: all six, then without the harm styles
    and without the harmful paths alone, each replaced by other paths and not replaced."""
    kept = tuple(st for st in STYLES if st not in harm)
    return [("all six", "clean", STYLES, ()),
            (f"no {'+'.join(harm)}, replaced", "clean", kept, ()),
            (f"no {'+'.join(harm)}, not replaced", "clean", STYLES, harm),
            ("no harmful paths, replaced", "harmless", STYLES, ()),
            ("no harmful paths, not replaced", "clean", STYLES, (HARMFUL,))]


def harm_rows(results: dict[Spec, list[dict]], steps: int, seeds: list[int], harm: tuple[str, ...],
              kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """Per student and form (``harm_forms``): accuracy (on doubling questions, where the harm acts,
    and the others), and the gain over all six of leaving paths out, paired by seed (same init)."""
    out = []
    for k in kinds:
        base = None
        for form, pool, styles, masked in harm_forms(harm):
            runs = [results[Spec(k, pool, styles, steps, s, masked)] for s in seeds]
            row = {"student": k.split("-")[0], "form": form, **_split_accuracy(runs)}
            if base is None:
                base = row["acc"]
            else:
                gain = [b - a for a, b in zip(base, row["acc"])]
                m, sd = mean_sd(gain)
                row |= {"gain over all six": pm(gain), "in seed-SDs": round(m / sd, 1) if sd and sd > 0 else None,
                        "gain": gain}
            out.append(row)
    return out
