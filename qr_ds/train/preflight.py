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

import numpy as np

from qr_ds.config import flatten, same_value, to_dict
from qr_ds.data.pool import normalise_question, pool_questions
from qr_ds.distributed.ds_json import read_ds_json
from qr_ds.distributed.engines import find_ds_config
from qr_ds.models.packaged import is_gguf_spec, spec_problems
from qr_ds.run_layout import RunDir
from qr_ds.train.config import LORA_TARGETS, StudentConfig, TrainConfig
from qr_ds.train.world import World, student_ranks

# Any one of these makes a folder a tokenizer (fast, sentencepiece, BPE and WordPiece layouts).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


SEED_RANGE = (0, 2**32 - 1)  # numpy's seeds are uint32; torch's int64 holds them


def problems(cfg: TrainConfig, world: World, resume: bool = False, overwrite: bool = False,
             config_file: Path | None = None, notes: list[str] | None = None) -> list[str]:
    """Every reason the launch would fail, one line each naming the config key; [] when ready. What is
    not a failure but the user should know (pool lines the ranks will skip) goes to ``notes``.
    Nothing is written: no output_dir, no quarantine file beside the pool (the ranks write that)."""
    found = []
    for i, student in enumerate(cfg.students):
        found += student_problems(i, student, cfg.max_len_of(i))
    found += path_problem("data.pool", cfg.data.pool, "the embedded pool from `qr-ds embed`" if cfg.router.enabled
                          else "the filtered pool from `qr-ds filter`; with router.enabled: false no embeddings are read")
    found += output_dir_problem(cfg.output_dir) + inputs_inside_problems(cfg, config_file if overwrite else None)
    run_found = existing_run_problems(cfg.run, resume, overwrite)
    found += run_found
    if resume and not run_found:
        found += resume_config_changes(cfg)[0] + pool_changed_problems(cfg)
    found += world_problem(cfg, world)
    if not SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1]:
        found.append(f"config key 'seed': {cfg.seed} is outside {SEED_RANGE[0]}..{SEED_RANGE[1]} "
                     "(numpy and torch take 32-bit seeds)")
    if not found:  # contents and leakage need a readable pool and eval files
        found += pool_problems(cfg, notes) + leakage_problems(cfg)
    return found


# ---- students ------------------------------------------------------------------------------------

def student_problems(i: int, s: StudentConfig, max_len: int) -> list[str]:
    key = f"students[{i}]"
    found = model_problem(f"{key}.model", s.model, ("config.json",), "a model")
    if s.tokenizer is not None:
        found += model_problem(f"{key}.tokenizer", s.tokenizer, TOKENIZER_FILES, "a tokenizer")
    ds_json = resolve_deepspeed_json(s.deepspeed)
    if ds_json is None:
        found.append(f"config key '{key}.deepspeed': DeepSpeed JSON {s.deepspeed} not found "
                     "(relative paths are read from the working directory; ds_configs/<name> also from "
                     "the configs shipped with qr_ds)")
    else:
        found += deepspeed_json_problem(f"{key}.deepspeed", ds_json)
    if not found and s.finetune == "lora" and s.lora.target_modules != LORA_TARGETS:
        found += lora_problem(key, s)  # else the ranks find a typo only after loading every model
    if not found:
        found += context_problem(f"{key}.max_len" if s.max_len else "data.max_len", s.model, max_len)
    return found


def context_problem(key: str, model: str, max_len: int) -> list[str]:
    """A max_len over the model's positions: tokenizers converted from GGUF say model_max_length 1e30,
    so nothing else cuts a path there, and the model sees positions it never learned."""
    from qr_ds.eval.vllm_backend import model_limit
    from qr_ds.models.packaged import resolve

    try:
        limit = model_limit(resolve(model))
    except (OSError, ValueError, KeyError):  # a config transformers cannot read: the ranks say why when they load it
        return []
    if limit is None or max_len <= limit:
        return []
    return [f"config key '{key}': {max_len} tokens is over {model}'s {limit} positions "
            f"(max_position_embeddings); give at most {limit}"]


def lora_problem(key: str, s: StudentConfig) -> list[str]:
    from qr_ds.train.student import lora_targets, skeleton

    try:
        lm = skeleton(s.model)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: the ranks check it once loaded
        return []
    problem = lora_targets(s, lm)[1]
    return [f"config key '{key}.lora.target_modules': {problem}"] if problem else []


def deepspeed_json_problem(key: str, path: Path) -> list[str]:
    try:
        read_ds_json(path)
    except ValueError as e:
        return [f"config key '{key}': {e}"]
    return []


def model_problem(key: str, name: str, marker_files: tuple[str, ...], what: str) -> list[str]:
    """A local folder holding one of ``marker_files``, or a hub name the ranks can load, or a GGUF
    student (packaged:<name>, .gguf), converted here once for every rank."""
    if is_gguf_spec(name):
        return spec_problems(key, name)
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
    """Create a file in the output folder, or in the nearest folder above it that exists (where rank 0
    will create it), and remove it: the only check that root, ACLs and read-only mounts all answer
    truthfully, and one that leaves no output_dir behind when the run is refused."""
    from qr_ds.stages import training_run_of

    if out.exists() and not out.is_dir():
        return [f"config key 'output_dir': {out} is a file, not a folder"]
    here = out
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        if not here.is_dir():
            raise NotADirectoryError(20, "not a directory", str(here))
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as e:
        return [f"config key 'output_dir': cannot write to {out} ({(e.strerror or str(e)).lower()}"
                + (f": {e.filename}" if e.filename and str(e.filename) != str(out) else "") + ")"]
    other = training_run_of(out.parent) if out.parent != out else None
    if other is not None:
        return [f"config key 'output_dir': {out} is inside another training run ({other}); "
                "its checkpoints would be pruned or overwritten: choose a folder outside it"]
    return []


def inputs_inside_problems(cfg: TrainConfig, config_file: Path | None = None) -> list[str]:
    """output_dir must hold none of the run's inputs, nor the working directory: --overwrite moves the
    whole folder aside (the ranks would start without their pool, models or config), and a run's
    checkpoints and pruning do not belong among a user's files. ``config_file``: checked only when
    given (with --overwrite: resuming from the run's own config.yaml is fine)."""
    from qr_ds.stages import WORKING_DIRECTORY, held_inputs

    inputs = {"config file": config_file, "input data.pool": cfg.data.pool,
              **{f"input eval.tasks.{t}": f for t, f in cfg.eval.tasks.items()},
              **{f"input router.withhold.{n}": f for n, f in cfg.router.withhold.items()}}
    for i, s in enumerate(cfg.students):
        inputs.update({f"input students[{i}].model": s.model, f"input students[{i}].tokenizer": s.tokenizer,
                       f"input students[{i}].deepspeed": resolve_deepspeed_json(s.deepspeed)})
    return [f"config key 'output_dir': {cfg.output_dir} is {WORKING_DIRECTORY} or a folder above it; choose a "
            "folder of its own (e.g. runs/NAME)" if key == WORKING_DIRECTORY else
            f"config key 'output_dir': {cfg.output_dir} holds the {key} ({inputs[key]}); a run folder holds only "
            "what the run writes: choose a folder of its own" for key in held_inputs(cfg.output_dir, inputs)]


def existing_run_problems(run: RunDir, resume: bool, overwrite: bool) -> list[str]:
    """Training into a run that holds results needs --resume (continue it) or --overwrite (set it aside)."""
    out = run.root
    try:
        latest = run.latest()
    except ValueError as e:
        return [f"config key 'output_dir': {e}"]
    if resume:
        if latest is None:
            return [f"config key 'output_dir': --resume, but {out} has no complete checkpoint "
                    "(no checkpoints/latest): start without --resume"]
        return []
    if overwrite:
        return []
    if latest is not None:
        return [f"config key 'output_dir': {out} already holds a training run (checkpoint {latest.name}); "
                "pass --resume to continue it, or --overwrite to move it aside and start again"]
    if run.all_checkpoints() or (run.metrics.is_file() and run.metrics.stat().st_size):
        return [f"config key 'output_dir': {out} holds results of a run with no complete checkpoint (no "
                "checkpoints/latest), so there is nothing to resume: pass --overwrite to move it aside and "
                "start again (under torchrun, move the folder aside yourself)"]
    return []


# What a resumed run may change: how long it trains, how often it saves, logs and evaluates, where its
# ranks run and where prepared data is cached, and memory-for-speed trades. Any other setting would
# train the rest of the run as another method than its start.
RESUME_MAY_CHANGE = ("max_steps", "epochs", "save_every", "keep_last", "log_every", "backend", "collective_timeout_s",
                     "report_to", "eval", "run_name", "output_dir", "placement", "data.prepared_dir", "students[].ranks",
                     "students[].gradient_checkpointing", "students[].use_kernels")


def _generic(key: str) -> str:
    return re.sub(r"\[\d+\]", "[]", key)


def _related(key: str, others) -> bool:
    """Whether ``key`` or a key above or below it is among ``others`` (generic forms)."""
    return any(key == o or key.startswith((o + ".", o + "[")) or o.startswith((key + ".", key + "[")) for o in others)


def resume_config_changes(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(problems, notes) of resuming the run in output_dir with ``cfg``, against the config.yaml it
    started with: a setting outside RESUME_MAY_CHANGE that differs is a problem naming both values; a
    key that config.yaml does not have at all (added to qr_ds since the run started) is a note, so a
    new default never switches on mid-run unannounced."""
    import yaml

    saved = cfg.run.config
    if not saved.is_file():
        return [], [f"resume: {cfg.run.root} has no config.yaml, so this start's settings are not compared with the run's"]
    try:
        started = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        started = None
    if not isinstance(started, dict):
        return [f"config key 'output_dir': {saved} is not the run's config (not a YAML mapping), so a resume cannot "
                "check it trains as the run started; put the run's config back, or --overwrite to start again"], []
    before, now = flatten(started, whole=True), flatten(to_dict(cfg), whole=True)
    generic_before, generic_now = {_generic(k) for k in before}, {_generic(k) for k in now}
    found, new = [], []
    for key in sorted(before.keys() | now.keys()):
        generic = _generic(key)
        if _related(generic, RESUME_MAY_CHANGE) or (key in before and key in now and same_value(before[key], now[key])):
            continue
        if (key in before) != (key in now) and (now if key in now else before)[key] in ({}, []):
            continue  # an empty mapping or list where the other side has entries: those entries say it
        if key not in before and not _related(generic, generic_before):
            new.append(f"{key}={now[key]!r}")
        elif key in now or _related(generic, generic_now):  # not a key since removed from qr_ds
            was, given = (repr(side[key]) if key in side else "nothing" for side in (before, now))
            found.append(f"config key '{key}': the run in {cfg.run.root} trained with {was}, this start gives "
                         f"{given}; a resumed run keeps its training settings (set it back as in {saved}, or train "
                         "into a new output_dir)")
    notes = [f"resume: {saved} predates these config keys, which take these values from now on: {', '.join(new)}"] if new else []
    return found, notes


def pool_changed_problems(cfg: TrainConfig) -> list[str]:
    """The pool's bytes against those the run started on (the same path may hold another pool)."""
    from qr_ds.data.jsonl import file_sha256

    saved, pool = cfg.run.pool_digest, Path(cfg.data.pool)
    if not saved.is_file() or not pool.is_file():  # a run older than the record, or the pool's own problem
        return []
    was, now = saved.read_text().strip(), file_sha256(pool)
    if was == now:
        return []
    return [f"config key 'data.pool': {pool} is not the pool the run in {cfg.run.root} started on (sha256 "
            f"{was[:12]} then, {now[:12]} now); a resumed run goes on with its epoch by position, which over "
            "another pool means other paths: put the pool back, or start a new run (--overwrite moves this one aside)"]


# ---- what the ranks will read -------------------------------------------------------------------

EMBEDDING_CHUNK = 8192  # records per finiteness check: bounded memory on a large pool


def pool_problems(cfg: TrainConfig, notes: list[str] | None = None) -> list[str]:
    """The pool's records parse, at least one is left, each path id is used once (the trainer matches
    embeddings, routing lists and kept-out pairs by id), and (router on) every record's embedding is
    readable, of one width and finite. The pool is streamed. Lines the ranks will skip go to ``notes``."""
    from qr_ds.data.jsonl import quarantine_path
    from qr_ds.data.pool import PoolStream
    from qr_ds.embed.lookup import EmbeddingError, gather_embeddings
    from qr_ds.filter.run import check_unique_ids
    from qr_ds.routing.policy import unknown_styles, unmatched_withhold, withheld_ids
    from qr_ds.train.encoding import chunked, selected

    pool = cfg.data.pool
    try:
        check_unique_ids(pool)
    except ValueError as e:
        return [f"config key 'data.pool': {e}"]
    stream = PoolStream(pool, log=lambda m: None, quarantine=False)
    # a fixed assignment that matches nothing in the pool: the ranks refused it only after loading models
    styles: set[str] = set()
    listed = {name: withheld_ids(file) for name, file in cfg.router.withhold.items()}
    withheld = {name: set(ids) for name, ids in listed.items()}
    matched = {name: False for name in withheld}
    width = None
    try:  # the trainer's own choice of paths: only these must be usable
        for part in chunked(selected(cfg, stream), EMBEDDING_CHUNK):
            lines = {r.id: line for line, r in part}  # (empty questions never get here: the reader sets them aside)
            styles.update(r.style for _, r in part)
            for name, ids in withheld.items():
                matched[name] = matched[name] or not ids.isdisjoint(lines)
            if not cfg.router.enabled:
                continue
            chunk = [r for _, r in part]
            try:
                rows = gather_embeddings(pool, chunk, lines)
            except EmbeddingError as e:
                return [f"config key 'data.pool': {e}"]
            except ValueError as e:  # matrices of different widths
                return [f"config key 'data.pool': {e}"]
            width = width or rows.shape[1]
            if rows.shape[1] != width or width == 0:
                return [f"config key 'data.pool': {pool}: embeddings of width {rows.shape[1]} after width {width}"]
            bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            if bad.size:
                rec = chunk[int(bad[0])]
                return [f"config key 'data.pool': {pool}:{lines[rec.id]}: record {rec.id!r}: its embedding "
                        f"({rec.embedding.file} row {rec.embedding.row}) is not finite (NaN or inf), and "
                        f"{bad.size - 1} more in this chunk: re-run `qr-ds embed`"]
    except ValueError as e:  # nothing selected
        if not stream.accepted:
            why = (f"all {len(stream.rejected)} lines refused, e.g. {pool}:{stream.rejected[0][0]}: "
                   f"{stream.rejected[0][1]}" if stream.rejected else "it holds no records")
            return [f"config key 'data.pool': {pool}: nothing to train on: {why}"]
        return [f"config key 'data.pool': {e}"]
    assignment = [p for name, kept in cfg.router.fixed.items() if (p := unknown_styles(name, kept, styles))]
    assignment += [unmatched_withhold(name, cfg.router.withhold[name], listed[name])
                   for name, hit in matched.items() if listed[name] and not hit]
    if assignment:
        return assignment
    if stream.rejected and notes is not None:
        line, reason = stream.rejected[0]
        notes.append(f"data.pool: {len(stream.rejected)} lines are "
                     f"not records and will not train (the ranks set them aside in {quarantine_path(pool)}); "
                     f"the first, {pool}:{line}: {reason}")
    return []


# ---- ranks ---------------------------------------------------------------------------------------

def world_problem(cfg: TrainConfig, world: World) -> list[str]:
    try:
        student_ranks(cfg, world.size, world.source)
    except ValueError as e:
        return [str(e)]
    return []


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
