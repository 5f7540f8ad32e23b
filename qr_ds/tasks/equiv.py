"""MATH answer equivalence.

Three tiers, cheapest first, none of which can hang or crash on bad LaTeX:
1. string normalization (\\dfrac -> \\frac, \\left( -> (, units, degrees, dollars, spaces, ``3.0``);
2. a small LaTeX -> Python-AST evaluator (no eval) comparing values, with free variables
   sampled at fixed points, and tuples/intervals compared element-wise;
3. sympy's LaTeX parser (lark backend), only for short strings tier 2 could not read.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from decimal import Decimal

_UNIT_WORDS = r"(?:cm|m|km|mm|inches|inch|in|feet|foot|ft|units?|degrees?|meters?|centimeters?|dollars?|cents?|hours?|minutes?|seconds?|days?|sq|square)"


def _fix_fracs(s: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}, \sqrt2 -> \sqrt{2}."""
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)
    return s


def normalize(s: str) -> str:
    """A canonical string for a MATH answer; equal strings mean equal answers."""
    s = str(s).strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = re.sub(r"\\(?:d|t)frac", r"\\frac", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{\s*" + _UNIT_WORDS + r"(?:\^?\{?\d\}?)?\s*\}", "", s)
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"(?<=\d)\s*" + _UNIT_WORDS + r"(?:\^\d)?\s*$", "", s)
    s = s.replace("\\le", "\\leq").replace("\\leqq", "\\leq").replace("\\ge", "\\geq").replace("\\geqq", "\\geq")
    s = s.replace("\\infinity", "\\infty").replace("\\emptyset", "\\varnothing")
    s = re.sub(r"\s+", "", s).rstrip(".")
    if re.fullmatch(r"[a-zA-Z]\w*=[^=]+", s) and "," not in s:  # "x=5" -> "5"
        s = s.split("=", 1)[1]
    s = _fix_fracs(s)
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # ".5" -> "0.5"
    s = re.sub(r"(\d)\.0+(?!\d)", r"\1", s)  # "3.0" -> "3"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # 1,000,000 (a number, not a list)
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


# ---- tier 2: LaTeX -> Python expression -> safe evaluation -----------------------------------
_FUNCS = {"sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "log": math.log, "ln": math.log,
          "exp": math.exp}
_CONSTS = {"pi": math.pi}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
_DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
_VAR_POINTS = (0.7311, 1.9173, -1.3377)


def _to_python(s: str) -> str | None:
    r"""Translate simple LaTeX (\frac, \sqrt, \pi, ^, \cdot, implicit products) to Python syntax."""
    s = _fix_fracs(s)
    for _ in range(8):  # nested \frac / \sqrt, innermost first
        s2 = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s2 = re.sub(r"\\sqrt\[([^{}\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", s2)
        s2 = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s2)
        if s2 == s:
            break
        s = s2
    s = re.sub(r"\\(sin|cos|tan|log|ln|exp)\b", r"\1", s)
    s = s.replace("\\pi", " pi ").replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    s = s.replace("{", "(").replace("}", ")")
    if "\\" in s or re.search(r"[^\w\s+\-*/().]", s):
        return None
    s = re.sub(r"(?<=[\d)])\s*(?=[a-zA-Z(])", "*", s)  # 2x, 2(x), (a)(b), 2pi
    s = re.sub(r"(?<=\bpi)\s*(?=[\w(])", "*", s)
    s = re.sub(r"\b([a-zA-Z])(?=[a-zA-Z(])(?!qrt|in\b|os\b|an\b|og\b|n\b|xp\b|i\b)", r"\1*", s)  # xy -> x*y
    return s.strip()


def _eval(node: ast.AST, env: dict[str, float]) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body, env)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        if node.id in env:
            return env[node.id]
        raise ValueError(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, env)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _eval(node.left, env), _eval(node.right, env)
        if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):  # keep it cheap
            raise ValueError("power too large")
        r = _OPS[type(node.op)](a, b)
        if isinstance(r, complex):
            raise ValueError("complex")
        return r
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and len(node.args) == 1:
        return _FUNCS[node.func.id](_eval(node.args[0], env))
    raise ValueError(type(node).__name__)


def _variables(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _CONSTS and n.id not in _FUNCS}


def _values(expr: str) -> list[float] | None:
    """Values of one expression at the fixed variable points; None when unreadable."""
    py = _to_python(expr)
    if py is None or len(py) > 200:
        return None
    try:
        tree = ast.parse(py, mode="eval")
        names = sorted(_variables(tree))
        if any(len(n) > 1 for n in names):
            return None
        # each name gets its own values, so that "x" and "y" differ
        points = [{n: p + 0.1371 * (ord(n) - 96) for n in names} for p in _VAR_POINTS] if names else [{}]
        return [_eval(tree, env) for env in points]
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None


def _split_top(s: str) -> tuple[str, list[str], str] | None:
    """'(1,2]' -> ('(', ['1', '2'], ']'); None when not a bracketed list."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        parts = _split_commas(s)
        return ("", parts, "") if len(parts) > 1 else None
    parts = _split_commas(s[1:-1])
    return (s[0], parts, s[-1]) if parts is not None else None


def _split_commas(s: str) -> list[str] | None:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return None
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))


def _sympy_equal(a: str, b: str) -> bool | None:
    if len(a) > 80 or len(b) > 80:
        return None
    try:
        import sympy
        from sympy.parsing.latex import parse_latex

        diff = parse_latex(a, backend="lark") - parse_latex(b, backend="lark")
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # parser missing or LaTeX it cannot read: undecided
        return None


def math_equiv(pred: str | None, gold: str | None) -> bool:
    """True when two MATH answers are the same value (or the same after normalization)."""
    if pred is None or gold is None:
        return False
    a, b = normalize(pred), normalize(gold)
    if a == b:
        return True
    if not a or not b:
        return False
    if _DECIMAL.fullmatch(a) and _DECIMAL.fullmatch(b):  # exact: 1000000000 != 1000000001
        return Decimal(a) == Decimal(b)
    ta, tb = _split_top(a), _split_top(b)
    if ta and tb:
        if len(ta[1]) > 1 or len(tb[1]) > 1 or (ta[0] and tb[0]):
            return ta[0] == tb[0] and ta[2] == tb[2] and len(ta[1]) == len(tb[1]) and all(
                math_equiv(x, y) for x, y in zip(ta[1], tb[1])
            )
    va, vb = _values(a), _values(b)
    if va is not None and vb is not None:
        return _close(va, vb)
    if re.search(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", a + " " + b):  # words: sympy would read them as products
        return False
    if "," in a + b:  # lists the cheap tiers could not read: sympy reads no lists
        return False
    return bool(_sympy_equal(a, b))
