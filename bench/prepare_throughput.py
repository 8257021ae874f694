"""codellama-prepare throughput per step, against the same datatrove blocks run directly, and the dedup steps'
peak memory at 1x and 10x the input.

    python bench/prepare_throughput.py                       # 600 .py + 400 .h + 49 .md files of this machine
    python bench/prepare_throughput.py --py 300 --h 200 --md 30 --scale 10 --work /tmp/prep_bench

The raw corpus is built from this machine's files (/usr/lib/python3*/**.py, /usr/include/**.h,
/usr/share/doc/**.md; sorted, first N of each, files over 200 kB or not UTF-8 left out) with an exact copy of
every 20th document and a one-line-edited copy of every 20th (+10), in 4 jsonl.gz shards.

What is measured, all in this process with executor.tasks=1 executor.workers=1 (one core; datatrove runs a
single task in the calling process), CPU seconds of this process per step (robust on a shared machine):
  project   `prepare()`: the input check, the eight datatrove steps as the project builds them (counting reader,
            routing, filters, decontamination off, exact and MinHash dedup), then the manifest (no tokenizer:
            whitespace words)
  direct    the same datatrove blocks built here by hand and run with LocalPipelineExecutor: datatrove's own
            JsonlReader -> the same Route / filter blocks -> JsonlWriter, then the same dedup blocks, same configs
  10x       the project's run on the corpus copied 10 times (each copy with one changed line: near duplicates,
            not exact ones); peak RSS (VmHWM, reset through /proc/self/clear_refs before each step) per step
documents/s and MB/s count the documents and characters (MB = 10^6 characters) each step reads.
The last line is exactly `project/direct = X.XX` (total CPU seconds of the direct steps over the project's run).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import resource
import shutil
import sys
import time


def corpus_rows(n_py: int, n_h: int, n_md: int) -> list[dict]:
    sets = (("/usr/lib/python3*/**/*.py", n_py, "Python"), ("/usr/include/**/*.h", n_h, "C"),
            ("/usr/share/doc/**/*.md", n_md, "Markdown"))
    rows = []
    for pattern, n, lang in sets:
        taken = 0
        for path in sorted(glob.glob(pattern, recursive=True)):
            if taken >= n:
                break
            try:
                if os.path.getsize(path) > 200_000:
                    continue
                with open(path, "rb") as fh:
                    text = fh.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            rows.append({"content": text, "lang": lang, "max_stars_repo_path": path})
            taken += 1
    extra = []
    for i, r in enumerate(rows):
        if i % 20 == 0:
            extra.append(dict(r))
        if i % 20 == 10:
            lines = r["content"].split("\n")
            lines[len(lines) // 2] = "# edited line"
            extra.append({**r, "content": "\n".join(lines)})
    return rows + extra


def write_shards(rows: list[dict], folder: str, shards: int = 4, copies: int = 1) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"raw_{i}.jsonl.gz") for i in range(shards)]
    handles = [gzip.open(p, "wt", encoding="utf-8") for p in paths]
    k = 0
    for c in range(copies):
        for r in rows:
            if c:
                lines = r["content"].split("\n")
                lines[(c * 7919) % len(lines)] = f"# copy {c}"
                r = {**r, "content": "\n".join(lines)}
            handles[k % shards].write(json.dumps(r) + "\n")
            k += 1
    for h in handles:
        h.close()
    return paths


def peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Timed:
    """Wraps pipeline.make_executor: CPU seconds, wall seconds and peak RSS of each step's run()."""

    def __init__(self, pipeline_module):
        self.mod, self.orig, self.rows = pipeline_module, pipeline_module.make_executor, {}
        pipeline_module.make_executor = self

    def __call__(self, cfg, name, pipeline, tasks, depends=None):
        ex = self.orig(cfg, name, pipeline, tasks, depends)
        run = ex.run

        def timed_run():
            peak_reset()
            c, w = cpu(), time.perf_counter()
            run()
            self.rows[name] = {"cpu": cpu() - c, "wall": time.perf_counter() - w, "peak_mb": peak_mb()}

        ex.run = timed_run
        return ex

    def restore(self):
        self.mod.make_executor = self.orig


def project_cfg(inputs, out):
    from codellama_recipe.core.config import compose, typed
    from codellama_recipe.core.schema import PrepareConfig

    return typed(PrepareConfig, compose("prepare", [f"input.paths=[{','.join(inputs)}]", f"out_dir={out}",
                                                    "executor.tasks=1", "executor.workers=1"]), "prepare")


def run_project(inputs, out):
    from codellama_recipe.stages.prepare import pipeline

    shutil.rmtree(out, ignore_errors=True)
    cfg = project_cfg(inputs, out)
    timed = Timed(pipeline)
    c, w = cpu(), time.perf_counter()
    result = pipeline.prepare(cfg, tokenizer=None, log=lambda *_: None)
    total = {"cpu": cpu() - c, "wall": time.perf_counter() - w}
    timed.restore()
    return cfg, result, timed.rows, total


def run_direct(cfg, inputs, out):
    """The same blocks, built by hand with datatrove's classes (the project's Route / filter blocks are the same
    objects the project uses: they are part of the pipeline, not of the wrapper)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                          ExactFindDedups, MinhashConfig, MinhashDedupBuckets,
                                          MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    from codellama_recipe.stages.prepare import steps as s

    shutil.rmtree(out, ignore_errors=True)
    w = os.path.join(out, "work")
    f, d = cfg.filters, cfg.dedup

    def writer(folder, name="${rank}.jsonl.gz"):
        return JsonlWriter(folder, output_filename=name, compression="gzip", expand_metadata=False)

    def read(folder):
        return JsonlReader(folder, glob_pattern="*.jsonl.gz", text_key="text", id_key="id", add_file_path=False)

    ecfg = ExactDedupConfig(content_getter=lambda doc: doc.text, hash_config=HashConfig(hash_fc="sha1", precision=64))
    mcfg = MinhashConfig(n_grams=d.ngram, num_buckets=d.num_buckets, hashes_per_bucket=d.hashes_per_bucket,
                         hash_config=HashConfig(hash_fc="sha1", precision=64),
                         norm_config=TextNormConfig(lowercase=False, norm_numbers=False))
    steps = [
        ("filter", [JsonlReader(os.path.dirname(inputs[0]), glob_pattern="raw_*.jsonl.gz", text_key="content",
                                id_key="__no_id__"),
                    s.Route(dict(cfg.routes), cfg.default_source, cfg.heldout_share, "lang", "max_stars_repo_path"),
                    s.LineLengthFilter(f.max_avg_line_length, f.max_line_length, writer(f"{out}/removed/line")),
                    s.AlnumFilter(f.min_alnum_fraction, writer(f"{out}/removed/alnum")),
                    s.DataFileFilter(f.data_file_min_chars, f.data_file_max_chars, f.csv_max_chars,
                                     writer(f"{out}/removed/data")),
                    s.AutogenFilter(writer(f"{out}/removed/autogen")),
                    s.NlQualityFilter(f.nl_min_words, f.nl_min_alpha_word_fraction, writer(f"{out}/removed/nl")),
                    writer(f"{w}/filtered")]),
        ("exact_sig", [read(f"{w}/filtered"), ExactDedupSignature(f"{w}/exact_sigs", ecfg)]),
        ("exact_find", [ExactFindDedups(f"{w}/exact_sigs", f"{w}/exact_dups", ecfg)]),
        ("exact_apply", [read(f"{w}/filtered"), ExactDedupFilter(f"{w}/exact_dups", ecfg,
                                                                 exclusion_writer=writer(f"{out}/removed/exact")),
                         writer(f"{w}/exact")]),
        ("mh_sig", [read(f"{w}/exact"), MinhashDedupSignature(f"{w}/mh_sigs", config=mcfg,
                                                              language=s.CodeWordTokenizer())]),
        ("mh_buckets", [MinhashDedupBuckets(f"{w}/mh_sigs", f"{w}/mh_buckets", config=mcfg)]),
        ("mh_cluster", [MinhashDedupCluster(f"{w}/mh_buckets", f"{w}/mh_remove", config=mcfg)]),
        ("mh_apply", [read(f"{w}/exact"), MinhashDedupFilter(f"{w}/mh_remove",
                                                             exclusion_writer=writer(f"{out}/removed/near")),
                      writer(out, "${source}/${split}/${rank}.jsonl.gz")]),
    ]
    rows = {}
    for name, pipe in steps:
        tasks = d.num_buckets if name == "mh_buckets" else 1
        ex = LocalPipelineExecutor(pipeline=pipe, tasks=tasks, workers=1, logging_dir=f"{out}/logs/{name}")
        peak_reset()
        c, t = cpu(), time.perf_counter()
        ex.run()
        rows[name] = {"cpu": cpu() - c, "wall": time.perf_counter() - t, "peak_mb": peak_mb()}
    kept = sum(1 for p in glob.glob(f"{out}/*/*/*.jsonl.gz")
               if p.split(os.sep)[-3] in ("code", "python", "nl_code", "nl") for _ in gzip.open(p, "rt"))
    return rows, kept


def step_inputs(stats: dict) -> dict:
    """Documents and characters each step reads (datatrove's reader counters; steps without a reader work on
    the signatures of the documents the step before them read)."""
    def reader(step):
        for block, c in stats.get(step, {}).items():
            if "READER" in block:
                return c.get("documents", 0), c.get("doc_len", 0)
        return 0, 0

    out = {}
    for step in ("filter", "exact_sig", "exact_apply", "mh_sig", "mh_apply"):
        out[step] = reader(step)
    out["exact_find"] = out["exact_sig"]
    out["mh_buckets"] = out["mh_cluster"] = out["mh_sig"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--py", type=int, default=600)
    ap.add_argument("--h", type=int, default=400)
    ap.add_argument("--md", type=int, default=49)
    ap.add_argument("--scale", type=int, default=10, help="the memory run's copies of the corpus; 0 = skip it")
    ap.add_argument("--work", default="/tmp/codellama_prepare_bench")
    a = ap.parse_args(argv)
    shutil.rmtree(a.work, ignore_errors=True)
    print(f"process RSS before any step: {int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024:.0f} MB"
          " (peak RSS below is the whole process's, this included)", flush=True)
    rows = corpus_rows(a.py, a.h, a.md)
    inputs = write_shards(rows, os.path.join(a.work, "raw"))
    chars = sum(len(r["content"]) for r in rows)
    gz = sum(os.path.getsize(p) for p in inputs)
    print(f"corpus: {len(rows)} documents, {chars / 1e6:.1f} MB of text, {gz / 1e6:.1f} MB gzip in {len(inputs)} "
          f"shards; {os.cpu_count()} CPUs, one task, one worker", flush=True)

    cfg, result, proj, total = run_project(inputs, os.path.join(a.work, "project"))
    direct, direct_kept = run_direct(cfg, inputs, os.path.join(a.work, "direct"))
    kept = sum(v["after_near_dedup"]["documents"] for v in result["sources"].values())
    assert kept == direct_kept, (kept, direct_kept)
    per = step_inputs(result["datatrove_stats"])
    print(f"\n| step | documents read | MB read | project CPU s | documents/s per core | MB/s per core | "
          f"direct CPU s | project/direct |")
    print("|---|---|---|---|---|---|---|---|")
    for step, row in proj.items():
        docs, ch = per.get(step, (0, 0))
        dcpu = direct[step]["cpu"]
        print(f"| {step} | {docs} | {ch / 1e6:.2f} | {row['cpu']:.2f} | {docs / max(row['cpu'], 1e-9):,.0f} | "
              f"{ch / 1e6 / max(row['cpu'], 1e-9):.2f} | {dcpu:.2f} | {row['cpu'] / max(dcpu, 1e-9):.2f} |")
    steps_cpu = sum(r["cpu"] for r in proj.values())
    direct_cpu = sum(r["cpu"] for r in direct.values())
    print(f"| all steps | {per['filter'][0]} | {per['filter'][1] / 1e6:.2f} | {steps_cpu:.2f} | "
          f"{per['filter'][0] / steps_cpu:,.0f} | {per['filter'][1] / 1e6 / steps_cpu:.2f} | {direct_cpu:.2f} | "
          f"{steps_cpu / direct_cpu:.2f} |")
    print(f"| prepare() whole (input check + steps + manifest) | {per['filter'][0]} | {per['filter'][1] / 1e6:.2f} | "
          f"{total['cpu']:.2f} | {per['filter'][0] / total['cpu']:,.0f} | {per['filter'][1] / 1e6 / total['cpu']:.2f} "
          f"| {direct_cpu:.2f} | {total['cpu'] / direct_cpu:.2f} |")
    print(f"\nkept {kept} of {per['filter'][0]} documents (both runs); removed by reason: {result['removed_by_reason']}")

    if a.scale:
        big = write_shards(rows, os.path.join(a.work, f"raw{a.scale}x"), copies=a.scale)
        base = {k: v["peak_mb"] for k, v in proj.items()}
        _, result10, proj10, total10 = run_project(big, os.path.join(a.work, f"project{a.scale}x"))
        per10 = step_inputs(result10["datatrove_stats"])
        print(f"\n{a.scale}x input: {per10['filter'][0]} documents, {per10['filter'][1] / 1e6:.1f} MB of text; "
              f"whole run {total10['wall']:.1f} s wall, {total10['cpu']:.1f} s CPU")
        print(f"| step | peak RSS 1x (MB) | peak RSS {a.scale}x (MB) | CPU s {a.scale}x | documents/s per core {a.scale}x |"
              f" MB/s per core {a.scale}x |")
        print("|---|---|---|---|---|---|")
        for step, row in proj10.items():
            docs, ch = per10.get(step, (0, 0))
            print(f"| {step} | {base[step]:.0f} | {row['peak_mb']:.0f} | {row['cpu']:.2f} | "
                  f"{docs / max(row['cpu'], 1e-9):,.0f} | {ch / 1e6 / max(row['cpu'], 1e-9):.2f} |")
        print(f"removed by reason at {a.scale}x: {result10['removed_by_reason']}")
    print(f"\nproject/direct = {steps_cpu / direct_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
