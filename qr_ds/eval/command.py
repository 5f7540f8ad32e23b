"""`qr-ds eval`: score checkpoints (or a run's checkpoints) on benchmark files."""
from __future__ import annotations

import argparse

from qr_ds.config import ConfigError, apply_override, from_dict, load_yaml, parse_override


def _task_pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--task {text!r}: expected TASK=DATA_FILE (e.g. gsm8k=data/gsm8k_test.jsonl)")
    name, path = text.split("=", 1)
    return name.strip(), path.strip()


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate student checkpoints (vLLM or transformers)",
                              description="Greedy evaluation of every student adapter, their ensembles, the "
                                          "zero-shot base models and the teacher pool; Table 1 layout.")
    p.add_argument("--config", help="eval YAML (configs/eval-*.yaml); flags below override it")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides as for train and the "
                                                                    "other stages (limit=3 max_model_len=1024)")
    p.add_argument("--checkpoint", action="append", default=None, metavar="DIR", help="checkpoint dir (repeatable)")
    p.add_argument("--run", dest="run_dir", metavar="RUN_DIR", help="training run dir: its latest checkpoint")
    p.add_argument("--all-checkpoints", action="store_true", help="with --run: every checkpoint, not only latest")
    p.add_argument("--task", action="append", type=_task_pair, default=None, metavar="TASK=FILE",
                   help="task and its data file, or hub dataset name[:config] (repeatable)")
    p.add_argument("--split", help="hub datasets: the split (default: the task's evaluation split, 'test' for most)")
    p.add_argument("--backend", choices=["auto", "vllm", "hf"])
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--limit", type=int, help="first N examples per task")
    p.add_argument("--out", help="output dir for predictions.jsonl and summary.{json,md}")
    p.add_argument("--overwrite", action="store_true",
                   help="--out already holds an evaluation: move it aside (to OUT.replaced-TIME) and evaluate again")
    p.add_argument("--no-zero-shot", action="store_true", help="skip the base models without adapters")
    p.add_argument("--teacher-pool", help="pool JSONL for the teacher row (default: the run's pool)")
    p.add_argument("--max-lora-rank", type=int)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--gpu-memory-utilization", type=float)
    p.add_argument("--max-loras", type=int, help="vLLM: adapters resident at once")
    p.add_argument("--batch-size", type=int, help="hf backend batch size")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from qr_ds.eval.config import EvalConfig

    data = load_yaml(args.config) if args.config else {}
    for dotted, value in (parse_override(o) for o in args.overrides):
        apply_override(data, dotted, value)
    flags = {"checkpoints": args.checkpoint, "run_dir": args.run_dir, "tasks": dict(args.task) if args.task else None,
             "split": args.split,
             "backend": args.backend, "max_new_tokens": args.max_new_tokens, "limit": args.limit, "out": args.out,
             "teacher_pool": args.teacher_pool, "max_lora_rank": args.max_lora_rank, "dtype": args.dtype,
             "max_model_len": args.max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization,
             "batch_size": args.batch_size, "max_loras": args.max_loras}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.all_checkpoints:
        data["which"] = "all"
    if args.no_zero_shot:
        data["zero_shot"] = False
    try:
        return from_dict(EvalConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{args.config}: {e}" if args.config else str(e)) from None


def run(args: argparse.Namespace) -> int:
    from qr_ds.eval.run import evaluate

    evaluate(config_from_args(args), overwrite=args.overwrite,
             out_named="--out" if args.out is not None else "config key 'out'")
    return 0
