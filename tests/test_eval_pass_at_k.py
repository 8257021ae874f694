"""pass@k: the unbiased estimator against values computed by hand and from binomial coefficients."""
import math

import pytest

from codellama_recipe.evaluation.pass_at_k import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 0, 1, 0.0),                 # c = 0: never
    (5, 0, 5, 0.0),                 # c = 0 and n = k
    (5, 5, 5, 1.0),                 # all correct
    (5, 1, 5, 1.0),                 # n = k: any correct sample is drawn
    (5, 2, 5, 1.0),
    (10, 3, 1, 0.3),                # k = 1: c / n
    (10, 3, 5, 1 - 21 / 252),       # 1 - C(7,5)/C(10,5)
    (4, 2, 2, 1 - 1 / 6),           # 1 - C(2,2)/C(4,2)
    (200, 1, 100, 0.5),             # 1 - C(199,100)/C(200,100) = 1 - 100/200
])
def test_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_binomial_formula_everywhere():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)          # k > n
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)


def test_mean_over_tasks_skips_k_above_samples():
    counts = [(4, 0), (4, 2), (4, 4)]
    got = mean_pass_at_k(counts, ks=[1, 2, 10])
    assert set(got) == {"pass@1", "pass@2"}
    assert got["pass@1"] == pytest.approx((0 + 0.5 + 1) / 3)
    assert got["pass@2"] == pytest.approx((0 + (1 - 1 / 6) + 1) / 3)
