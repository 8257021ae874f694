"""A small report from one or more results.json files (e.g. one per pipeline stage, in order):
report.md (a metrics table, one column per result) and PNG plots:

  metrics_by_stage.png        every pass@1 / accuracy / exact-match metric across the results
  infill_loss_by_stage.png    held-out infilling loss (PSM, SPM, prefix only) across the results
  perplexity_by_context.png   perplexity of the tokens in each context-length bin, one line per result
  key_retrieval.png           retrieval accuracy heatmap, length x key position, one panel per result

`codellama-eval report_from=[a/results.json,b/results.json] out_dir=...` or `write_report(paths, out_dir)`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402,F401


def _load(item) -> dict:
    if isinstance(item, dict):
        return item
    return json.loads(Path(item).read_text())


def _stage_metrics(results: Sequence[dict]) -> list[str]:
    keys = sorted({k for r in results for k in r.get("metrics", {})})
    return [k for k in keys if k.endswith(("/pass@1", "/exact_match")) or k == "key_retrieval/accuracy"]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(results: Sequence[dict]) -> str:
    labels = [r.get("label", f"run{i}") for i, r in enumerate(results)]
    keys = sorted({k for r in results for k in r.get("metrics", {})})
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(r.get("metrics", {}).get(k)) for r in results) + " |")
    return "\n".join(lines)


def multipl_e_table(result: dict) -> str | None:
    """One row per multipl_e language of one result: problems translated (or read) and judged, greedy pass@1,
    sampled pass@k, and the problems left out (untranslatable, by reason) or why the language was skipped."""
    info = result.get("details", {}).get("multipl_e")
    if not info:
        return None
    metrics = result.get("metrics", {})
    ks = sorted({k.rsplit("@", 1)[1] for k in metrics if k.startswith("multipl_e/") and "/sampled/pass@" in k},
                key=int)
    header = ["language", "translated", "judged", "pass@1 greedy"] + [f"pass@{k} sampled" for k in ks] + \
        ["not translated (reason: count)"]
    lines = [f"MultiPL-E ({result.get('label', '')}; problems {info.get('source')})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang, e in info["languages"].items():
        if "skipped" in e:
            cells = [lang, "–", "–", "skipped"] + ["–"] * len(ks) + [e["skipped"]]
        else:
            reasons = "; ".join(f"{r}: {n}" for r, n in e["untranslatable"].items()) or "–"
            cells = [lang, str(e["translated"]), str(e["judged"]), _fmt(metrics.get(f"multipl_e/{lang}/pass@1"))] + \
                [_fmt(metrics.get(f"multipl_e/{lang}/sampled/pass@{k}")) for k in ks] + [reasons]
        lines.append("| " + " | ".join(cells) + " |")
    if "multipl_e/mean/pass@1" in metrics:
        lines += ["", f"Mean greedy pass@1 over the judged languages: {_fmt(metrics['multipl_e/mean/pass@1'])}"]
    return "\n".join(lines)


def _plot_by_stage(results: Sequence[dict], keys: Sequence[str], path: Path, *, ylabel: str, title: str,
                   label=lambda key: key, ylim=None) -> bool:
    """One line per metric key across the results (stages), written to `path`; False when there is none."""
    if not keys:
        return False
    labels = [r.get("label", f"run{i}") for i, r in enumerate(results)]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels) + 3), 4))
    for k in keys:
        ys = [r.get("metrics", {}).get(k) for r in results]
        ax.plot(range(len(labels)), [float("nan") if y is None else y for y in ys], marker="o", label=label(k))
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_metrics_by_stage(results: Sequence[dict], path: Path) -> bool:
    return _plot_by_stage(results, _stage_metrics(results), path, ylabel="score", title="metrics by stage",
                          ylim=(-0.02, 1.02))


def plot_infill_loss(results: Sequence[dict], path: Path) -> bool:
    keys = sorted({k for r in results for k in r.get("metrics", {})
                   if k.startswith("corpus_infilling/") and k.endswith("/loss")})
    return _plot_by_stage(results, keys, path, ylabel="loss of the true middle (nats/token)",
                          title="held-out infilling loss by stage (lower is better)", label=lambda k: k.split("/")[1])


def plot_perplexity(results: Sequence[dict], path: Path) -> bool:
    curves = [(r.get("label", ""), r["details"]["perplexity"]) for r in results
              if "perplexity" in r.get("details", {})]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, p in curves:
        pts = [(L, v) for L, v in zip(p["context_lengths"], p["ppl_bin"]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("context position (tokens, end of bin)")
    ax.set_ylabel("perplexity of the tokens in the bin")
    ax.set_title("perplexity by context length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_key_retrieval(results: Sequence[dict], path: Path) -> bool:
    grids = [(r.get("label", ""), r["details"]["key_retrieval"]) for r in results
             if "key_retrieval" in r.get("details", {})]
    if not grids:
        return False
    fig, axes = plt.subplots(1, len(grids), figsize=(3.6 * len(grids) + 1.2, 3.8), squeeze=False,
                             constrained_layout=True)
    for index, (ax, (label, g)) in enumerate(zip(axes[0], grids)):
        image = ax.imshow(g["accuracy"], vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(g["positions"])), [f"{p:g}" for p in g["positions"]])
        ax.set_yticks(range(len(g["lengths"])), [str(L) for L in g["lengths"]])
        ax.set_xlabel("relative key position")
        if index == 0:
            ax.set_ylabel("prompt length (tokens)")
        ax.set_title(f"key retrieval: {label}", fontsize=9)
        for i, row in enumerate(g["accuracy"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.5 else "black")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(items: Sequence, out_dir) -> Path:
    """items: results.json paths or result dicts, in stage order. Returns the path of report.md."""
    results = [_load(i) for i in items]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = ["# Evaluation report", "", markdown_table(results), ""]
    for name, plot in (("metrics_by_stage.png", plot_metrics_by_stage), ("infill_loss_by_stage.png", plot_infill_loss),
                       ("perplexity_by_context.png", plot_perplexity),
                       ("key_retrieval.png", plot_key_retrieval)):
        if plot(results, out_dir / name):
            sections += [f"![{name[:-4]}]({name})", ""]
    for r in results:
        table = multipl_e_table(r)
        if table:
            sections += [table, ""]
    skipped = {f"{r.get('label')}: {b}": why for r in results for b, why in r.get("skipped", {}).items()}
    if skipped:
        sections += ["Skipped:", ""] + [f"- {k} ({v})" for k, v in skipped.items()] + [""]
    sandbox = next((r["sandbox"] for r in reversed(results) if "sandbox" in r), None)
    if sandbox:
        sections += [f"Sandbox: {sandbox.get('summary')}", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(sections))
    return path
