"""The converted-model cache of GGUF students (qr_ds/models/packaged.py) around a fake conversion: what it
says before converting, a package upgrade converting again, what a killed conversion leaves and who
removes it, and `qr-ds models` saying which cache train and eval read. The real conversions are in
test_real_students.py."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qr_ds.cli import main as cli
from qr_ds.models import packaged
from qr_ds.models.packaged import DONE, Packaged, Part, materialize
from qr_ds.testing.installed import fake_distribution

ROOT = Path(__file__).resolve().parents[1]
PART = "fake_model/m.gguf"


def _distribution(site: Path, name: str, version: str, data: bytes = b"GGUF fake weights") -> Path:
    return fake_distribution(site, name, PART, data, version)


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


# ---- what a killed conversion leaves ---------------------------------------------------------

def test_scratch_folders_of_a_killed_conversion_are_removed_by_the_next_one(fake):
    cache = fake["cache"]
    for leftover in (".fake.k1ll3d_a", ".fake.9zzzzzzz"):  # what mkdtemp names and SIGKILL leaves
        (cache / leftover).mkdir(parents=True)
        (cache / leftover / "fake.gguf").write_bytes(b"x" * 2_000_000)
    kept = [cache / ".fake.lock", cache / ".fake.x-0123456789ab.abcdefgh", cache / ".fakeother.abcdefgh",
            cache / "fake.abcdefgh"]  # the lock, another name's scratch (a .gguf named fake.x.gguf), not scratch
    kept[0].touch()
    for d in kept[1:]:
        d.mkdir()
    folder = fake["get"]()
    assert sorted(p.name for p in cache.iterdir()) == sorted([folder.name] + [p.name for p in kept])
    said = fake["said"]()
    assert said[0] == (f"removed 2 leftover folder(s) of an interrupted conversion of fake from {cache} "
                       "(4 MB): .fake.9zzzzzzz, .fake.k1ll3d_a")
    assert said[1].startswith("converting packaged:fake once into")


def test_leftovers_beside_a_finished_folder_go_unless_a_conversion_holds_the_lock(fake):
    """A finished, current folder returns without the lock; scratch folders beside it (a kill mid-way
    through converting it again) go when nobody holds the lock, and stay while somebody does."""
    folder = fake["get"]()
    (fake["cache"] / ".fake.abcdefgh").mkdir()
    with packaged._locked(fake["cache"] / ".fake.lock"):
        assert fake["get"]() == folder
        assert (fake["cache"] / ".fake.abcdefgh").is_dir()
    assert fake["get"]() == folder
    assert not (fake["cache"] / ".fake.abcdefgh").exists()
    assert len(fake["converted"]) == 1 and fake["said"]()[-1].startswith("removed 1 leftover folder(s)")


SLOW_CONVERSION = """
    import sys, time
    from pathlib import Path
    from qr_ds.models import packaged

    def convert(gguf_file, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"0" * 1_000_000)
        print("converting", flush=True)
        time.sleep(60)

    packaged._convert = convert
    packaged.materialize(sys.argv[1], Path(sys.argv[2]))
"""


def test_sigterm_while_converting_removes_the_scratch_folder(tmp_path):
    """SLURM's time limit sends SIGTERM, whose default action skips `finally:`; the conversion now
    cleans up and the process still ends by SIGTERM."""
    (tmp_path / "m.gguf").write_bytes(b"GGUF not really")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SLOW_CONVERSION), str(tmp_path / "m.gguf"),
                             str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "converting\n", proc.communicate()
    assert [p for p in cache.iterdir() if p.is_dir()], "no scratch folder while converting"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err
    assert [p.name for p in cache.iterdir()] == [f".m-{_tag(tmp_path / 'm.gguf')}.lock"]


def _tag(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def test_sigterm_handler_is_set_only_while_converting(fake):
    seen = []
    real = packaged._convert
    packaged._convert = lambda g, o: (seen.append(signal.getsignal(signal.SIGTERM)), real(g, o))
    try:
        fake["get"]()
    finally:
        packaged._convert = real
    assert callable(seen[0]) and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ---- qr-ds models: which cache train and eval read ------------------------------------------------

def test_convert_into_another_cache_dir_says_how_train_finds_it(fake, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("QR_DS_MODEL_CACHE", str(tmp_path / "train-cache"))
    assert cli(["models", "convert", "packaged:fake", "--cache-dir", str(fake["cache"])]) == 0
    out, err = capsys.readouterr()
    assert out == f"{fake['cache'] / 'fake'}\n"
    assert err.splitlines()[-1] == (f"qr-ds models: note: train and eval look in {tmp_path / 'train-cache'} "
                                    f"($QR_DS_MODEL_CACHE={tmp_path / 'train-cache'}), not {fake['cache']}: "
                                    f"export QR_DS_MODEL_CACHE={fake['cache']} for them to use this folder")
    monkeypatch.setenv("QR_DS_MODEL_CACHE", str(fake["cache"]))
    assert cli(["models", "convert", "packaged:fake", "--cache-dir", str(fake["cache"])]) == 0
    assert capsys.readouterr().err == ""  # the cache train uses, converted: nothing to say
    with pytest.raises(SystemExit):
        cli(["models", "convert", "--help"])
    assert "export QR_DS_MODEL_CACHE=X" in " ".join(capsys.readouterr().out.split())


def test_list_says_installed_and_converted_in_the_cache_train_uses(fake, monkeypatch, capsys):
    monkeypatch.setenv("QR_DS_MODEL_CACHE", str(fake["cache"]))
    monkeypatch.setattr(packaged, "PACKAGED", {
        "fake": packaged.PACKAGED["fake"],
        "absent": Packaged("pip install absent-pkg", (Part("absent-pkg", "x.gguf"),), "MIT")})
    assert cli(["models", "list"]) == 0
    before = capsys.readouterr().out
    assert before.splitlines() == [
        f"model cache of train and eval: {fake['cache']} ($QR_DS_MODEL_CACHE={fake['cache']})",
        "packaged:fake", "  license:   none", "  package:   installed (1.0)",
        "  converted: no (train converts it on first use, or: qr-ds models convert packaged:fake)",
        "packaged:absent", "  license:   MIT",
        "  package:   not installed (absent-pkg missing): pip install absent-pkg",
        "  converted: no (train converts it on first use, or: qr-ds models convert packaged:absent)"]
    folder = fake["get"]()
    assert cli(["models", "list"]) == 0
    assert f"  converted: {folder}" in capsys.readouterr().out.splitlines()
    (folder / DONE).write_text("{}")
    assert cli(["models", "list"]) == 0
    assert (f"  converted: stale, {folder}: its marker records no package version (converted by an older "
            "qr-ds); converted again on next use") in capsys.readouterr().out.splitlines()
