"""The LLM-as-a-judge prompt, and a parser that reads a verdict out of whatever a judge replies.

Judges answer in JSON, "Verdict: VALID", markdown, plain sentences ("The reasoning is valid."),
or "INVALID - step 3 ..."; ``parse_verdict`` accepts all of these and returns None when the
reply states no verdict, so the caller can ask again rather than guess.
"""
from __future__ import annotations

import json
import re

JUDGE_PROMPT = """You are checking a worked solution for hallucinated or spurious intermediate steps.

Question:
{question}

Solution:
{response}

Does the solution contain any hallucinated or spurious intermediate step: a claimed fact that is false, a step that does not follow, or a statement unrelated to the computation? Judge the reasoning, not only the final answer.
Reply with a JSON object: {{"verdict": "VALID" or "INVALID", "reason": "<one sentence, naming the bad step if any>"}}. VALID means every step is sound."""

_WORD = {"valid": "VALID", "invalid": "INVALID", "not valid": "INVALID", "true": "VALID", "false": "INVALID",
         "yes": "VALID", "no": "INVALID", "sound": "VALID", "flawed": "INVALID", "pass": "VALID", "fail": "INVALID"}
_LABELED = re.compile(r"\b(?:final\s+)?(?:verdict|judg(?:e)?ment|label|decision|answer)\b\s*[:=\-]*\s*"
                      r"(not\s+valid|invalid|valid)\b", re.I)
_LEADING = re.compile(r"^(not\s+valid|invalid|valid)\b\s*[.:\-–—,]*\s*(.*)$", re.I | re.S)
_SENTENCE = re.compile(r"\b(?:reasoning|solution|path|steps?|argument|chain)\s+(?:is|are)\s+(?:logically\s+|entirely\s+|fully\s+)?"
                       r"(not\s+valid|invalid|valid|sound|flawed)\b", re.I)
_CONTAINS = re.compile(r"\b(?:contains|has|includes)\s+(no\s+)?(?:\w+\s+){0,2}(?:hallucinat\w*|spurious)", re.I)


def judge_prompt(question: str, response: str) -> str:
    return JUDGE_PROMPT.format(question=question, response=response)


def _norm(word: str) -> str:
    return _WORD[re.sub(r"\s+", " ", word.strip().lower())]


def _from_json(text: str) -> tuple[str, str] | None:
    for m in re.finditer(r"\{[^{}]*\}", text, re.S):
        try:
            obj = json.loads(m.group())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        low = {str(k).lower(): v for k, v in obj.items()}
        for key in ("verdict", "label", "valid", "is_valid", "decision", "answer"):
            v = low.get(key)
            word = str(v).lower() if isinstance(v, (str, bool)) else None
            if word in _WORD:
                return _norm(word), str(low.get("reason") or low.get("explanation") or low.get("rationale") or "")
    return None


def parse_verdict(text: str | None) -> tuple[str, str] | None:
    """("VALID" | "INVALID", reason) from a judge reply, or None when no verdict is stated."""
    if not text or not text.strip():
        return None
    found = _from_json(text)
    if found:
        return found
    plain = re.sub(r"[*_`#>]+", "", text).strip()  # markdown emphasis and headings
    m = _LABELED.search(plain)
    if m:
        rest = plain[m.end():].lstrip(" .:-–—\n")
        return _norm(m.group(1)), _reason(rest or plain[: m.start()])
    m = _LEADING.match(plain)
    if m:
        return _norm(m.group(1)), _reason(m.group(2))
    m = _SENTENCE.search(plain)
    if m:
        return _norm(m.group(1)), _reason(plain)
    m = _CONTAINS.search(plain)
    if m:
        return ("VALID" if m.group(1) else "INVALID"), _reason(plain)
    words = set(re.findall(r"\b(VALID|INVALID)\b", plain))  # a bare upper-case label somewhere
    if len(words) == 1:
        return words.pop(), _reason(plain)
    return None


def _reason(text: str) -> str:
    text = re.sub(r"^\s*(?:reason|explanation)\s*[:\-]\s*", "", text.strip(), flags=re.I)
    return " ".join(text.split())[:300]
