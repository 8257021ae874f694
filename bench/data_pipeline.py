"""Data pipeline throughput against raw SentencePiece encoding of the same texts, and peak memory.

    python bench/data_pipeline.py                   # embedded corpus, code_mix sources, seq_len 4096
    python bench/data_pipeline.py --seq-len 512 --rounds 3 --cache-dir ~/.cache/codellama-recipe

What is measured (each in its own process, so peak RSS is per measurement):
  raw       SentencePiece `encode(text)` of every document of the code_mix train files, one by one
            (texts loaded and parsed beforehand, not timed)
  pipeline  build_train_loader over the same files (data.max_epochs=1: every document exactly once):
            read jsonl -> parse -> tokenize (BOS/EOS) -> FIM (rate 0.9, PSM/SPM 50/50) -> mix -> pack
            -> torch tensors, in one process (num_workers=0: what one DataLoader worker does)
  worker    the same with num_workers=1 (a DataLoader worker process; main process only receives)
  10x       the pipeline over a corpus 10 times larger (every file linked 10 times): peak RSS must stay flat
raw and pipeline alternate for --rounds rounds on the same texts. The ratio uses the CPU time of the
measuring process, best of the rounds for each side (robust on a shared machine; both are
single-threaded); the wall-clock ratio is printed too. pipeline/raw = raw_seconds / pipeline_seconds, i.e. the
pipeline's throughput counted in the raw encoding's tokens (its own count adds BOS/EOS and FIM pieces).
The last line is exactly `pipeline/raw = X.XX`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

SOURCES = {"code": 0.85, "nl_code": 0.08, "nl": 0.07}


def _files(corpus_dir: pathlib.Path, shards: int | None) -> dict[str, list[str]]:
    out = {}
    for name in SOURCES:
        files = sorted(str(p) for p in (corpus_dir / name).glob("train-*.jsonl"))
        out[name] = files[:shards] if shards else files
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_raw(args) -> dict:
    from codellama_recipe.data.tokenizer import Tokenizer

    files = json.loads(args.files)
    texts = [json.loads(line)["text"] for fs in files.values() for f in fs for line in open(f, encoding="utf-8")]
    sp = Tokenizer(args.tokenizer)._sp
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = 0
    for t in texts:
        tokens += len(sp.encode(t))
    return {"tokens": tokens, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "docs": len(texts), "rss_mb": _peak_rss_mb()}


def child_pipeline(args) -> dict:
    from codellama_recipe.data.pipeline import build_train_loader
    from codellama_recipe.data.tokenizer import Tokenizer

    files = json.loads(args.files)
    cfg = {"seq_len": args.seq_len, "seed": 0, "num_workers": args.workers, "max_epochs": 1,
           "max_doc_chars": 1_000_000, "fim": {"enabled": True, "rate": 0.9, "spm_rate": 0.5},
           "sources": {n: {"weight": w, "paths": files[n]} for n, w in SOURCES.items()}}
    tok = Tokenizer(args.tokenizer)
    wall, cpu = time.perf_counter(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = build_train_loader(cfg, tok, 0, 1, args.micro_batch)
    tokens = rows = 0
    for batch in loader:
        tokens += int((batch["source_ids"] >= 0).sum())
        rows += batch["input_ids"].shape[0]
    m = loader.metrics()
    done = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, once they have exited
    worker_cpu = (done.ru_utime + done.ru_stime) - (children.ru_utime + children.ru_stime)
    return {"tokens": tokens, "rows": rows, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "worker_cpu": worker_cpu,
            "rss_mb": _peak_rss_mb(), "fim_share": m.get("data/fim_share", 0.0), "pad_share": m["data/pad_share"],
            "shares": {n: round(m[f"data/share/{n}"], 4) for n in SOURCES}}


def run_child(mode: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", mode] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def link_scaled_corpus(files: dict[str, list[str]], factor: int, root: pathlib.Path) -> dict[str, list[str]]:
    scaled = {}
    for name, fs in files.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        scaled[name] = []
        for k in range(factor):
            for f in fs:
                link = root / name / f"copy{k:02d}-{pathlib.Path(f).name}"
                os.symlink(f, link)
                scaled[name].append(str(link))
    return scaled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", default=None, help="embedded corpus + tokenizer (default: $CODELLAMA_CACHE)")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=None, help="use only the first N train shards per source")
    ap.add_argument("--skip-10x", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = child_raw(args) if args.child == "raw" else child_pipeline(args)
        print(json.dumps(result))
        return

    from codellama_recipe.data.embedded.cache import ensure_embedded

    paths = ensure_embedded(args.cache_dir, log=lambda m: print(m, file=sys.stderr))
    files = _files(pathlib.Path(paths.corpus_dir), args.shards)
    common = {"files": json.dumps(files), "tokenizer": str(paths.tokenizer_path), "seq_len": args.seq_len,
              "micro_batch": args.micro_batch}
    mb = sum(os.path.getsize(f) for fs in files.values() for f in fs) / 1e6
    print(f"corpus: {paths.corpus_dir} ({', '.join(f'{n} {len(fs)} files' for n, fs in files.items())}, {mb:.1f} MB); "
          f"seq_len {args.seq_len}, FIM rate 0.9; cpu: {os.cpu_count()} cores (shared)")

    raws, pipes = [], []
    for r in range(args.rounds):
        raws.append(raw := run_child("raw", **common))
        pipes.append(pipe := run_child("pipeline", workers=0, **common))
        print(f"round {r + 1}: raw {raw['tokens'] / raw['cpu']:,.0f} tok/s ({raw['tokens']:,} tokens, {raw['docs']:,} docs, "
              f"cpu {raw['cpu']:.1f}s wall {raw['wall']:.1f}s) | pipeline {pipe['tokens'] / pipe['cpu']:,.0f} tok/s "
              f"({pipe['tokens']:,} tokens incl. BOS/EOS/FIM pieces, cpu {pipe['cpu']:.1f}s wall {pipe['wall']:.1f}s) "
              f"| ratio cpu {raw['cpu'] / pipe['cpu']:.3f} wall {raw['wall'] / pipe['wall']:.3f}")
    print(f"pipeline: FIM share of documents {pipe['fim_share']:.3f}, padding share {pipe['pad_share']:.5f}, "
          f"token shares {pipe['shares']} (each source read once, so these are the corpus's, not the weights)")
    print(f"peak RSS: raw (all texts in memory) {raw['rss_mb']:.0f} MB, pipeline 1x corpus {pipe['rss_mb']:.0f} MB")

    worker = run_child("pipeline", workers=1, **common)
    print(f"one DataLoader worker process: {worker['tokens'] / worker['worker_cpu']:,.0f} tok/s per worker-cpu-second, "
          f"{worker['tokens'] / worker['wall']:,.0f} tok/s wall (worker cpu {worker['worker_cpu']:.1f}s, main process "
          f"cpu {worker['cpu']:.1f}s, wall {worker['wall']:.1f}s)")

    if not args.skip_10x:
        with tempfile.TemporaryDirectory() as tmp:
            scaled = link_scaled_corpus(files, 10, pathlib.Path(tmp))
            big = run_child("pipeline", workers=0, **{**common, "files": json.dumps(scaled)})
        print(f"10x corpus ({big['tokens']:,} tokens, {big['wall']:.0f}s): peak RSS {big['rss_mb']:.0f} MB "
              f"vs 1x {pipe['rss_mb']:.0f} MB ({big['rss_mb'] / pipe['rss_mb']:.2f}x)")
    best = lambda runs, key: min(r[key] for r in runs)  # noqa: E731
    print(f"best of {args.rounds}: raw {raw['tokens'] / best(raws, 'cpu'):,.0f} tok/s, pipeline "
          f"{pipe['tokens'] / best(pipes, 'cpu'):,.0f} tok/s (cpu); wall-clock ratio "
          f"{best(raws, 'wall') / best(pipes, 'wall'):.2f}")
    print(f"pipeline/raw = {best(raws, 'cpu') / best(pipes, 'cpu'):.2f}")


if __name__ == "__main__":
    main()
