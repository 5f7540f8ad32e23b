"""The paper's six reasoning-style templates (Figure 2). Config can add more; these are the defaults."""
from qr_ds.data.baselines import SOLVE_TEMPLATES, WRITERS

DEFAULT_TEMPLATES: dict[str, str] = {
    "vanilla": "Reason to solve the problem:\n{question}",
    "cot": "{question}\n\nLet's reason step by step, writing each reasoning step clearly before giving the final answer.",
    "tot": "Think in a tree of thoughts: outline multiple solution paths and choose the most promising one to derive the answer.\n{question}",
    "program": "Use code to solve the following problem and print the final answer.\n{question}",
    "fact_retrieval": "First retrieve some relevant facts from your knowledge, then use them to reason to the final answer.\n{question}",
    "backward": "Use forward reasoning to propose a candidate answer, then backward reasoning to verify it and provide the final verified answer.\n{question}",
}
STYLES: tuple[str, ...] = tuple(DEFAULT_TEMPLATES)

# Templates of the Table 1 baselines (data/baselines.py): asked for only when a config names them
# (generate's baseline or styles), never by default.
BASELINE_TEMPLATES: dict[str, str] = {**{k: w.template for k, w in WRITERS.items()}, **SOLVE_TEMPLATES}
