"""The converted-model cache of GGUF students (qr_ds/models/packaged.py) around a fake conversion: what it
says before converting, a package upgrade converting again, what a killed conversion leaves and who
removes it, and `qr-ds models` saying which cache train and eval read. The real conversions are in
test_real_students.py."""
from __future__ import annotations

import base64
import hashlib
import importlib
import json
import sys
from pathlib import Path

import pytest

from qr_ds.models import packaged
from qr_ds.models.packaged import DONE, Packaged, Part, materialize

PART = "fake_model/m.gguf"


def _distribution(site: Path, name: str, version: str, data: bytes = b"GGUF fake weights") -> Path:
    """An installed distribution ``name`` at ``version`` in ``site`` holding PART, its RECORD true."""
    (site / PART).parent.mkdir(parents=True, exist_ok=True)
    (site / PART).write_bytes(data)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{PART},sha256={digest},{len(data)}\n{info.name}/RECORD,,\n")
    return site


def _install(monkeypatch, site: Path) -> None:
    """``site`` alone of the fake sites on sys.path (an upgrade swaps one for another)."""
    monkeypatch.setattr(sys, "path", [str(site)] + [p for p in sys.path if "fake-site" not in p])
    importlib.invalidate_caches()


@pytest.fixture
def fake(monkeypatch, tmp_path, capsys):
    """packaged:fake from distribution fake-model 1.0, and a conversion that writes config.json and
    counts itself: {"cache": the cache root, "converted": [gguf file of each conversion], "get": its
    materialize, "said": () -> every line materialize said on stderr so far}."""
    state = {"cache": tmp_path / "cache", "converted": []}
    lines: list[str] = []

    def said() -> list[str]:
        lines.extend(line.removeprefix("[qr_ds] ") for line in capsys.readouterr().err.splitlines())
        return lines

    def convert(gguf_file: Path, out: Path) -> None:
        assert gguf_file.read_bytes().startswith(b"GGUF")
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        state["converted"].append(gguf_file)

    monkeypatch.setattr(packaged, "_convert", convert)
    monkeypatch.setitem(packaged.PACKAGED, "fake", Packaged("pip install fake-model", (Part("fake-model", PART),),
                                                            "none"))
    _install(monkeypatch, _distribution(tmp_path / "fake-site-1.0", "fake-model", "1.0"))
    state["get"] = lambda: materialize("packaged:fake", state["cache"])
    state["said"] = said
    return state


# ---- a word before converting ---------------------------------------------------------------------

def test_one_line_on_stderr_before_converting_and_none_when_cached(fake, capsys):
    folder = fake["get"]()
    assert capsys.readouterr().err == (f"[qr_ds] converting packaged:fake once into {folder} "
                                       "(a minute or more; later runs reuse it)\n")
    fake["get"]()
    assert capsys.readouterr().err == ""


# ---- a package upgrade converts again ----------------------------------------------------------

def test_marker_records_the_package_version_and_where_the_gguf_came_from(fake):
    folder = fake["get"]()
    marker = json.loads((folder / DONE).read_text())
    assert marker == {"spec": "packaged:fake", "packages": {"fake-model": "1.0"}, "gguf": [f"fake-model: {PART}"]}


def test_upgraded_package_is_converted_again_in_place(fake, monkeypatch, tmp_path):
    folder = fake["get"]()
    (folder / "from-1.0").touch()
    _install(monkeypatch, _distribution(tmp_path / "fake-site-1.1", "fake-model", "1.1", b"GGUF newer weights"))
    assert fake["get"]() == folder
    assert len(fake["converted"]) == 2 and not (folder / "from-1.0").exists()
    assert json.loads((folder / DONE).read_text())["packages"] == {"fake-model": "1.1"}
    assert fake["said"]()[-1] == (f"{folder} is stale (converted from fake-model 1.0, 1.1 installed now): "
                                "converting packaged:fake again (a minute or more; later runs reuse it)")
    assert sorted(p.name for p in fake["cache"].iterdir()) == [".fake.lock", "fake"]  # nothing set aside is left
    fake["get"]()
    assert len(fake["converted"]) == 2  # 1.1 is reused


def test_marker_without_versions_converts_again_and_uninstalled_package_keeps_the_folder(fake, monkeypatch):
    folder = fake["get"]()
    (folder / DONE).write_text(json.dumps({"spec": "packaged:fake", "gguf": "/gone/.fake.abcdefgh/fake.gguf"}))
    fake["get"]()
    assert len(fake["converted"]) == 2
    assert "is stale (its marker records no package version (converted by an older qr-ds))" in fake["said"]()[-1]
    _install(monkeypatch, fake["cache"] / "fake-site-none")  # uninstalled: nothing to compare nor convert from
    assert fake["get"]() == folder and len(fake["converted"]) == 2
    said = len(fake["said"]())
    with pytest.raises(packaged.ModelSourceError, match=r"^packaged model 'fake' needs fake-model, which is not "
                                                        r"installed: pip install fake-model$"):
        materialize("packaged:fake", fake["cache"] / "elsewhere")
    assert len(fake["said"]()) == said  # no "converting" announced for a conversion that cannot start


def test_gguf_file_marker_names_the_file(fake, tmp_path):
    src = tmp_path / "mine.gguf"
    src.write_bytes(b"GGUF mine")
    folder = materialize(str(src), fake["cache"])
    st = src.stat()
    assert json.loads((folder / DONE).read_text()) == {"spec": str(src), "gguf": str(src), "size": st.st_size,
                                                       "mtime_ns": st.st_mtime_ns}
    assert materialize(str(src), fake["cache"]) == folder and len(fake["converted"]) == 1
