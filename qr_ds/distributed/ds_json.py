"""Reading a DeepSpeed JSON, in one place: the launching process's preflight and the ranks agree."""
from __future__ import annotations

import json
from pathlib import Path


def read_ds_json(path: Path) -> dict:
    """A DeepSpeed JSON as the ranks read it (a BOM allowed); ValueError naming the file otherwise.
    Preflight calls this too, so what it passes the ranks accept."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
