"""Cross-tokenizer alignment on character spans of the path text.

Students have different tokenizers, so token positions never line up; character positions do.
A span is a stretch of the response whose two ends are token boundaries in every tokenizer, so
each student can mean-pool its own tokens inside it and the pooled vectors describe the same text.
Offsets are (start, end) character ranges as fast tokenizers return them; (0, 0) marks specials.

The functions over lists of offsets are the reference; ``align_arrays`` computes the same spans
over (T, 2) arrays, a few array operations per path instead of a Python step per token and
character, for the training data builder (a pool holds up to a million paths).
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

Span = tuple[int, int]
Offsets = list[tuple[int, int]]


def _tokens_inside(offsets: Offsets, start: int, end: int) -> list[Span]:
    """Non-empty tokens lying wholly inside [start, end) (a token straddling either end is dropped)."""
    return [(a, b) for a, b in offsets if a < b and a >= start and b <= end]


def _clean_boundaries(offsets: Offsets, tokens: list[Span], start: int, end: int) -> set[int]:
    """Token starts/ends in [start, end] not strictly inside any token of this tokenizer.

    Starts and ends both count because fast tokenizers trim whitespace out of offsets. A byte-level
    BPE can split one character over tokens that overlap, so a boundary inside another token is
    no boundary at all.
    """
    inside = [0] * (end - start + 2)  # difference array over positions start..end
    for a, b in offsets:
        if a < b and b > start and a < end:
            lo, hi = max(a + 1, start), min(b - 1, end)
            if lo <= hi:
                inside[lo - start] += 1
                inside[hi - start + 1] -= 1
    strictly_inside, depth = set(), 0
    for i in range(end - start + 1):
        depth += inside[i]
        if depth:
            strictly_inside.add(start + i)
    return {x for a, b in tokens for x in (a, b)} - strictly_inside


def common_spans(offsets_per_tokenizer: list[Offsets], start: int, end: int) -> list[Span]:
    """Spans inside [start, end) bounded by boundaries shared by every tokenizer.

    Every kept span holds at least one token of every tokenizer; an elementary span that lacks a
    token of some tokenizer (whitespace one tokenizer keeps and another trims) is merged into the
    next one, and one left over at the end into the last span.
    """
    if not offsets_per_tokenizer:
        raise ValueError("common_spans: need the offsets of at least one tokenizer")
    if not 0 <= start <= end:
        raise ValueError(f"common_spans: bad response range [{start}, {end})")
    tokens = [_tokens_inside(o, start, end) for o in offsets_per_tokenizer]
    shared = set.intersection(*(_clean_boundaries(o, t, start, end) for o, t in zip(offsets_per_tokenizer, tokens)))
    cuts = sorted(shared)
    starts = [sorted(a for a, _ in t) for t in tokens]

    def has_token_everywhere(lo: int, hi: int) -> bool:
        # tokens never cross a shared boundary, so "starts inside [lo, hi)" means "lies inside"
        return all(bisect_right(s, hi - 1) > bisect_right(s, lo - 1) for s in starts)

    spans: list[Span] = []
    lo = cuts[0] if cuts else end
    for hi in cuts[1:]:
        if has_token_everywhere(lo, hi):
            spans.append((lo, hi))
            lo = hi
    if spans and lo < cuts[-1]:
        spans[-1] = (spans[-1][0], cuts[-1])
    return spans


def group_spans(spans: list[Span], max_spans: int) -> list[Span]:
    """Merge consecutive spans into at most ``max_spans`` contiguous groups of near-equal span count."""
    if max_spans < 1:
        raise ValueError(f"group_spans: max_spans must be >= 1, got {max_spans}")
    n = len(spans)
    if n <= max_spans:
        return list(spans)
    size, extra = divmod(n, max_spans)
    groups, i = [], 0
    for g in range(max_spans):
        j = i + size + (1 if g < extra else 0)
        groups.append((spans[i][0], spans[j - 1][1]))
        i = j
    return groups


def token_span_ids(offsets: Offsets, spans: list[Span]) -> list[int]:
    """Index of the span holding each token, -1 for tokens outside every span and empty-offset tokens."""
    span_starts = [a for a, _ in spans]
    ids = []
    for a, b in offsets:
        k = bisect_right(span_starts, a) - 1
        ids.append(k if a < b and k >= 0 and b <= spans[k][1] else -1)
    return ids


def rebase(offsets: Offsets, start: int) -> Offsets:
    """Offsets relative to ``start``; use when students' prompts differ (chat templates) but the
    response text is the same: rebase each to its own response start and align on [0, len(response))."""
    return [(a - start, b - start) if a < b else (a, b) for a, b in offsets]


def align(
    tokenizers_offsets: list[Offsets], start: int, end: int, max_spans: int
) -> tuple[list[Span], list[list[int]]]:
    """Grouped common spans and, per tokenizer, each token's span index."""
    spans = group_spans(common_spans(tokenizers_offsets, start, end), max_spans)
    return spans, [token_span_ids(o, spans) for o in tokenizers_offsets]


def align_arrays(offsets: list[np.ndarray], end: int, max_spans: int) -> tuple[int, list[np.ndarray]]:
    """``align`` over [0, end) for offsets given as (T, 2) integer arrays: the number of grouped
    spans and, per tokenizer, each token's span index (-1 outside every span)."""
    if max_spans < 1:
        raise ValueError(f"group_spans: max_spans must be >= 1, got {max_spans}")
    L = end + 1  # character positions 0..end
    shared = np.ones(L, bool)
    starts_before = []  # per tokenizer: starts_before[x] = tokens starting before position x
    for off in offsets:
        a, b = off[:, 0], off[:, 1]
        live = a < b
        over = live & (b > 0) & (a < end)  # positions a+1..b-1 of these lie strictly inside a token
        lo, hi = np.maximum(a[over] + 1, 0), np.minimum(b[over] - 1, end)
        keep = lo <= hi
        diff = np.bincount(lo[keep], minlength=L + 1) - np.bincount(hi[keep] + 1, minlength=L + 1)
        inside = live & (a >= 0) & (b <= end)
        bound = np.zeros(L, bool)
        bound[a[inside]] = True
        bound[b[inside]] = True
        shared &= bound & (np.cumsum(diff[:L]) == 0)
        starts_before.append(np.concatenate([[0], np.cumsum(np.bincount(a[inside], minlength=L))]))
    cuts = np.flatnonzero(shared)
    if len(cuts) < 2:
        return 0, [np.full(len(o), -1, np.int64) for o in offsets]
    # every tokenizer has a token in the elementary span [cuts[k], cuts[k+1])?
    has = np.stack([sb[cuts[1:]] - sb[cuts[:-1]] > 0 for sb in starts_before])
    if has.all():
        los, his = cuts[:-1], cuts[1:]
    else:  # merge each elementary span lacking some tokenizer's token into the next (as common_spans)
        bits = (has.astype(np.int64) << np.arange(len(offsets))[:, None]).sum(0).tolist()
        full, seen, ends = (1 << len(offsets)) - 1, 0, []
        for k, bit in enumerate(bits):
            seen |= bit
            if seen == full:
                ends.append(k + 1)
                seen = 0
        if not ends:
            return 0, [np.full(len(o), -1, np.int64) for o in offsets]
        ends = np.asarray(ends)
        los, his = cuts[np.concatenate([[0], ends[:-1]])], cuts[ends]
        his[-1] = cuts[-1]  # a leftover tail joins the last span
    n = len(los)
    if n > max_spans:  # group_spans: contiguous groups of near-equal span count
        size, extra = divmod(n, max_spans)
        stops = np.cumsum([size + (g < extra) for g in range(max_spans)])
        los, his, n = los[np.concatenate([[0], stops[:-1]])], his[stops - 1], max_spans
    ids = []
    for off in offsets:
        a, b = off[:, 0], off[:, 1]
        k = np.searchsorted(los, a, side="right") - 1
        ok = (a < b) & (k >= 0) & (b <= his[np.maximum(k, 0)])
        ids.append(np.where(ok, k, -1))
    return n, ids
