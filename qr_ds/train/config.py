"""The training config: students, router, mutual loss, data, schedule. Validated at load."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from qr_ds.config import ConfigError, rule
from qr_ds.data.baselines import OBJECTIVES, TRAIN_TASKS
from qr_ds.distributed.placement import AUTO_RANKS, PLACEMENTS
from qr_ds.mutual.config import MutualConfig
from qr_ds.routing.config import RouterConfig
from qr_ds.run_layout import RunDir

# A student name becomes a folder and a metric key: a plain identifier, never a path.
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
# report_to backend -> (module it needs, pip command); jsonl is always written.
REPORTERS = {"jsonl": (None, ""), "tensorboard": ("tensorboard", "pip install tensorboard"),
             "wandb": ("wandb", "pip install wandb"), "trackio": ("trackio", "pip install trackio")}
Reporter = Literal["jsonl", "tensorboard", "wandb", "trackio"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    r: int = field(default=32, metadata=rule(min=1, max=1024, help="LoRA rank (paper: 32)"))
    alpha: int = field(default=64, metadata=rule(min=1))
    dropout: float = field(default=0.0, metadata=rule(min=0.0, max=0.9))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata=rule(
        help="module names that get LoRA adapters; a list you give must name only modules the model has (the "
             "default keeps those of its names the model has)"))
    quantize: Literal["none", "nf4"] = field(
        default="none", metadata=rule(help="nf4 = QLoRA through bitsandbytes (the paper's setup)"))


@dataclass
class StudentConfig:
    name: str = field(metadata=rule(help="short unique name, used in paths and metrics: letters, digits, "
                                         "'_', '-', '.', starting with a letter or '_'"))
    model: str = field(metadata=rule(help="HF model name or local directory"))
    tokenizer: str | None = field(default=None, metadata=rule(help="defaults to model"))
    lr: float = field(default=2e-4, metadata=rule(min=0.0, max=1.0, help="paper: 5e-6 Mistral, 2e-4 Gemma"))
    weight_decay: float = field(default=0.0, metadata=rule(min=0.0))
    ranks: int | Literal["auto"] = field(
        default=1, metadata=rule(help="processes (GPUs) for this student (separate placement), >= 1; auto = an equal "
                                      "share of the ranks the launcher starts beyond the other students' (qr_ds/train/world.py)"))
    deepspeed: str = field(default="ds_configs/zero2.json", metadata=rule(help="DeepSpeed JSON for this student"))
    max_len: int | None = field(
        default=None, metadata=rule(min=8, help="this student's training context in tokens (prompt + path); "
                                                "defaults to data.max_len. A path cut short costs the router "
                                                "what an untrained model pays for the text it never sees"))
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    finetune: Literal["lora", "full"] = field(
        default="lora", metadata=rule(help="full = every weight trains (small students; LoRA barely moves a tiny "
                                           "random-init model); checkpoints then hold whole models"))
    lora: LoraSettings = field(default_factory=LoraSettings)
    frozen: bool = field(default=False, metadata=rule(help="no updates to the model (paper Table 5); still a peer "
                                                           "for the mutual loss, whose heads keep learning"))
    gradient_checkpointing: bool = False
    use_kernels: bool = field(default=True, metadata=rule(help="fused linear+CE and span pooling kernels"))


@dataclass
class DataConfig:
    pool: Path = field(metadata=rule(help="embedded path pool (PathRecord JSONL) from `qr-ds embed`"))
    quality_filter: bool = field(default=True, metadata=rule(help="false = w/o QF: every generated path"))
    drop_cut_wrong: bool = field(default=True, metadata=rule(help=(
        "with quality_filter only. A student does not train on a path cut at its max_len whose part before "
        "the cut states a wrong answer (the filter's answer check on what that student sees: a path kept for "
        "its right final answer can show a wrong interim one that a later check corrects); the other "
        "students still do; the pairs it keeps out are listed in RUN/kept_from_students.jsonl. On the 358 "
        "right real-teacher responses, cut after each of their characters, it fires on none (docs/method.md). "
        "false = such paths teach the short student their wrong answer (the demo's harm variants, which test "
        "whether routing finds them)")))
    paths_per_question: int = field(default=0, metadata=rule(min=0, help="0 = all; 1 = single-path SFT baseline"))
    max_len: int = field(default=512, metadata=rule(min=8, help="tokens per path (prompt + path) for every "
                                                                "student without its own students[].max_len"))
    limit: int = field(default=0, metadata=rule(min=0, help="use only the first N paths (0 = all)"))
    prepared_dir: Path | None = field(default=None, metadata=rule(
        help="folder of prepared (tokenized, aligned) training data, shared by runs over the same pool, or by "
             "nodes on a shared filesystem; default $QR_DS_PREPARED_DIR, else output_dir/prepared"))
    batch_order: Literal["shuffled", "by_question"] = field(
        default="shuffled", metadata=rule(help="shuffled = paths in random order; by_question = each question's "
                                               "paths in one batch, so eq. 3 averages over all of them. In a plain "
                                               "training loop on the demo task: 79% vs 27% after 3 epochs; batches of "
                                               "two or three questions teach too little per step"))
    question_fraction: float = field(default=1.0, metadata=rule(min=0.0, max=1.0, help=(
        "train on this share of the questions, each with all of its paths (paper Figure 6); which questions is "
        "decided by question_seed and each question's id alone, so every method gets the same ones")))
    question_seed: int = field(default=0, metadata=rule(help="the data seed that picks question_fraction's "
                                                             "questions (not the training seed)"))
    objective: str = field(default="sft", metadata=rule(choices=tuple(OBJECTIVES), help=(
        "sft = question -> path; step_by_step = each path trained as a label task and a [rationale] task (Hsieh "
        "et al. 2023); revthink = backward paths also trained as question -> [backward question] (Chen et al. "
        "2024); tasks and weights in qr_ds/data/baselines.py")))
    task_weights: dict[str, float] = field(default_factory=dict, metadata=rule(help=(
        "loss weight per training task (main, label, rationale, backward_question, backward_reasoning); "
        "default: the weights of the objective's paper, all 1.0")))

    def validate(self, key: str = "") -> None:
        where = f"{key}." if key else ""
        if self.question_fraction <= 0:
            raise ConfigError(f"config key '{where}question_fraction': 0 selects no question; give a share in (0, 1]")
        for task, w in self.task_weights.items():
            if task not in TRAIN_TASKS:
                raise ConfigError(f"config key '{where}task_weights.{task}': unknown task; known: "
                                  f"{', '.join(TRAIN_TASKS)}")
            if not w >= 0:
                raise ConfigError(f"config key '{where}task_weights.{task}': {w} is not a weight >= 0")


@dataclass
class EvalDuringTraining:
    """The ``eval:`` section: checkpoints scored by `qr-ds eval` processes while training goes on
    (train/evaluator.py)."""

    every_steps: int = field(default=0, metadata=rule(min=0, help="0 = off"))
    tasks: dict[str, str] = field(default_factory=dict, metadata=rule(help="task name -> dev file"))
    backend: Literal["auto", "vllm", "hf"] = "auto"
    max_new_tokens: int = field(default=128, metadata=rule(min=1))
    limit: int = field(default=0, metadata=rule(min=0, help="first N dev examples per task (0 = all)"))
    device: str | None = field(default=None, metadata=rule(help="CUDA_VISIBLE_DEVICES for the eval process"))
    max_in_flight: int = field(default=1, metadata=rule(min=1))


@dataclass
class TrainConfig:
    students: list[StudentConfig]
    data: DataConfig
    router: RouterConfig = field(default_factory=RouterConfig)
    mutual: MutualConfig = field(default_factory=MutualConfig)
    lambda1: float = field(default=0.1, metadata=rule(min=0.0, help="weight of the router's balance term (eq. 9's "
                                                                    "L_entropy; router.entropy picks its form); the "
                                                                    "paper gives no value; configs/paper-mistral-gemma.yaml "
                                                                    "uses 1.0"))
    lambda2: float = field(default=0.1, metadata=rule(min=0.0, help="mutual loss weight (eq. 9)"))
    placement: str = field(default="separate", metadata=rule(choices=tuple(PLACEMENTS), help="how students share "
                           "the processes: " + "; ".join(f"{k} = {p.help}" for k, p in PLACEMENTS.items())))
    epochs: int = field(default=1, metadata=rule(min=1))
    max_steps: int = field(default=0, metadata=rule(min=0, help="optimizer steps; 0 = run all epochs"))
    micro_batch_paths: int = field(default=8, metadata=rule(min=1, help="paths per chunk per micro-step"))
    grad_accum: int = field(default=1, metadata=rule(min=1))
    optimizer: Literal["adamw", "adamw8bit"] = field(
        default="adamw", metadata=rule(help="adamw = torch AdamW; adamw8bit = bitsandbytes 8-bit AdamW (the paper's code)"))
    lr_schedule: Literal["constant", "linear", "cosine"] = field(
        default="linear", metadata=rule(help="after warmup: constant, or linear / cosine decay to min_lr_ratio x lr"))
    warmup_steps: int = field(default=0, metadata=rule(min=0, help="linear warmup from lr/warmup_steps to lr"))
    min_lr_ratio: float = field(default=0.1, metadata=rule(
        min=0.0, max=1.0, help="where the linear and cosine decays end, as a fraction of lr: 0.1 x lr by default, "
                               "where transformers' linear schedule ends at 0 (set 0.0 for that)"))
    grad_clip: float = field(default=1.0, metadata=rule(min=0.0))
    seed: int = 0
    output_dir: Path = Path("runs/train")
    save_every: int = field(default=0, metadata=rule(min=0, help="optimizer steps between checkpoints; 0 = final only"))
    keep_last: int = field(default=2, metadata=rule(min=1))
    log_every: int = field(default=1, metadata=rule(min=1, help="optimizer steps between metric rows (and the last step)"))
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    collective_timeout_s: float = field(default=300.0, metadata=rule(min=1.0))
    report_to: list[Reporter] = field(
        default_factory=lambda: ["jsonl"],
        metadata=rule(help="metric sinks: jsonl (always on, RUN/metrics.jsonl), tensorboard (RUN/tb), wandb, trackio"))
    eval: EvalDuringTraining = field(default_factory=EvalDuringTraining)
    run_name: str | None = field(default=None, metadata=rule(
        help="the run's name in wandb / trackio; default: the config file's stem (as the launcher sets it), "
             "else output_dir's last two parts (runs/gsm8k/train -> gsm8k/train)"))

    def validate(self, key: str = "") -> None:
        names = [s.name for s in self.students]
        for i, n in enumerate(names):
            if not NAME.match(n):
                raise ConfigError(f"config key 'students[{i}].name': {n!r} is not a plain name (it becomes a "
                                  "folder and a metric key): use letters, digits, '_', '-', '.'")
        for backend in self.report_to:
            module, pip = REPORTERS[backend]
            if module and find_spec(module) is None:
                raise ConfigError(f"config key 'report_to': {backend} is asked for but not installed; "
                                  f"run `{pip}` or remove it")
        if self.optimizer == "adamw8bit" and find_spec("bitsandbytes") is None:
            raise ConfigError("config key 'optimizer': adamw8bit needs bitsandbytes; run `pip install bitsandbytes`")
        if not self.students:
            raise ConfigError("config key 'students': the list is empty; give at least one student")
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'students': student names must be unique, got {names}")
        multi = self.router.enabled or (self.mutual.enabled and self.lambda2 > 0)
        if len(self.students) < 2 and multi:
            raise ConfigError(
                "config key 'students': routing and mutual distillation need >= 2 students; "
                "for a single-student SFT baseline set router.enabled: false and mutual.enabled: false")
        if all(s.frozen for s in self.students):
            raise ConfigError("config key 'students': every student is frozen; nothing would train")
        for i, s in enumerate(self.students):
            if s.finetune == "full" and s.lora.quantize != "none":
                raise ConfigError(f"config key 'students[{i}].lora.quantize': {s.lora.quantize!r} quantizes the "
                                  "frozen base of a LoRA student; with finetune: full every weight trains")
        if self.router.enabled and self.data.objective != "sft":  # the task copies' targets are not the embedded text
            raise ConfigError(f"config key 'data.objective': {self.data.objective} trains copies of paths with other "
                              "targets, which have no embedding to route by; set router.enabled: false")
        for key in ("fixed", "withhold"):
            unknown = sorted(set(getattr(self.router, key)) - set(names))
            if unknown:
                raise ConfigError(f"config key 'router.{key}': {unknown} name no student; the students are {names}")
        if self.router.assigned and not self.router.enabled:  # else the assignment is dropped unseen
            key = "fixed" if self.router.fixed else "withhold"
            raise ConfigError(f"config key 'router.{key}': a fixed assignment needs router.enabled: true "
                              f"(with enabled: false every path goes to every student)")
        for name, file in self.router.withhold.items():
            if not Path(file).is_file():
                raise ConfigError(f"config key 'router.withhold.{name}': no file {file}")
        if self.eval.every_steps and not self.eval.tasks:
            raise ConfigError("config key 'eval.tasks': eval.every_steps is set but no task -> dev file is given")
        for i, s in enumerate(self.students):
            if s.ranks != AUTO_RANKS and s.ranks < 1:
                raise ConfigError(f"config key 'students[{i}].ranks': got {s.ranks}; allowed: >= 1 or 'auto'")
        problem = PLACEMENTS[self.placement].ranks_problem([s.ranks for s in self.students])
        if problem:
            raise ConfigError(f"config key 'students[].ranks': {problem}")

    @property
    def run(self) -> RunDir:
        """The run folder (output_dir) by its names: launch, preflight, the trainer and the prepared data
        all ask this, so how a run's folder follows from its config is decided once."""
        return RunDir(self.output_dir)

    def max_len_of(self, s: int) -> int:
        return self.students[s].max_len or self.data.max_len

    @property
    def use_mutual(self) -> bool:
        return self.mutual.enabled and self.lambda2 > 0 and len(self.students) > 1
