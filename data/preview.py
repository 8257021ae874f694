"""codellama-preview: print the first packed training sequences exactly as the model will see them.

    codellama-preview model=tiny stage=code                       # same Hydra config as codellama-train
    codellama-preview model=tiny stage=instruct preview.n=3
    codellama-preview stage=code data.sources.code.paths='[/data/*.parquet]' preview.format=jsonl

Options (not part of the training config): preview.n=N rows (default 2), preview.format=text|jsonl,
preview.rank=R and preview.world_size=W (the stream of one data-parallel rank; default 0 of 1).
Text output shows special pieces as <s> </s> <PRE> <SUF> <MID> <EOT>, padding as <pad>×N, and one
header line per row (tokens per source, FIM documents, trained labels). jsonl prints one object per
row: tokens, text, labels, loss_mask, source_ids, source_names, doc_ids, is_fim.
"""
from __future__ import annotations

import json
import sys

from codellama_recipe.core.errors import ConfigError

PROG = "codellama-preview"
PREVIEW_DEFAULTS = {"n": 2, "format": "text", "rank": 0, "world_size": 1}


def _split_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts, overrides = dict(PREVIEW_DEFAULTS), []
    for arg in argv:
        key = arg.lstrip("+")
        if not key.startswith("preview."):
            overrides.append(arg)
            continue
        name, _, value = key[len("preview."):].partition("=")
        if name not in PREVIEW_DEFAULTS:
            raise ConfigError(f"preview.{name}", value,
                              f"unknown option; known: {', '.join('preview.' + k for k in PREVIEW_DEFAULTS)}")
        if isinstance(PREVIEW_DEFAULTS[name], int) and not value.isdigit():
            raise ConfigError(f"preview.{name}", value, "expected a non-negative integer")
        opts[name] = int(value) if isinstance(PREVIEW_DEFAULTS[name], int) else value
    if opts["format"] not in ("text", "jsonl"):
        raise ConfigError("preview.format", opts["format"], "allowed: text, jsonl")
    return opts, overrides


def compose_train_config(overrides: list[str]):
    """conf/train.yaml with the same overrides codellama-train would get, checked against the schema."""
    from codellama_recipe.core.cli import compose_checked

    return compose_checked("train", overrides)


def load_tokenizer(cfg):
    """The tokenizer codellama-train would use (data.tokenizer_resolution's rule)."""
    from codellama_recipe.data.tokenizer import Tokenizer
    from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer

    return Tokenizer(resolve_tokenizer(cfg.tokenizer_path, cfg.init_from, weights_key="init_from",
                                       cache_dir=cfg.cache_dir))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class RowRenderer:
    """Token ids -> readable text with the special pieces named."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        names = {tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>", tokenizer.prefix_id: "<PRE>",
                 tokenizer.suffix_id: "<SUF>", tokenizer.middle_id: "<MID>", tokenizer.eot_id: "<EOT>"}
        self.special = {k: v for k, v in names.items() if k is not None}

    def render(self, ids: list[int], is_pad: list[bool]) -> str:
        out, run, no_space, prev = [], [], True, None  # a row may start inside a document: keep its spaces
        spm = False

        def flush():
            if run:
                out.append(self.tok.decode_no_space(run) if no_space else self.tok.decode(run))
                run.clear()
        n_pad = 0
        for t, pad in zip(ids, is_pad):
            if pad:
                n_pad += 1
                continue
            name = self.special.get(t)
            if name is None:
                run.append(t)
                prev = t
                continue
            flush()
            out.append(name)
            if name == "<PRE>":
                spm, no_space = False, False
            elif name == "<SUF>":
                spm = spm or prev == self.tok.prefix_id
                no_space = True
            elif name == "<MID>":
                no_space = not spm  # PSM: EncNoSpace(middle); SPM: Enc(prefix + middle)
            else:
                no_space = name == "</s>"
            prev = t
        flush()
        if n_pad:
            out.append(f"<pad>×{n_pad}")
        return "".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from codellama_recipe.core.cli import refuse, split_argv
    from codellama_recipe.data.embedded.cache import ensure_corpus_for
    from codellama_recipe.data.pipeline import TrainLoader, data_config

    flags, rest = split_argv(argv)
    unknown = [f for f in flags if f not in ("--cfg", "-c", "job", "all", "--resolve")]
    if unknown:
        return refuse(PROG, f"config error: unknown flag {unknown[0]}; allowed: --help, --cfg job, --resolve")
    try:
        opts, overrides = _split_args(rest)
        cfg = compose_train_config(overrides)
        if {"--cfg", "-c"} & set(flags):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve="--resolve" in flags))
            return 0
        plan = data_config(cfg.data)
        ensure_corpus_for(plan.sources.values(), cfg.cache_dir, log=_log)
        tokenizer = load_tokenizer(cfg)
        loader = TrainLoader(plan, tokenizer, opts["rank"], opts["world_size"], cfg.trainer.micro_batch_size)
    except (ConfigError, ValueError) as exc:
        return refuse(PROG, str(exc))
    renderer = RowRenderer(tokenizer)
    names = loader.source_names
    shown = 0
    for batch in loader:
        for i in range(batch["input_ids"].shape[0]):
            if shown >= opts["n"]:
                return 0
            row = {k: v[i].tolist() for k, v in batch.items()}
            text = renderer.render(row["input_ids"], [s < 0 for s in row["source_ids"]])
            if opts["format"] == "jsonl":
                print(json.dumps({"row": shown, "tokens": row["input_ids"], "text": text, "labels": row["labels"],
                                  "loss_mask": row["loss_mask"], "source_ids": row["source_ids"],
                                  "source_names": names, "doc_ids": row["doc_ids"], "is_fim": row["is_fim"]},
                                 ensure_ascii=False))
            else:
                counts = {n: sum(1 for s in row["source_ids"] if s == j) for j, n in enumerate(names)}
                fim_docs = len({d for d, f in zip(row["doc_ids"], row["is_fim"]) if f})
                header = ", ".join(f"{n} {c}" for n, c in counts.items() if c)
                print(f"=== row {shown} | {len(row['input_ids'])} tokens ({header}) | {fim_docs} FIM document(s) | "
                      f"{sum(row['loss_mask'])} trained labels ===")
                print(text)
            shown += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
