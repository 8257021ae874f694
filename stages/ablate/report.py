"""The ablations' outputs: results.json, PNG plots, report.md and the summary lines scripts read.

Every figure carries its bootstrap 95% interval; the report states each paper claim, the miniature
measurement and whether the direction holds (and whether the issue's target is met).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from codellama_recipe.core.atomic import write_json_atomic, write_text_atomic  # noqa: E402

GROUP_TITLES = {"fim": "FIM twins", "lcft": "long context", "python": "Python"}


def summary_lines(results: dict) -> list[str]:
    """The lines the command prints last (scripts parse them), for the ablations that were run."""
    lines = []
    if "fim" in results:
        lines += _fim_lines(results["fim"])
    if "lcft" in results:
        r = results["lcft"]["ratios"]
        lines += [f"lcft: {k} = {v['value']:.4f}" for k, v in r.items()]
    if "python" in results:
        lines.append(f"python: python_val_loss python/code = "
                     f"{results['python']['val_loss']['python']['python/code']['value']:.4f}")
    if results.get("seeds"):
        rows, seeds = results["seeds"], list(results["seeds"][0]["values"])
        lines.append(f"seeds: {len(seeds)} ({', '.join(seeds)}); direction holds in every seed for "
                     f"{sum(r['direction_every_seed'] for r in rows)} of {len(rows)} claims, target met in every "
                     f"seed for {sum(r['met_every_seed'] for r in rows)}")
    return lines


def _fim_lines(fim: dict) -> list[str]:
    em = fim["exact_match"]
    gain = fim["suffix_gain"]
    lines = [f"fim: infill_loss fim_psm/ar = {fim['infill_loss_ratio']['fim_psm/ar']['value']:.4f}",
            f"fim: exact_match fim_psm = {em['fim_psm']['value']:.4f} fim_spm = {em['fim_spm']['value']:.4f} "
            f"ar = {em['ar']['value']:.4f}",
            f"fim: suffix_gain psm = {gain['psm']['value']:.4f} spm = {gain['spm']['value']:.4f} "
            f"(other file's suffix: psm = {gain['psm_other']['value']:.4f} spm = {gain['spm_other']['value']:.4f})",
            f"fim: ar_val_loss fim/ar = {fim['val_loss']['code']['fim/ar']['value']:.4f}"]
    only = fim.get("psm_only")
    if only:
        lines.insert(3, f"fim: psm_only infill_loss psm/ar = {only['infill_loss_ratio']['psm/ar']['value']:.4f} "
                        f"suffix_gain = {only['suffix_gain']['psm']['value']:.4f} "
                        f"(other: {only['suffix_gain']['psm_other']['value']:.4f}) "
                        f"exact_match = {only['exact_match']['psm']['value']:.4f}")
    return lines


def claims(results: dict) -> list[dict]:
    """Each paper claim of the ablations that were run, with the miniature measurement, the direction and the
    issue's target."""
    makers = {"fim": _fim_claims, "lcft": _lcft_claims, "python": _python_claims}
    return [c for ablation, make in makers.items() if ablation in results for c in make(results[ablation])]


def _fim_claims(fim: dict) -> list[dict]:
    em = fim["exact_match"]
    fim_em, ar_em = em["fim_psm"]["value"], em["ar"]["value"]
    em_ratio = fim_em / ar_em if ar_em else (float("inf") if fim_em else float("nan"))
    infill = fim["infill_loss_ratio"]["fim_psm/ar"]
    gain = fim["suffix_gain"]["psm"]
    cost = max(row["fim/ar"]["value"] for row in fim["val_loss"].values())
    return [
        {"ablation": "fim", "claim": "FIM training lets the model use the suffix: the middle is predicted better "
                                     "than from the prefix alone (paper §2.3, Table 5)",
         "figure": "infill loss fim_psm/ar", "interval": infill, "direction": infill["value"] < 1,
         "target": "≤ 0.8, 95% CI below 0.9", "met": infill["value"] <= 0.8 and infill["high"] < 0.9},
        {"ablation": "fim", "claim": "the FIM model uses the suffix: emptying it raises the middle's loss",
         "figure": "suffix gain psm (loss without suffix / with)", "interval": gain,
         "note": f"spm {_ci(fim['suffix_gain']['spm'], 3)}; with another file's suffix instead of an empty one: "
                 f"psm {_ci(fim['suffix_gain']['psm_other'], 3)}, spm {_ci(fim['suffix_gain']['spm_other'], 3)}",
         "direction": gain["value"] > 1,
         "target": "≥ 1.15", "met": gain["value"] >= 1.15},
        {"ablation": "fim", "claim": "a FIM model fills a removed line; an AR model rarely writes it from the "
                                     "prefix (paper Table 5, single-line infilling)",
         "figure": "exact match fim_psm (vs ar)", "interval": em["fim_psm"], "ratio": em_ratio,
         "note": f"ar {_ci(em['ar'], 3)}, ratio {em_ratio:.2f}",
         "direction": fim_em > ar_em, "target": "≥ 2× ar and ≥ 0.10",
         "met": bool(fim_em >= 0.10 and em_ratio >= 2)},
        {"ablation": "fim", "claim": "FIM costs little left-to-right quality (paper Table 5: a modest drop)",
         "figure": "code val loss fim/ar", "interval": fim["val_loss"]["code"]["fim/ar"],
         "note": "largest over sources " + f"{cost:.4f} (" + ", ".join(
             f"{k} {v['fim/ar']['value']:.3f}" for k, v in fim["val_loss"].items()) + ")",
         "direction": cost <= 1.05, "target": "≤ 1.03 on every source", "met": cost <= 1.03},
    ]


def _lcft_claims(lcft: dict) -> list[dict]:
    r = lcft["ratios"]
    return [
        {"ablation": "lcft", "claim": "raising θ to 1e6 for LCFT extrapolates beyond the trained length; θ = 1e4 "
                                      "does not (paper §2.4, Fig. 4a, Table 18)",
         "figure": "ppl@16T theta1e6/theta1e4", "interval": r["ppl@16T theta1e6/theta1e4"],
         "direction": r["ppl@16T theta1e6/theta1e4"]["value"] < 1,
         "target": "≤ 0.9", "met": r["ppl@16T theta1e6/theta1e4"]["value"] <= 0.9},
        {"ablation": "lcft", "claim": "without LCFT the model degrades beyond its trained length (paper Table 18)",
         "figure": "ppl@16T theta1e6/none", "interval": r["ppl@16T theta1e6/none"],
         "direction": r["ppl@16T theta1e6/none"]["value"] < 1,
         "target": "≤ 0.9", "met": r["ppl@16T theta1e6/none"]["value"] <= 0.9},
        {"ablation": "lcft", "claim": "LCFT helps within its new training length (4T)",
         "figure": "ppl@4T theta1e6/none", "interval": r["ppl@4T theta1e6/none"],
         "direction": r["ppl@4T theta1e6/none"]["value"] < 1, "target": "< 1 (no number in the issue)",
         "met": r["ppl@4T theta1e6/none"]["value"] < 1},
    ]


def _python_claims(py: dict) -> list[dict]:
    return [
        {"ablation": "python", "claim": "more Python tokens make a better Python model (paper §2.2, Table 2: "
                                        "Code Llama - Python 7B 38.4 vs 33.5 HumanEval pass@1)",
         "figure": "python val loss python/code", "interval": py["val_loss"]["python"]["python/code"],
         "direction": py["val_loss"]["python"]["python/code"]["value"] < 1,
         "target": "≤ 0.97", "met": py["val_loss"]["python"]["python/code"]["value"] <= 0.97},
    ]


def across_seeds(claims_by_seed: dict[int, list[dict]]) -> list[dict]:
    """Each claim's figure over training seeds: a claim holds (or meets its target) only if it does in every seed."""
    seeds = list(claims_by_seed)
    out = []
    for i, first in enumerate(claims_by_seed[seeds[0]]):
        rows = [claims_by_seed[s][i] for s in seeds]
        values = [r["interval"]["value"] for r in rows]
        out.append({"ablation": first["ablation"], "figure": first["figure"],
                    "values": {str(s): v for s, v in zip(seeds, values)},
                    "mean": float(np.mean(values)), "min": min(values), "max": max(values),
                    "direction_every_seed": all(r["direction"] for r in rows),
                    "met_every_seed": all(r["met"] for r in rows), "target": first["target"]})
    return out


def _ci(d: dict, digits: int = 4) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


# ------------------------------------------------------------------------------------------------ plots
def plot_names(results: dict) -> list[str]:
    """The PNG files the ablations that were run have figures for."""
    names = ["training_curves.png"]
    if "fim" in results:
        names += ["fim_infilling.png"] + (["fim_curve.png"] if any(results["fim_curve"].values()) else [])
    if "fim" in results or "python" in results:
        names.append("val_loss_by_source.png")
    if "lcft" in results:
        names += ["lcft_perplexity.png", "lcft_key_retrieval.png"]
    return names


def _metrics(run_dir: Path, arm: str) -> list[dict]:
    path = run_dir / arm / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def training_groups(results: dict) -> dict[str, list[str]]:
    """Per ablation, its arms and the root arm they start from (the general base): one training-curve panel each."""
    arms, groups = results["arms"], {}
    for ablation, roles in results["roles"].items():
        names = list(dict.fromkeys(roles.values()))
        parents = [arms[n]["parent"] for n in names if arms[n]["parent"] is not None]
        roots = [p for p in parents if arms[p]["parent"] is None]
        groups[GROUP_TITLES[ablation]] = list(dict.fromkeys(roots + names))
    return groups


def plot_training_curves(results: dict, run_dir: Path, out: Path) -> None:
    groups = training_groups(results)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (title, arms) in zip(axes[0], groups.items()):
        for arm in arms:
            rows = [r for r in _metrics(run_dir, arm) if "train/loss" in r]
            ax.plot([r["train/tokens_seen"] for r in rows], [r["train/loss"] for r in rows], label=arm)
        ax.set_title(title)
        ax.set_xlabel("tokens (this arm)")
        ax.set_ylabel("train loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _bar(ax, labels, intervals, ylabel, title):
    values = [d["value"] for d in intervals]
    errors = np.array([[d["value"] - d["low"], d["high"] - d["value"]] for d in intervals]).T
    ax.bar(labels, values, yerr=errors, capsize=4, color=["tab:blue", "tab:cyan", "tab:gray", "tab:orange"][:len(labels)])
    ax.set_ylabel(ylabel)
    ax.set_title(title)


def plot_fim(results: dict, out: Path) -> None:
    fim = results["fim"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    labels = ["fim_psm", "fim_spm", "ar"]
    _bar(axes[0], labels, [fim["infill_loss"][k] for k in labels], "loss of the middle's tokens", "infilling loss")
    _bar(axes[1], labels, [fim["exact_match"][k] for k in labels], "exact match", "single-line infilling")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_fim_curve(results: dict, out: Path) -> None:
    """Suffix gain, infill loss ratio to the AR twin and exact match against the twins' training tokens."""
    curves = results["fim_curve"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = ((axes[0], "suffix_gain", "suffix gain (loss without / with suffix)", 1.15),
              (axes[1], "infill_loss_ratio", "infill loss / AR twin's (prefix only)", 0.8),
              (axes[2], "exact_match", "single-line exact match", 0.10))
    for ax, key, title, target in panels:
        for i, (arm, points) in enumerate(curves.items()):
            series = sorted({k for p in points for k in p[key]})
            for name in series:
                if name == "ar" and i > 0:      # the AR twin's points are the same for every FIM arm
                    continue
                pts = [p for p in points if name in p[key]]
                x = [p["tokens"] for p in pts]
                ax.plot(x, [p[key][name]["value"] for p in pts], marker="o",
                        label=name if name == "ar" else f"{arm} {name}")
                ax.fill_between(x, [p[key][name]["low"] for p in pts], [p[key][name]["high"] for p in pts], alpha=0.15)
        ax.axhline(target, color="gray", linestyle=":", linewidth=1)
        if key != "exact_match":
            ax.axhline(1.0, color="black", linewidth=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("twin training tokens (after the general base)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_perplexity(results: dict, seq_len: int, out: Path) -> None:
    lcft, names = results["lcft"], results["roles"]["lcft"]
    lengths = lcft["context_lengths"]
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(12, 4))
    for role, points in lcft["ppl"].items():
        ax.plot(lengths, [p["value"] for p in points], marker="o", label=names[role])
        ax.fill_between(lengths, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)
    ax.set_ylabel("perplexity of positions [0, L)")
    ax.set_title(f"perplexity by context length ({lcft['files']} held-out files)")
    for role, points in lcft["ppl_ratio_to_none"].items():
        ratio_ax.plot(lengths, [p["value"] for p in points], marker="o", label=f"{names[role]} / {names['none']}")
        ratio_ax.fill_between(lengths, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)
    ratio_ax.axhline(1.0, color="black", linewidth=0.8)
    ratio_ax.set_ylabel("perplexity ratio to no LCFT (paired)")
    ratio_ax.set_title("LCFT arms relative to no LCFT")
    for axis in (ax, ratio_ax):
        for factor, name in ((1, "T"), (4, "4T")):
            axis.axvline(factor * seq_len, color="gray", linestyle=":", linewidth=1)
            axis.annotate(name, (factor * seq_len, 1.0), xycoords=("data", "axes fraction"), ha="center",
                          va="bottom", fontsize=8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context length (tokens)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_retrieval(results: dict, out: Path) -> None:
    grids, names = results["lcft"]["key_retrieval"], results["roles"]["lcft"]
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids) + 1, 3.6), constrained_layout=True)
    for ax, (role, g) in zip(axes, grids.items()):
        image = ax.imshow(np.array(g["accuracy"]), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(g["positions"])), [f"{p:g}" for p in g["positions"]])
        ax.set_yticks(range(len(g["lengths"])), [str(L) for L in g["lengths"]])
        ax.set_xlabel("key position")
        ax.set_title(names[role], fontsize=9)
        for (row, column), accuracy in np.ndenumerate(np.array(g["accuracy"])):
            ax.text(column, row, f"{accuracy:.2f}", ha="center", va="center", fontsize=7, color="white")
    axes[0].set_ylabel("length (tokens)")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="accuracy")
    fig.suptitle(f"key retrieval accuracy ({next(iter(grids.values()))['examples_per_cell']} examples per cell)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_val_loss(results: dict, out: Path) -> None:
    panels = {title: (results[ablation]["val_loss"], columns) for ablation, title, columns in
              (("fim", "FIM twins", ["fim", "ar"]), ("python", "Python", ["python", "code"])) if ablation in results}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, (table, arms)) in zip(axes[0], panels.items()):
        sources = list(table)
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            values = [table[s][arm]["value"] for s in sources]
            errors = np.array([[table[s][arm]["value"] - table[s][arm]["low"],
                                table[s][arm]["high"] - table[s][arm]["value"]] for s in sources]).T
            ax.bar(np.arange(len(sources)) + i * width, values, width, yerr=errors, capsize=3, label=arm)
        ax.set_xticks(np.arange(len(sources)) + width * (len(arms) - 1) / 2, sources)
        ax.set_ylabel("held-out loss (left to right)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ report
def markdown(results: dict) -> str:
    setup = results["setup"]
    T = setup["seq_len"]
    model_text = ", ".join(f"{k} {setup['model'][k]}" for k in ("dim", "n_layers", "n_heads", "n_kv_heads"))
    lines = [f"# Ablations of the Code Llama recipe in miniature ({setup['preset']})", "",
             f"Model: Llama, {model_text}; T = {T} tokens; every arm {setup['batch_tokens']:,}-token batches. "
             "Intervals: bootstrap 95% over evaluation documents (paired between the arms of an ablation). "
             "Plots: " + ", ".join(plot_names(results)) + ".", "",
             f"Embedded corpus fingerprint: `{setup.get('corpus_fingerprint')}`.", "", "## Arms", "",
             "| arm | starts from | differs by | steps | tokens | time |", "|---|---|---|---|---|---|"]
    for name, arm in results["arms"].items():
        differs = ", ".join(f"{k}={v}" for k, v in arm["set"].items()) or "-"
        lines.append(f"| {name} | {arm['parent'] or 'random init'} | {differs} | {arm.get('steps', '?')} | "
                     f"{arm.get('tokens', 0):,} | {arm.get('time_s', 0):.0f}s |")
    lines += ["", "## Claims", "", "| ablation | paper claim | figure | measured [95% CI] | direction holds | "
              "target | met |", "|---|---|---|---|---|---|---|"]
    for c in claims(results):
        measured = _ci(c["interval"]) + (f"; {c['note']}" if "note" in c else "")
        lines.append(f"| {c['ablation']} | {c['claim']} | {c['figure']} | {measured} | "
                     f"{'yes' if c['direction'] else 'no'} | {c['target']} | {'yes' if c['met'] else 'no'} |")
    if results.get("seeds"):
        seeds = list(results["seeds"][0]["values"])
        lines += ["", f"## Across training seeds ({', '.join(seeds)})", "",
                  "Every arm below the general base trained once per seed (run_dir/seed<k>/); the same evaluation "
                  "data. A claim holds only when it holds in every seed.", "",
                  "| ablation | figure | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | min – max | direction in every seed | target met in every seed |",
                  "|---|---|" + "---|" * len(seeds) + "---|---|---|"]
        for r in results["seeds"]:
            lines.append(f"| {r['ablation']} | {r['figure']} | " + " | ".join(f"{v:.4f}" for v in r["values"].values())
                         + f" | {r['min']:.4f} – {r['max']:.4f} | {'yes' if r['direction_every_seed'] else 'no'} | "
                         f"{'yes' if r['met_every_seed'] else 'no'} |")
    if "fim" in results:
        lines += _fim_section(results["fim"], results["fim_curve"])
    if "lcft" in results:
        lines += _lcft_section(results["lcft"], results["roles"]["lcft"], T)
    if "python" in results:
        lines += _python_section(results["python"], results["roles"]["python"])
    lines += ["", "## Summary lines", "", "```", *summary_lines(results), "```", ""]
    return "\n".join(lines)


def _fim_section(fim: dict, fim_curve: dict) -> list[str]:
    lines = ["", f"## 1. FIM ({fim['documents']} pieces of the held-out infilling set that fit in T)", "",
              "| | infilling loss (middle tokens) | single-line exact match |", "|---|---|---|"]
    for k in ("fim_psm", "fim_spm", "ar"):
        lines.append(f"| {k} | {_ci(fim['infill_loss'][k])} | {_ci(fim['exact_match'][k], 3)} |")
    lines += ["", f"Ratios: fim_psm/ar {_ci(fim['infill_loss_ratio']['fim_psm/ar'])}, fim_spm/ar "
              f"{_ci(fim['infill_loss_ratio']['fim_spm/ar'])}; exact match over {fim['exact_match_n']} removed lines.",
              "", "Left-to-right held-out loss per source (the cost of FIM):", "",
              "| source | fim | ar | fim/ar | documents |", "|---|---|---|---|---|"]
    for s, row in fim["val_loss"].items():
        lines.append(f"| {s} | {_ci(row['fim'])} | {_ci(row['ar'])} | {_ci(row['fim/ar'])} | {row['documents']} |")
    gains = fim["suffix_gain"]
    lines += ["", "Suffix gain (middle loss with the suffix emptied / with the true suffix): "
              + ", ".join(f"{m} {_ci(v)}" for m, v in gains.items())
              + (f"; PSM-only twin {_ci(fim['psm_only']['suffix_gain']['psm'])}, its psm/ar "
                 f"{_ci(fim['psm_only']['infill_loss_ratio']['psm/ar'])}, exact match "
                 f"{_ci(fim['psm_only']['exact_match']['psm'], 3)}" if fim.get("psm_only") else "") + ".", ""]
    lines += ["### Learning curve (fim_curve.png)", "",
              "Suffix gain: middle loss without the true suffix / with it; *empty*: the suffix emptied, *other*: "
              "another file's suffix in its place.", "",
              "| arm | step | tokens | gain psm (empty) | gain psm (other) | gain spm (empty) | gain spm (other) | "
              "psm/ar | exact psm | exact spm | exact ar |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, points in fim_curve.items():
        for p in points:
            cell = lambda d, k, digits=3: _ci(d[k], digits) if k in d else "-"   # noqa: E731
            lines.append(f"| {arm} | {p['step']} | {p['tokens']:,} | {cell(p['suffix_gain'], 'psm')} | "
                         f"{cell(p['suffix_gain'], 'psm_other')} | {cell(p['suffix_gain'], 'spm')} | "
                         f"{cell(p['suffix_gain'], 'spm_other')} | {cell(p['infill_loss_ratio'], 'psm/ar')} | "
                         f"{cell(p['exact_match'], 'psm')} | {cell(p['exact_match'], 'spm')} | "
                         f"{cell(p['exact_match'], 'ar')} |")
    lines += ["", "A few single-line completions (removed line → completion):", ""]
    for k, examples in fim["exact_match_examples"].items():
        for e in examples[:3]:
            lines.append(f"- {k}: `{e['line'].strip()[:70]}` → `{e['completion'].split(chr(10))[0].strip()[:70]}`")
    return lines


def _lcft_section(lcft: dict, names: dict, T: int) -> list[str]:
    lines = ["", f"## 2. Long context ({lcft['files']} held-out files of ≥ {lcft['context_lengths'][-1]} tokens)", "",
              "| context length | " + " | ".join(names[r] for r in lcft["ppl"]) + " |",
              "|---|" + "---|" * len(lcft["ppl"])]
    for i, L in enumerate(lcft["context_lengths"]):
        lines.append(f"| {L} ({L / T:g}T) | " + " | ".join(_ci(points[i], 2) for points in lcft["ppl"].values()) + " |")
    lines += ["", "Ratios: " + "; ".join(f"{k} {_ci(v)}" for k, v in lcft["ratios"].items()), "",
              "Key retrieval accuracy by length (all positions pooled):", "",
              "| length | " + " | ".join(names[r] for r in lcft["key_retrieval"]) + " |",
              "|---|" + "---|" * len(lcft["key_retrieval"])]
    first = next(iter(lcft["key_retrieval"].values()))
    for L in first["lengths"]:
        lines.append(f"| {L} | " + " | ".join(_ci(g["by_length"][str(L)], 3) for g in lcft["key_retrieval"].values())
                     + " |")
    return lines


def _python_section(py: dict, names: dict) -> list[str]:
    lines = ["", "## 3. Python specialization (both arms from the AR twin, the same tokens)", "",
              f"| source | python ({names['python']}) | code ({names['code']}) | python/code | documents |",
              "|---|---|---|---|---|"]
    for s, row in py["val_loss"].items():
        lines.append(f"| {s} | {_ci(row['python'])} | {_ci(row['code'])} | {_ci(row['python/code'])} | "
                     f"{row['documents']} |")
    return lines


def write_outputs(results: dict, run_dir: Path) -> list[str]:
    """results.json, the plots and report.md under run_dir; returns the summary lines."""
    results = {**results, "claims": claims(results), "lines": summary_lines(results)}
    write_json_atomic(run_dir / "results.json", results)
    plotters = {"training_curves": lambda out: plot_training_curves(results, run_dir, out),
                "fim_infilling": lambda out: plot_fim(results, out),
                "fim_curve": lambda out: plot_fim_curve(results, out),
                "val_loss_by_source": lambda out: plot_val_loss(results, out),
                "lcft_perplexity": lambda out: plot_perplexity(results, results["setup"]["seq_len"], out),
                "lcft_key_retrieval": lambda out: plot_retrieval(results, out)}
    for name in plot_names(results):
        plotters[name.removesuffix(".png")](run_dir / name)
    write_text_atomic(run_dir / "report.md", markdown(results))
    return results["lines"]
