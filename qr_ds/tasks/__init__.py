"""Benchmarks: loading, answer extraction, scoring. Importing this registers every task (no torch)."""
from qr_ds.tasks.base import Example, LoadedExamples, Task, get_task, is_test_split, list_tasks, register
from qr_ds.tasks import anli, arc_challenge, date_understanding, gsm8k, math_task, strategyqa, synthetic  # noqa: F401  (register)
from qr_ds.tasks.synthetic import generate_synthetic, solve_steps, step_phrases, write_synthetic

__all__ = ["Example", "LoadedExamples", "Task", "get_task", "is_test_split", "list_tasks", "register",
           "generate_synthetic", "solve_steps", "step_phrases", "write_synthetic"]
