"""The generation backend an evaluation asks for; both backends import generation.py, so the choice
lives apart from it."""
from __future__ import annotations


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_backend(kind: str, **kw):
    """``vllm``, ``hf``, or ``auto`` (vLLM when importable)."""
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind == "vllm":
        from qr_ds.eval.vllm_backend import VLLMBackend

        return VLLMBackend(**kw)
    if kind == "hf":
        from qr_ds.eval.hf_backend import HFBackend

        return HFBackend(**kw)
    raise ValueError(f"unknown eval backend {kind!r}; choose vllm, hf or auto")
