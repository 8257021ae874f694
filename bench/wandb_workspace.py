"""Create a saved wandb workspace view with the standard panels of codellama-train runs.

    pip install wandb-workspaces        # optional; not a dependency of the project
    wandb login
    python bench/wandb_workspace.py --entity ENTITY [--project codellama-recipe] [--name "Code Llama recipe"]
    python bench/wandb_workspace.py --dry-run                  # print the sections, save nothing

One section per metric group, in the order a reader needs them: train (loss, loss per source, FIM vs plain,
learning rate, gradient norm, skipped steps), val (loss per source), perf (tokens/s, MFU, memory, step time),
data (realized mixture shares, epochs, skipped documents, FIM/pad shares) and eval (benchmark scores logged
by codellama-eval). Every line plot uses the engine's `step` as x axis (the optimizer step, which a resumed
run continues), and runs of one pipeline share a wandb group, so stages sit side by side.
The script prints the URL of the saved view.
"""
from __future__ import annotations

import argparse
import sys

DEFAULT_SOURCES = ["code", "nl_code", "nl", "python", "instruct"]
EVAL_METRICS = ["eval/humaneval/pass@1", "eval/mbpp/pass@1", "eval/infilling_single/pass@1",
                "eval/key_retrieval/accuracy"]


def sections_spec(sources: list[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """Section name -> [(panel title, metric names)]; the library-independent part (tested without it)."""
    return {
        "train": [("loss", ["train/loss"]),
                  ("loss per source", [f"train/loss/{s}" for s in sources]),
                  ("FIM vs plain tokens", ["train/loss/fim", "train/loss/plain"]),
                  ("learning rate", ["train/lr"]),
                  ("gradient norm", ["train/grad_norm"]),
                  ("tokens seen", ["train/tokens_seen"]),
                  ("skipped non-finite updates", ["train/nonfinite_skipped"])],
        "val": [("validation loss per source", [f"val/loss/{s}" for s in sources])]
               + [(f"val {s}", [f"val/loss/{s}"]) for s in sources],
        "perf": [("tokens/s", ["perf/tokens_per_s"]), ("MFU", ["perf/mfu"]),
                 ("memory (GB)", ["perf/memory_gb"]), ("step time (s)", ["perf/step_time_s"])],
        "data": [("realized mixture shares", [f"data/share/{s}" for s in sources]),
                 ("epochs per source", [f"data/epoch/{s}" for s in sources]),
                 ("skipped documents", ["data/skipped/too_long", "data/skipped/malformed_json",
                                        "data/skipped/invalid_utf8", "data/skipped/binary", "data/skipped/empty"]),
                 ("FIM / SPM / padding shares", ["data/fim_share", "data/spm_share", "data/pad_share"])],
        "eval": [(m.split("/", 1)[1], [m]) for m in EVAL_METRICS],
    }


def build_workspace(entity: str, project: str, name: str, sources: list[str]):
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        sys.exit("bench/wandb_workspace.py needs the optional package `wandb-workspaces`: "
                 "pip install wandb-workspaces")
    sections = []
    for section, panels in sections_spec(sources).items():
        if section == "eval":
            plots = [wr.BarPlot(title=title, metrics=metrics) for title, metrics in panels]
        else:
            plots = [wr.LinePlot(title=title, x="step", y=metrics) for title, metrics in panels]
        sections.append(ws.Section(name=section, panels=plots, is_open=section in ("train", "val", "perf"),
                                   panel_settings=ws.SectionPanelSettings(x_axis="step")))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections,
                        settings=ws.WorkspaceSettings(x_axis="step", group_by_prefix="first"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entity", help="wandb user or team that owns the project (required unless --dry-run)")
    p.add_argument("--project", default="codellama-recipe")
    p.add_argument("--name", default="Code Llama recipe")
    p.add_argument("--sources", default=",".join(DEFAULT_SOURCES), help="comma-separated data source names")
    p.add_argument("--dry-run", action="store_true", help="print the sections and panels, save nothing")
    args = p.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    if args.dry_run:
        for section, panels in sections_spec(sources).items():
            print(f"[{section}]")
            for title, metrics in panels:
                print(f"  {title}: {', '.join(metrics)}")
        return 0
    if not args.entity:
        p.error("--entity is required to save a workspace")
    workspace = build_workspace(args.entity, args.project, args.name, sources)
    workspace.save()
    print(f"saved workspace view: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
