"""Filter retention per style (the filter's ``<filtered>.retention.json``) and per question level
(counted from the generated pool it names and the filtered pool beside it)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

SUFFIX = ".retention.json"


def load_retention(path: Path) -> dict:
    """{"judged_by", "per_style": rows, "per_level": rows or None, "level_note"}; a row is
    {name, paths, correct?, kept, kept_rate}."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise ValueError(f"{path}: not a filter retention file (expected an object with 'rows' and 'judged_by')")
    per_style = [{"name": r["style"] if r["task"] != "all" else "all", "paths": r["paths"],
                  "correct": r["correct"], "kept": r["kept"], "kept_rate": r["kept_rate"]} for r in data["rows"]]
    per_level, note = level_rows(path, data.get("pool"))
    return {"file": str(path), "judged_by": data.get("judged_by", "not recorded in the retention file"),
            "per_style": per_style, "per_level": per_level, "level_note": note}


def level_rows(path: Path, generated: str | None) -> tuple[list[dict] | None, str]:
    from qr_ds.data.pool import load_pool

    filtered = path.with_name(path.name[: -len(SUFFIX)] + ".jsonl") if path.name.endswith(SUFFIX) else None
    if not generated or not Path(generated).is_file() or filtered is None or not filtered.is_file():
        return None, f"per-level retention needs the generated pool ({generated}) and the filtered one ({filtered})"
    made = Counter(r.level for r in load_pool(generated).records if r.ok)
    kept = Counter(r.level for r in load_pool(filtered).records)
    if set(made) == {None}:
        return None, "the pool's questions carry no level"
    rows = [{"name": str(lv), "paths": n, "kept": kept[lv], "kept_rate": kept[lv] / n}
            for lv, n in sorted(made.items(), key=lambda kv: str(kv[0])) if lv is not None]
    return rows, f"counted from {generated} (generated) and {filtered} (kept)"
