"""Final-answer patterns shared by the tasks.

``candidates`` finds every place an output states an answer ("The answer is", "**Answer:**",
``\\boxed{}``, "#### ", a program's "Output:" or ``print(...)  # 42``, "verified answer is") and
returns the text that follows each, in order; a task parses them from the last backwards, so
the final stated answer counts. Parsers read only the start of a candidate and return None
rather than guess.

Work is linear in the text length on any input (filter and eval run this on whatever a model wrote):
braces are paired in one pass, a candidate is at most ``CANDIDATE_CHARS`` long, and no pattern lets
two unbounded quantifiers share characters.
"""
from __future__ import annotations

import re

# A connector is required after "answer" so that "To answer this, we need 3" states nothing.
_CONNECT = r"\s*+(?:is|was|would be|should be|must be|will be|=|:|-|\u2014|\u2013)\s*:?"
_MARKERS = re.compile(
    "|".join([
        # not "each answer choice:", which opens a list of the options, not the answer
        r"(?<!\beach )(?<!\bevery )\banswer(?:\s+(?:choice|option))?" + _CONNECT,
        r"\b(?:correct|right|best|final)\s+(?:option|choice|label)" + _CONNECT,
        r"\b(?:label|relationship|relation|classification|verdict)\s*(?:is|:)\s*:?",
        r"^[^\S\n]*#{4}[^\S\n]*",  # GSM8K-style "#### 42" (not \s*: it would span blank lines from each one)
        r"\b(?:program|code|script|function)\s+(?:prints|outputs|returns|will print|would print|printed)\s*:?",
        r"\b(?:it|this)\s+(?:prints|outputs|will print|would print)\s*:?",
        r"\b(?:output|printed result|result|prints)\s*(?:is|:|=|->)\s*",
        r"\bprint\([^\n]{0,200}\)[^\S\n]*#\s*(?:output:?|prints:?|->|=>)?\s*",  # bounded: one scan per "print("
        # 'the statement "..." is **False**': the first "is" followed by a truth value, so that an
        # "is" inside the quoted hypothesis does not end the marker early
        # (bounded runs: "\s+" then "\W*" over one long blank run was quadratic)
        r"\b(?:statement|hypothesis|claim)\b[^\n]{0,300}?(?=\b(?:is|was)(?:n't)?\s{1,20}"
        r"(?:(?:\w{1,30}ly|therefore|thus|not)\s{1,20}){0,2}\W{0,20}(?:true|false|neither|untrue|incorrect|correct)\b"
        r"(?!\s{1,20}or\s{1,20}(?:true|false|not|neither)\b))",  # "is true or false" asks, it does not say
    ]),
    re.IGNORECASE | re.MULTILINE,
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*+\{")
_BRACE = re.compile(r"[{}]")
_MARKDOWN = re.compile(r"\*\*|__|`")
_FENCE = re.compile(r"^\s*```\w*\s*$")


def strip_markdown(text: str) -> str:
    return _MARKDOWN.sub("", text)


CANDIDATE_CHARS = 500  # longer boxed content is not an answer; a marker's line is cut here


def _boxed_contents(text: str, starts: list[int]) -> dict[int, str]:
    """{start: content} for each brace group opening at ``text[start - 1]``, paired in one pass over
    the braces (scanning from each opener was quadratic: 63 KB of "\\boxed{" took 24 s). Unbalanced
    groups and contents over CANDIDATE_CHARS are left out."""
    wanted, out = set(starts), {}
    if not wanted:
        return out
    stack: list[int] = []
    for m in _BRACE.finditer(text, min(wanted) - 1):
        if m.group() == "{":
            stack.append(m.end() if m.end() in wanted else -1)
        elif stack:
            start = stack.pop()
            if start >= 0 and m.start() - start <= CANDIDATE_CHARS:
                out[start] = text[start:m.start()]
        # a "}" with no opener is outside every group that follows: nothing to pair
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (MATH solutions), or of ``\\boxed 5``."""
    contents = _boxed_contents(text, [m.end() for m in _BOXED.finditer(text)])
    stated = [contents[start] for start in sorted(contents) if contents[start]]
    if stated:
        return stated[-1]
    m = list(re.finditer(r"\\boxed\s++([^\s$]{1,%d})" % CANDIDATE_CHARS, text))
    return m[-1].group(1) if m else None


def _rest(text: str, pos: int, end: int) -> str:
    """Text after a marker, up to ``end`` (the next marker): the rest of the line, or the next content
    line (after "Output:\\n```"). Only a window is read and the span is cut at CANDIDATE_CHARS, so the
    candidates of many markers on one line add up to no more than the line (a whole-rest split per
    marker was quadratic)."""
    for line in text[pos:min(end, pos + 2 * CANDIDATE_CHARS)].split("\n", 6)[:6]:
        if line.strip() and not _FENCE.match(line):
            return line.strip()[:CANDIDATE_CHARS]
    return ""


# A line that states only a verdict: "No.", "Therefore, Yes.", "Conclusion: Neither. <notes>".
_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022>])\s+")
_LEAD_IN = re.compile(
    r"^(?:therefore|thus|so|hence|overall|in conclusion|in summary|in short|conclusion|verdict|final verdict)"
    r"\b\s*[,:]?\s*", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)")


def verdict_line(line: str) -> str | None:
    """The verdict of a line that states nothing else first (at most two words, then a sentence end).

    Notes after the verdict's sentence are allowed; a heading ("Contradiction:") is not a verdict.
    """
    s = _LEAD_IN.sub("", _LIST_MARK.sub("", line).strip().replace("*", ""), count=1)
    end = _CLAUSE_END.search(s)
    clause = s[: end.start()] if end else s
    if not clause.strip() or len(clause.split()) > 2 or (end and end.group(0) == ":"):
        return None
    return clause.strip()


def _verdict_lines(text: str) -> list[tuple[int, str]]:
    found, pos = [], 0
    for line in text.splitlines(keepends=True):
        verdict = verdict_line(line)
        if verdict is not None:
            found.append((pos, verdict))
        pos += len(line)
    return found


def candidates(text: str, verdicts: bool = False) -> list[str]:
    """Answer spans in the order they are stated; with ``verdicts`` also lines that are only a verdict
    (for word answers: yes/no, true/false/neither), which real teachers end with more often than not."""
    text = strip_markdown(text)
    found: list[tuple[int, str]] = _verdict_lines(text) if verdicts else []
    boxed = {m.end(): m.start() for m in _BOXED.finditer(text)}
    for start, content in _boxed_contents(text, list(boxed)).items():
        found.append((boxed[start], content))
    markers = list(_MARKERS.finditer(text))
    for m, nxt in zip(markers, markers[1:] + [None]):
        rest = _rest(text, m.end(), nxt.start() if nxt else len(text))
        if rest and not rest.lstrip().startswith(("\\boxed", "\\fbox", "$\\boxed")):  # boxed counted above
            found.append((m.start(), rest))
    found.sort(key=lambda x: x[0])
    return [c for _, c in found]


# a sentence end inside a line: the sentence is whole, whatever the cut after it took
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


def whole_part(text: str) -> str:
    """The part of a cut text whose lines and sentences are whole: up to its last line break, then on
    the line the cut runs through up to its last sentence end before a space. A number, word or step
    the cut runs through may go on past it ("The answer is 1" of "150", "1. **R" of a numbered step)."""
    start = text.rfind("\n") + 1
    ends = [m.end() for m in _SENTENCE_END.finditer(text, start)]
    return text[: ends[-1] if ends else start]


def bare_answer(text: str) -> str | None:
    """The whole output when it is only an answer ("B", "(B).", "42", "yes"); else None."""
    s = strip_markdown(text).strip().rstrip(".").strip()
    if "\n" in s or len(s) > 40 or len(s.split()) > 2:
        return None
    return s or None


# ---- parsers for candidate spans ----------------------------------------------------------------
_NUMBER = re.compile(r"-?\s?\\?\$?\s?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")


def parse_number(cand: str) -> str | None:
    """The first number in a candidate (after the last '=' of its first line), canonical."""
    s = cand.replace("\u2212", "-").split("\n")[0]
    if "=" in s:
        s = s[s.rindex("=") + 1:]
    m = _NUMBER.search(s[:80])
    if not m:
        return None
    return canonical_number(m.group(0))


def canonical_number(s: str) -> str | None:
    """'$1,234.50' -> '1234.5'; '3.0' -> '3'; '50%' -> '50'; None when not a number."""
    s = re.sub(r"[\s$,%\\]", "", s.replace("\u2212", "-")).rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return None
    if v != v or abs(v) == float("inf"):
        return None
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def numbers_equal(a: str, b: str) -> bool:
    x, y = canonical_number(a), canonical_number(b)
    if x is None or y is None:
        return a.strip() == b.strip()
    return abs(float(x) - float(y)) <= 1e-6 * max(1.0, abs(float(y)))


_YES_NO = re.compile(r"^\W*(?:[a-z]+\W+){0,2}?(un)?(yes|no|true|false)\b", re.IGNORECASE)
_NEGATED = re.compile(r"(?:\bnot|n't)\s+$", re.IGNORECASE)


def parse_yes_no(cand: str) -> str | None:
    """yes / no from "Yes", "definitely no", "True", "is not true" (a negation flips a truth value)."""
    m = _YES_NO.match(cand)
    if not m:
        return None
    yes = m.group(2).lower() in ("yes", "true")
    negated = bool(m.group(1)) or bool(_NEGATED.search(cand[: m.start(2)]))
    return "yes" if yes != negated else "no"


def _norm_choice_text(s: str) -> str:
    return re.sub(r"[^a-z0-9/]+", " ", s.lower()).strip()


# "\W*+": the label is the first word character either way, and a lazy "\W*?" before "\s*" backtracked
_LABEL = re.compile(r"^\W*+(?:option|choice)?\s*[\(\[]?([A-Z]|\d)[\)\]]?(?=$|[\s.,:;!)\]])")


def parse_choice(cand: str, choices: list[tuple[str, str]] | None) -> str | None:
    """A choice label given by letter ("(B)", "B.", "Option B") or by its text."""
    labels = [lab for lab, _ in choices] if choices else None
    m = _LABEL.match(cand)
    if m:
        lab = m.group(1)
        if labels is None or lab in labels:
            return lab
        if lab.isalpha() and all(x.isdigit() for x in labels) and ord(lab) - 65 < len(labels):
            return labels[ord(lab) - 65]  # "B" for choices labelled 1-4
        return None
    if not choices:
        return None
    c = _norm_choice_text(cand)
    hits = []
    for lab, text in choices:
        t = _norm_choice_text(text)
        if t and (pos := f" {c} ".find(f" {t} ")) >= 0:
            hits.append((pos, -len(t), lab))
    return min(hits)[2] if hits else None


_NOT = r"(?:not|cannot|\w+n't)\s+(?:be\s+)?"
_NLI = [
    ("neutral", r"neutral|neither|undetermined|indeterminate|inconclusive|unknown|cannot be determined|"
                r"can ?not be (?:determined|inferred|concluded|confirmed|known)|not (?:be )?(?:determined|entailed)|"
                rf"not enough information|not possible to (?:tell|say|determine)|impossible to (?:tell|say)|maybe|"
                rf"{_NOT}(?:necessarily|definitely|certainly) (?:true|false)|unclear|uncertain"),
    ("contradiction", rf"contradict\w*|false|no\b|refuted|untrue|incorrect|{_NOT}true"),
    ("entailment", rf"entail\w*|true|yes\b|follows|correct|{_NOT}false"),
]


def parse_nli(cand: str) -> str | None:
    """entailment / neutral / contradiction, also from true / neither / false; the earliest mention
    wins, and of mentions starting together the longest ("not necessarily true" over "not true")."""
    s = cand[:100].lower()
    hits = []
    for label, pat in _NLI:
        m = re.search(rf"(?<!\w)(?:{pat})", s)
        if m:
            hits.append((m.start(), -len(m.group(0)), label))
    return min(hits)[2] if hits else None


_MATH_WORDS = {"sin", "cos", "tan", "log", "exp", "max", "min", "mod", "gcd", "lcm"}
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _inline_math(s: str) -> str | None:
    """The first non-empty inline-math segment on one line (what ``$$(.+?)$$|$(.+?)$|...`` finds),
    in one pass per delimiter: that regex rescanned the line from every unclosed opener."""
    best = None
    for rank, (opener, closer) in enumerate(_MATH_DELIMITERS):
        i = s.find(opener)
        while i >= 0:
            line_end = s.find("\n", i)
            line_end = len(s) if line_end < 0 else line_end
            j = s.find(closer, i + len(opener) + 1, line_end)
            if j >= 0:
                if best is None or (i, rank) < best[:2]:
                    best = (i, rank, s[i + len(opener):j])
                break
            i = s.find(opener, line_end + 1)  # no closer on this line: no opener on it has one
    return best[2] if best else None


def parse_latex_answer(cand: str) -> str | None:
    """A LaTeX answer: the first inline-math segment, else the span up to the sentence end."""
    s = _inline_math(cand)
    if s is None:
        s = re.split(r"\.\s|\.$|,\s++(?:so|since|because|which)\b|\s++(?:because|since)\b", cand.split("\n")[0])[0]
    s = s.strip().rstrip(".").strip()
    words = re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}", re.sub(r"\\text\{[^}]*\}", "", s))
    if not s or len(words) > 2:  # prose, not an answer
        return None
    if words and not re.search(r"[\d\\]", s) and words[0].islower() and words[0] not in _MATH_WORDS:
        return None  # "see above", "below": no value stated (units after a number are fine)
    return s
