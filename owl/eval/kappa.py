"""Chance-corrected agreement between raters: Cohen's kappa, its quadratic-weighted form, and Fleiss' kappa.

Human ratings of free-form answers are only as useful as they are repeatable; raw percent agreement flatters
raters who mostly give the same letter, so the OwlEval report states kappa. Written out here (a few lines each)
rather than pulled from scikit-learn/statsmodels so the formulas are visible and the package adds no dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

LETTERS = ("A", "B", "C", "D")


def _categories(*seqs: Sequence[str], categories: Sequence[str] | None) -> list[str]:
    if categories is not None:
        return list(categories)
    return sorted({c for s in seqs for c in s})


def cohen_kappa(a: Sequence[str], b: Sequence[str], categories: Sequence[str] | None = None) -> float:
    """Cohen's kappa of two raters who rated the same items in the same order.

    ``(p_o - p_e) / (1 - p_e)``; when chance agreement is already total (both raters always gave one and the
    same letter) the raters agree perfectly and 1.0 is returned rather than 0/0.
    """
    return weighted_kappa(a, b, categories=categories, weights="none")


def weighted_kappa(
    a: Sequence[str], b: Sequence[str], categories: Sequence[str] | None = None, weights: str = "quadratic"
) -> float:
    """Weighted Cohen's kappa for ordinal ratings (``categories`` in order; default A>B>C>D).

    Quadratic weights count an A-vs-D disagreement nine times an A-vs-B one, which matches how far apart the
    letters of the rating scale are. ``weights="linear"`` and ``"none"`` (plain Cohen) are also accepted.
    """
    if len(a) != len(b):
        raise ValueError(f"the two raters rated different numbers of items ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("no items rated by both raters")
    cats = _categories(a, b, categories=categories)
    if categories is None and set(cats) <= set(LETTERS) and weights != "none":
        cats = list(LETTERS)
    index = {c: i for i, c in enumerate(cats)}
    k, n = len(cats), len(a)
    observed = [[0.0] * k for _ in range(k)]
    for x, y in zip(a, b, strict=True):
        observed[index[x]][index[y]] += 1
    rows = [sum(r) for r in observed]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]

    def w(i: int, j: int) -> float:  # disagreement weight: 0 on the diagonal
        if weights == "none":
            return 0.0 if i == j else 1.0
        if k == 1:
            return 0.0
        d = abs(i - j) / (k - 1)
        return d * d if weights == "quadratic" else d

    if weights not in ("none", "linear", "quadratic"):
        raise ValueError(f"unknown weights {weights!r}: use none, linear or quadratic")
    obs = sum(w(i, j) * observed[i][j] for i in range(k) for j in range(k)) / n
    exp = sum(w(i, j) * rows[i] * cols[j] for i in range(k) for j in range(k)) / (n * n)
    if exp == 0:
        return 1.0
    return 1.0 - obs / exp


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories count table (each row: how many raters chose each category).

    Every item must have been rated by the same number of raters (at least two); that is the statistic's
    definition, so the report only passes items that all raters rated.
    """
    if not table:
        raise ValueError("no items rated by all raters")
    n = sum(table[0])
    if n < 2 or any(sum(row) != n for row in table):
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    items = len(table)
    k = len(table[0])
    p_j = [sum(row[j] for row in table) / (items * n) for j in range(k)]
    p_i = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in table]
    p_bar = sum(p_i) / items
    p_e = sum(p * p for p in p_j)
    if p_e == 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)


def fleiss_from_ratings(ratings: Sequence[Sequence[str]], categories: Sequence[str] = LETTERS) -> float:
    """Fleiss' kappa from per-item lists of letters (one letter per rater)."""
    index = {c: i for i, c in enumerate(categories)}
    table = []
    for item in ratings:
        row = [0] * len(categories)
        for r in item:
            row[index[r]] += 1
        table.append(row)
    return fleiss_kappa(table)
