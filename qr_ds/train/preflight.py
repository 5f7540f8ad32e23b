"""What the ranks of a training run will need, checked in the launching process before any launch.

Each problem found here used to surface 40-155 s after `qr-ds train`, as a traceback inside a rank:
a student model or tokenizer that is not there, a pool or DeepSpeed JSON that is missing, an output
folder that cannot be written, rank counts that do not fit the launcher's world, and a pool that
shares questions with the dev files evaluated during training (leakage). Every problem is one line
naming the config key, so a user fixes all of them in one go.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from qr_ds.data.pool import normalise_question, pool_questions
from qr_ds.distributed.engines import find_ds_config
from qr_ds.train.config import StudentConfig, TrainConfig

# Any one of these makes a folder a tokenizer (fast, sentencepiece, BPE and WordPiece layouts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def problems(cfg: TrainConfig, world_size: int) -> list[str]:
    """Every reason the launch would fail, one line each naming the config key; [] when ready."""
    found = []
    for i, student in enumerate(cfg.students):
        found += student_problems(i, student)
    found += path_problem("data.pool", cfg.data.pool, "the embedded pool from `qr-ds embed`")
    found += output_dir_problem(cfg.output_dir)
    found += world_problem(cfg, world_size)
    if not found:  # leakage needs a readable pool and eval files
        found += leakage_problems(cfg)
    return found


# ---- students ------------------------------------------------------------------------------------

def student_problems(i: int, s: StudentConfig) -> list[str]:
    key = f"students[{i}]"
    found = model_problem(f"{key}.model", s.model, ("config.json",), "a model")
    if s.tokenizer is not None:
        found += model_problem(f"{key}.tokenizer", s.tokenizer, TOKENIZER_FILES, "a tokenizer")
    if resolve_deepspeed_json(s.deepspeed) is None:
        found.append(f"config key '{key}.deepspeed': DeepSpeed JSON {s.deepspeed} not found "
                     "(relative paths are read from the working directory; ds_configs/<name> also from "
                     "the configs shipped with qr_ds)")
    return found


def model_problem(key: str, name: str, marker_files: tuple[str, ...], what: str) -> list[str]:
    """A local folder holding one of ``marker_files``, or a hub name the ranks can load."""
    path = Path(name).expanduser()
    markers = " or ".join(marker_files)
    if path.is_dir():
        if any((path / f).is_file() for f in marker_files):
            return []
        return [f"config key '{key}': {name} is a folder without {markers}: not {what}"]
    if path.exists():
        return [f"config key '{key}': {name} is a file, not {what} folder"]
    if not looks_like_repo_id(name):
        return [f"config key '{key}': {name} does not exist (no such local folder, and not a hub name)"]
    if in_hf_cache(name, marker_files):
        return []
    if hub_offline():
        return [f"config key '{key}': {name!r} is neither a local folder nor in the Hugging Face cache "
                f"({hf_cache_dir()}), and HF_HUB_OFFLINE=1, so no hub is reachable"]
    return []  # online: the ranks download it from the hub


def looks_like_repo_id(name: str) -> bool:
    """'name' or 'owner/name' as the hub spells them; asked here so that the hub's own
    'Repo id must be in the form' message never reaches the user."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def in_hf_cache(repo_id: str, marker_files: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in marker_files)


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_deepspeed_json(name: str) -> Path | None:
    """Where the ranks will find the student's DeepSpeed JSON (the trainer's own rule)."""
    return find_ds_config(name)


# ---- files and folders ---------------------------------------------------------------------------

def path_problem(key: str, path: Path, what: str) -> list[str]:
    if path.is_file():
        return []
    state = "is a folder, not a file" if path.is_dir() else "not found"
    return [f"config key '{key}': {path} {state} ({what})"]


def output_dir_problem(out: Path) -> list[str]:
    """Create the output folder and a file in it, as rank 0 will: the only check that root, ACLs and
    read-only mounts all answer truthfully."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        return [f"config key 'output_dir': cannot write to {out} ({(e.strerror or str(e)).lower()}"
                + (f": {e.filename}" if e.filename and str(e.filename) != str(out) else "") + ")"]
    return []


# ---- ranks ---------------------------------------------------------------------------------------

def world_problem(cfg: TrainConfig, world_size: int) -> list[str]:
    if cfg.placement != "separate":
        return []  # colocated: every rank runs every student, any world fits
    ranks = [s.ranks for s in cfg.students]
    if sum(ranks) == world_size:
        return []
    return [f"config key 'students[].ranks': placement 'separate' needs one process per student rank: "
            f"{' + '.join(map(str, ranks))} = {sum(ranks)}, but the launcher would start {world_size} "
            f"(set --num-procs {sum(ranks)}, or change the students' ranks)"]


def hostfile_slots(path: Path) -> int:
    """Processes the DeepSpeed launcher starts for a hostfile: the sum of its ``slots=N``."""
    total = 0
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.search(r"\bslots=(\d+)", line)
        if m is None:
            raise ValueError(f"{path}:{lineno}: expected 'HOST slots=N', got {line!r}")
        total += int(m.group(1))
    return total


# ---- leakage between the pool and the dev files --------------------------------------------------

def shared_questions(pool_qs: set[str], task: str, data: str) -> tuple[int, int, list[str]]:
    """(shared, total, a few shared questions) between a pool's questions and a task's data file."""
    from qr_ds.tasks import get_task

    examples = get_task(task).load(str(data))
    shared = [ex.question for ex in examples if normalise_question(ex.question) in pool_qs]
    return len(shared), len(examples), shared[:2]


def leakage_problems(cfg: TrainConfig) -> list[str]:
    """Training on questions it is evaluated on inflates every number: refuse it."""
    if not cfg.eval.tasks:
        return []
    found = []
    pool_qs = pool_questions(cfg.data.pool)
    for task, data in cfg.eval.tasks.items():
        key = f"eval.tasks.{task}"
        if not Path(data).is_file():
            found.append(f"config key '{key}': dev file {data} not found")
            continue
        n, total, examples = shared_questions(pool_qs, task, data)
        if n:
            found.append(f"config key '{key}': {n} of {total} questions of {data} are also in the training "
                         f"pool {cfg.data.pool} (data.pool), e.g. {examples[0][:80]!r}: evaluate on questions "
                         f"the students never trained on")
    return found
