"""From the arms' per-document measurements to the ablations' figures, each with a bootstrap 95% interval
over evaluation documents (paired: the arms of one ablation are scored on the same documents).

Each function receives the measurements of the arms by their role in the ablation (stages/ablate/roles.py), never
by arm name.
"""
from __future__ import annotations

import numpy as np

from codellama_recipe.evaluation.bootstrap import bootstrap_interval, pooled_mean, pooled_ratio

def _pooled(sums, counts, n, seed) -> dict:
    return bootstrap_interval(pooled_mean, [sums, counts], n, seed)


def _ratio(a: dict, b: dict, n, seed, sums="sums", counts="counts") -> dict:
    return bootstrap_interval(pooled_ratio, [a[sums], a[counts], b[sums], b[counts]], n, seed)


def suffix_gains(measured: dict, n: int, seed: int) -> dict:
    """Middle loss without the true suffix / with it, per FIM mode measured both ways: above 1 when the model takes
    something from the suffix. `psm`, `spm`: the suffix emptied (the issue's definition); `psm_other`,
    `spm_other`: another file's suffix in its place (the prompt keeps its shape; evaluation/infill_loss.py)."""
    out = {}
    for mode in ("psm", "spm"):
        for control, name in (("nosuffix", mode), ("othersuffix", f"{mode}_other")):
            if f"infill:{mode}_{control}" in measured and f"infill:{mode}" in measured:
                out[name] = _ratio(measured[f"infill:{mode}_{control}"], measured[f"infill:{mode}"], n, seed)
    return out


def infill_point(fim: dict, ar: dict, n: int, seed: int) -> dict:
    """One point of the learning curve (or the final figures) of a FIM arm against the AR twin."""
    out = {"suffix_gain": suffix_gains(fim, n, seed), "infill_loss_ratio": {}, "exact_match": {}}
    for mode in ("psm", "spm"):
        if f"infill:{mode}" in fim and "infill:ar" in ar:
            out["infill_loss_ratio"][f"{mode}/ar"] = _ratio(fim[f"infill:{mode}"], ar["infill:ar"], n, seed)
        if f"exact:{mode}" in fim:
            out["exact_match"][mode] = _pooled(fim[f"exact:{mode}"]["hits"], fim[f"exact:{mode}"]["n"], n, seed)
    if "exact:ar" in ar:
        out["exact_match"]["ar"] = _pooled(ar["exact:ar"]["hits"], ar["exact:ar"]["n"], n, seed)
    return out


def curve_figures(fim_arms: dict[str, dict], ar: dict, batch_tokens: int, n: int, seed: int) -> dict:
    """{FIM arm: [{step, tokens, suffix_gain, infill_loss_ratio, exact_match}, ...]} for each FIM arm (by name) at
    its curve steps, against the AR twin `ar` where it was measured at the same step."""
    ar_curve = ar.get("curve", {})
    out = {}
    for arm, measured in fim_arms.items():
        curve = measured.get("curve", {})
        out[arm] = [{"step": int(step), "tokens": int(step) * batch_tokens,
                     **infill_point(curve[step], ar_curve.get(step, {}), n, seed)}
                    for step in sorted(curve, key=int)]
    return out


def fim_figures(fim: dict, ar: dict, n: int, seed: int, psm_only: dict | None = None) -> dict:
    infill = {"fim_psm": fim["infill:psm"], "fim_spm": fim["infill:spm"], "ar": ar["infill:ar"]}
    exact = {"fim_psm": fim["exact:psm"], "fim_spm": fim["exact:spm"], "ar": ar["exact:ar"]}
    return {
        "suffix_gain": suffix_gains(fim, n, seed),
        "psm_only": None if psm_only is None else infill_point(psm_only, ar, n, seed),
        "infill_loss": {k: _pooled(v["sums"], v["counts"], n, seed) for k, v in infill.items()},
        "infill_loss_ratio": {"fim_psm/ar": _ratio(infill["fim_psm"], infill["ar"], n, seed),
                              "fim_spm/ar": _ratio(infill["fim_spm"], infill["ar"], n, seed)},
        "exact_match": {k: _pooled(v["hits"], v["n"], n, seed) for k, v in exact.items()},
        "exact_match_n": int(sum(exact["ar"]["n"])),
        "exact_match_examples": {k: v.get("examples", []) for k, v in exact.items()},
        "val_loss": val_loss_figures({"fim": fim["val_loss"], "ar": ar["val_loss"]}, "fim", "ar", n, seed),
        "documents": len(infill["ar"]["sums"]),
    }


def val_loss_figures(by_arm: dict, numerator: str, denominator: str, n: int, seed: int) -> dict:
    """Per source: each arm's token-weighted loss and the ratio numerator/denominator."""
    out = {}
    for source in by_arm[denominator]:
        a, b = by_arm[numerator][source], by_arm[denominator][source]
        out[source] = {numerator: _pooled(a["sums"], a["counts"], n, seed),
                       denominator: _pooled(b["sums"], b["counts"], n, seed),
                       f"{numerator}/{denominator}": _ratio(a, b, n, seed), "documents": len(a["sums"])}
    return out


def _log_ppl_at(column: int, length: int):
    return lambda sums: float(np.mean(sums[:, column]) / length)


def lcft_figures(by_role: dict[str, dict], n: int, seed: int, seq_len: int) -> dict:
    """The long-context figures from the arms in the roles `none`, `theta1e4`, `theta1e6`."""
    ppl = {role: np.asarray(by_role[role]["perplexity"]["sums"]) for role in ("none", "theta1e4", "theta1e6")}
    lengths = by_role["none"]["perplexity"]["lengths"]
    curves = {}
    for role, sums in ppl.items():
        points = []
        for c, L in enumerate(lengths):
            log_ppl = bootstrap_interval(lambda s, L=L: float(np.sum(s) / (len(s) * L)), [sums[:, c]], n, seed)
            points.append({k: float(np.exp(v)) for k, v in log_ppl.items()})
        curves[role] = points

    def ratio(num: str, den: str, length: int) -> dict:
        c = lengths.index(length)
        log_ratio = bootstrap_interval(lambda a, b: float((np.sum(a) - np.sum(b)) / (len(a) * length)),
                                       [ppl[num][:, c], ppl[den][:, c]], n, seed)
        return {k: float(np.exp(v)) for k, v in log_ratio.items()}

    missing = {4 * seq_len, 16 * seq_len} - set(lengths)
    if missing:
        raise ValueError(f"perplexity was measured at {lengths}; the figures need 4T and 16T = {sorted(missing)}")
    retrieval = {role: retrieval_figures(by_role[role]["key_retrieval"], n, seed) for role in ppl}
    return {"context_lengths": lengths, "files": int(ppl["none"].shape[0]), "ppl": curves,
            "ppl_ratio_to_none": {role: [ratio(role, "none", L) for L in lengths] for role in ("theta1e4", "theta1e6")},
            "ratios": {"ppl@16T theta1e6/theta1e4": ratio("theta1e6", "theta1e4", 16 * seq_len),
                       "ppl@16T theta1e6/none": ratio("theta1e6", "none", 16 * seq_len),
                       "ppl@4T theta1e6/none": ratio("theta1e6", "none", 4 * seq_len)},
            "key_retrieval": retrieval}


def retrieval_figures(measured: dict, n: int, seed: int) -> dict:
    lengths, positions, hits = measured["lengths"], measured["positions"], measured["hits"]
    grid = [[float(np.mean(hits[f"{L}/{p}"])) for p in positions] for L in lengths]
    by_length = {}
    for L in lengths:
        pooled = [h for p in positions for h in hits[f"{L}/{p}"]]
        by_length[str(L)] = bootstrap_interval(np.mean, [pooled], n, seed)
    return {"lengths": lengths, "positions": positions, "accuracy": grid, "by_length": by_length,
            "examples_per_cell": len(hits[f"{lengths[0]}/{positions[0]}"])}


def python_figures(python: dict, code: dict, n: int, seed: int) -> dict:
    return {"val_loss": val_loss_figures({"python": python["val_loss"], "code": code["val_loss"]}, "python", "code",
                                         n, seed)}
