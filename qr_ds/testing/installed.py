"""Installed distributions made for a test: a dist-info with a RECORD, as importlib.metadata reads one."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path


def fake_distribution(site: Path, name: str, rel: str, data: bytes, version: str = "1.0",
                      recorded: bytes | None = None) -> Path:
    """Distribution ``name`` at ``version`` in ``site`` holding file ``rel`` with ``data``; its RECORD gives
    the sha256 of ``recorded`` (default ``data``: a true RECORD; anything else is a corrupted install)."""
    (site / rel).parent.mkdir(parents=True, exist_ok=True)
    (site / rel).write_bytes(data)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data if recorded is None else recorded).digest())
    (info / "RECORD").write_text(f"{rel},sha256={digest.rstrip(b'=').decode()},{len(data)}\n{info.name}/RECORD,,\n")
    return site
