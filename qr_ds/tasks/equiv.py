"""MATH answer equivalence: HF's ``math-verify`` behind a per-comparison time limit.

On MATH test answers against rewritings and on hard pairs (tests/fixtures/math/), math-verify judged
66/66 and 85/87 right where our former normalizer + evaluator judged 59/66 and 69/87: it reads sets,
matrices, ``x \\in [1,3]``, unordered solution lists, ``\\pi x`` vs ``x\\pi``, and units as text. Its
misses there: repeating decimals (``0.\\overline{3}``), and bare words, which sympy reads as products
("no" equals "on"); we compare two bare words as text instead.
"""
from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator


# ---- math-verify with a time limit that works in any thread ------------------------------------
SECONDS_PER_COMPARISON = 5.0

# math-verify's own limits use SIGALRM, which only the main thread may set (it refuses otherwise);
# we pass None and enforce ours, so its "timeout disabled" warning does not apply.
logging.getLogger("math_verify").setLevel(logging.ERROR)


class _Overtime(BaseException):
    """Time is up. A BaseException, so that sympy's and math-verify's ``except Exception`` let it through."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_Overtime`` in the calling thread once ``seconds`` have passed.

    The main thread uses a timer signal (free); a timer already pending there (pytest-timeout's, say)
    is re-armed afterwards with its remaining time. Threads, where signals cannot be set, and outer
    timers due sooner, get a trace function that checks the clock at every Python call (no subprocess,
    but sympy runs about 9x slower). Neither stops one long C call; sympy's simplification is Python.
    """
    pending, interval = signal.getitimer(signal.ITIMER_REAL)
    if threading.current_thread() is threading.main_thread() and (pending == 0 or pending > seconds):
        yield from _signal_limit(seconds, pending, interval)
    else:
        yield from _trace_limit(seconds)


def _trace_limit(seconds: float) -> Iterator[None]:
    deadline = time.monotonic() + seconds

    def check(frame: Any, event: str, arg: Any) -> None:
        if time.monotonic() > deadline:
            raise _Overtime
        return None  # no per-line tracing inside the call

    previous_trace = sys.gettrace()
    sys.settrace(check)
    try:
        yield
    finally:
        sys.settrace(previous_trace)


def _signal_limit(seconds: float, pending: float, interval: float) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Overtime

    start = time.monotonic()
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if pending:
            signal.setitimer(signal.ITIMER_REAL, max(pending - (time.monotonic() - start), 1e-3), interval)


_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")


def _as_word(answer: str) -> str | None:
    """The answer lowercased when it is one word of 2+ letters ("Yes", "\\text{odd}"); else None."""
    plain = _TEXT.sub(r"\1", answer).strip().strip("$").strip()
    return plain.lower() if re.fullmatch(r"[A-Za-z]{2,}", plain) else None


@lru_cache(maxsize=4096)  # a gold is compared with every path of its question
def _parsed(answer: str) -> list:
    from math_verify import parse  # sympy and antlr load only when MATH answers are judged

    # boxed: the whole string is the answer, not text in which math-verify looks for one
    return parse(f"$\\boxed{{{answer}}}$", parsing_timeout=None)


def math_verify_equal(pred: str, gold: str, seconds: float = SECONDS_PER_COMPARISON) -> bool:
    """math-verify's verdict on two answer strings; False when it takes longer than ``seconds``."""
    from math_verify import verify

    try:
        with _time_limit(seconds):
            gold_expr, pred_expr = _parsed(gold), _parsed(pred)
            # allow_set_relation_comp: "2 \\le x \\le 5" states the interval [2,5]
            return bool(verify(gold_expr, pred_expr, allow_set_relation_comp=True, timeout_seconds=None))
    except _Overtime:
        return False


def math_equiv(pred: str | None, gold: str | None, seconds: float = SECONDS_PER_COMPARISON) -> bool:
    """True when two MATH answers state the same value, set, interval, matrix or text."""
    if pred is None or gold is None or not pred.strip() or not gold.strip():
        return False
    if pred.split() == gold.split():  # the same text: no need for sympy
        return True
    pred_word, gold_word = _as_word(pred), _as_word(gold)
    if pred_word and gold_word:  # sympy reads the word "no" as n*o, equal to "on"
        return pred_word == gold_word
    return math_verify_equal(pred, gold, seconds)
