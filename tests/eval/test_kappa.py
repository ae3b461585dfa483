"""Kappa against hand-computed textbook values (Wikipedia's worked examples) and the edge cases."""

from __future__ import annotations

import pytest

from owl.eval.kappa import cohen_kappa, fleiss_from_ratings, fleiss_kappa, weighted_kappa


def _pairs(table: dict[tuple[str, str], int]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for (x, y), n in table.items():
        a += [x] * n
        b += [y] * n
    return a, b


def test_cohen_wikipedia_example():
    # Wikipedia "Cohen's kappa": 50 proposals, Yes/Yes 20, Yes/No 5, No/Yes 10, No/No 15 -> p_o .7, p_e .5, 0.4
    a, b = _pairs({("Y", "Y"): 20, ("Y", "N"): 5, ("N", "Y"): 10, ("N", "N"): 15})
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_perfect_agreement_is_one():
    r = list("ABCDABCA")
    assert cohen_kappa(r, r) == pytest.approx(1.0)
    assert weighted_kappa(r, r) == pytest.approx(1.0)
    assert fleiss_from_ratings([[x, x, x] for x in r]) == pytest.approx(1.0)
    assert cohen_kappa(["A", "A"], ["A", "A"]) == 1.0


def test_weighted_kappa_hand_computed():
    # 4 items: (A,A) (A,B) (C,D) (D,D) over A..D, quadratic weights w=(|i-j|/3)^2.
    # observed disagreement = (1/9 + 1/9) / 4 = 1/18; rows A2 C1 D1, cols A1 B1 D2;
    # expected = sum w*r*c / 16 = (A: 2*1/9 + 2*2*1; C: 4/9 + 1/9 + 2*1/9; D: 1 + 4/9) / 16 = (58/9) / 16
    # kappa = 1 - (1/18) / (58/144) = 1 - 8/58
    a, b = list("AACD"), list("ABDD")
    assert weighted_kappa(a, b) == pytest.approx(1 - 8 / 58)
    # A-vs-D is penalised more than A-vs-B under quadratic weights, not under plain Cohen
    near = weighted_kappa(list("ABCDA"), list("BBCDA"))
    far = weighted_kappa(list("ABCDA"), list("DBCDA"))
    assert near > far
    assert cohen_kappa(list("ABCDA"), list("BBCDA")) == pytest.approx(cohen_kappa(list("ABCDA"), list("DBCDA")))


def test_fleiss_wikipedia_example():
    # Wikipedia "Fleiss' kappa": 10 items, 14 raters, 5 categories -> 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_errors():
    with pytest.raises(ValueError):
        cohen_kappa(["A"], ["A", "B"])
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [2, 1]])
    with pytest.raises(ValueError):
        weighted_kappa(["A"], ["B"], weights="cubic")


def test_cohen_4x4_hand_computed():
    # rows rater 1, columns rater 2, A..D; n = 40, diagonal 32 -> p_o = 0.8
    # row totals 12 11 8 9, column totals 11 11 9 9 -> p_e = (132 + 121 + 72 + 81) / 1600 = 406 / 1600
    counts = [[10, 2, 0, 0], [1, 8, 2, 0], [0, 1, 6, 1], [0, 0, 1, 8]]
    table = {(x, y): counts[i][j] for i, x in enumerate("ABCD") for j, y in enumerate("ABCD")}
    a, b = _pairs(table)
    p_e = 406 / 1600
    assert cohen_kappa(a, b) == pytest.approx((0.8 - p_e) / (1 - p_e))  # 0.732


def test_weighted_kappa_matches_matrix_formula():
    """Against an independent numpy formulation: kappa_w = 1 - sum(W*O) / sum(W*E), E = outer(rows, cols) / n."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.choice(list("ABCD"), size=30)
        b = np.where(rng.random(30) < 0.6, a, rng.choice(list("ABCD"), size=30))
        idx = {c: i for i, c in enumerate("ABCD")}
        observed = np.zeros((4, 4))
        for x, y in zip(a, b):
            observed[idx[x], idx[y]] += 1
        expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
        i, j = np.indices((4, 4))
        for name, w in (("quadratic", ((i - j) / 3) ** 2), ("linear", abs(i - j) / 3), ("none", (i != j) * 1.0)):
            want = 1 - (w * observed).sum() / (w * expected).sum()
            assert weighted_kappa(list(a), list(b), weights=name) == pytest.approx(want)
