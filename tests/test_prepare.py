"""codellama-prepare (docs/prepare.md): datatrove pipelines from raw code to the training sources."""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
import re

import pytest

from codellama_recipe.core.errors import ConfigError

pytest.importorskip("datatrove")

from codellama_recipe.core.config import compose, typed  # noqa: E402
from codellama_recipe.core.schema import PrepareConfig  # noqa: E402
from codellama_recipe.stages.prepare.cli import main  # noqa: E402
from codellama_recipe.stages.prepare.pipeline import prepare  # noqa: E402

VOCAB = [f"w{i}" for i in range(5000)]


def shingles(text, n=5):
    words = re.findall(r"\w+|[^\w\s]", text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a, b):
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def make_doc(rng, lines=40):
    return "\n".join("x = " + " + ".join(rng.choice(VOCAB) for _ in range(6)) for _ in range(lines))


def edit(rng, text, share):
    """Replace a share of the lines: the 5-gram Jaccard falls with the share."""
    lines = text.split("\n")
    for i in rng.sample(range(len(lines)), int(len(lines) * share)):
        lines[i] = "y = " + " + ".join(rng.choice(VOCAB) for _ in range(6))
    return "\n".join(lines)


def write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def duplicated_corpus(folder, *, seed, docs, lines, share, shards, langs, path):
    """`docs` documents, each with a near copy (`share` of its lines edited) and an exact copy, spread over
    `shards` files in<i>.jsonl.gz; the language cycles through `langs`."""
    rng = random.Random(seed)
    rows = []
    for _ in range(docs):
        t = make_doc(rng, lines)
        rows += [t, edit(rng, t, share), t]
    for i in range(shards):
        write(folder / f"in{i}.jsonl.gz", [{"content": t, "lang": langs[j % len(langs)], "max_stars_repo_path": path}
                                           for j, t in enumerate(rows[i::shards])])


def cfg_for(tmp_path, inputs, **over):
    base = {"out_dir": str(tmp_path / "out"), "input": {"paths": [str(p) for p in inputs]},
            "routes": {"python": {"langs": ["python"], "extensions": [".py"]},
                       "nl": {"langs": ["markdown"], "extensions": [".md"]}},
            "tokenizer": None}
    for k, v in over.items():
        node = base
        *head, last = k.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = v
    return typed(PrepareConfig, base, "prepare")


def kept_texts(out):
    texts = []
    for p in sorted(glob.glob(f"{out}/*/*/*.jsonl.gz")):
        if p.split("/")[-3] not in ("code", "python", "nl_code", "nl"):
            continue
        with gzip.open(p, "rt") as f:
            texts += [json.loads(l)["text"] for l in f]
    return texts


def test_near_dedup_precision_recall(tmp_path):
    rng = random.Random(0)
    rows, dup, distinct = [], set(), set()
    for c in range(40):
        base = make_doc(rng)
        rows.append(base)
        for share in (0.05, 0.08):           # Jaccard ~0.85-0.9: one cluster with the base
            v = edit(rng, base, share)
            assert jaccard(base, v) > 0.8
            rows.append(v)
            dup.add(v)
        v = edit(rng, base, 0.7)               # Jaccard well below the threshold: kept
        assert jaccard(base, v) < 0.3
        rows.append(v)
        distinct.add(v)
    rng.shuffle(rows)
    half = len(rows) // 2
    write(tmp_path / "a.jsonl.gz", [{"content": t, "lang": "Python", "max_stars_repo_path": "m.py"} for t in rows[:half]])
    write(tmp_path / "b.jsonl.gz", [{"content": t, "lang": "Python", "max_stars_repo_path": "m.py"} for t in rows[half:]])
    c = cfg_for(tmp_path, [tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"], heldout_share=0.0)
    result = prepare(c, log=lambda *_: None)
    kept = kept_texts(c.out_dir)
    assert len(kept) == len(set(kept))
    removed = set(rows) - set(kept)
    # a cluster keeps one document: count removals per true cluster instead of exact identities
    true_removed = len(dup)
    tp = min(len(removed), true_removed) - len(removed & distinct)
    precision = tp / max(1, len(removed))
    recall = tp / true_removed
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert not removed & distinct
    assert result["removed_by_reason"]["near_duplicate"] == len(removed)


def test_filters_decontamination_and_exact_dedup_counted(tmp_path):
    rng = random.Random(1)
    good = [make_doc(rng) for _ in range(5)]
    solution = "def has_close_elements(numbers, threshold):\n    for idx, elem in enumerate(numbers):\n" \
               "        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n"
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": solution.split("\n")[0],
                                 "canonical_solution": solution}) + "\n")
    rows = [{"content": t, "lang": "Python", "max_stars_repo_path": "a.py"} for t in good]
    rows += [{"content": good[0], "lang": "Python", "max_stars_repo_path": "copy.py"},          # exact dup
             {"content": "x" * 1200, "lang": "C", "max_stars_repo_path": "a.c"},              # max line
             {"content": "\n".join(["a" * 150] * 5), "lang": "C", "max_stars_repo_path": "b.c"},  # avg line
             {"content": "#### ;;;; {{{{ }}}} ====\n" * 20, "lang": "C", "max_stars_repo_path": "c.c"},  # alnum
             {"content": "// Code generated by protoc. DO NOT EDIT.\nint x = 1;", "lang": "C", "max_stars_repo_path": "d.c"},
             {"content": "{\"a\": 1}", "lang": "JSON", "max_stars_repo_path": "e.json"},          # data file size
             {"content": "hi there", "lang": "Markdown", "max_stars_repo_path": "f.md"},           # nl quality
             {"content": "# my module\n" + solution + "                return True\n", "lang": "Python",
              "max_stars_repo_path": "leak.py"},                                                  # contaminated
             {"content": "", "lang": "C"}, {"text": "wrong field"}]
    write(tmp_path / "raw.jsonl.gz", rows)
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    c = cfg_for(tmp_path, [tmp_path / "raw.jsonl.gz", tmp_path / "bad.jsonl.gz"],
                **{"decontamination.paths": [str(bench)]})
    r = prepare(c, log=lambda *_: None)
    assert list(r["skipped_files"]) == [str(tmp_path / "bad.jsonl.gz")]
    assert r["removed_by_reason"] == {"alnum_fraction": 1, "autogenerated": 1, "avg_line_length": 1,
                                      "contaminated": 1, "data_file_size": 1, "exact_duplicate": 1,
                                      "max_line_length": 1, "nl_quality": 1}
    assert r["examples"]["contaminated"][0]["benchmark"].endswith("HumanEval/0")
    assert sorted(kept_texts(c.out_dir)) == sorted(good)
    assert r["sources"]["python"]["after_near_dedup"]["documents"] == 5


def test_same_output_for_one_and_two_workers(tmp_path):
    rng = random.Random(2)
    rows = []
    for _ in range(30):
        t = make_doc(rng, 10)
        rows += [t, edit(rng, t, 0.1)]
    for i in range(2):
        write(tmp_path / f"in{i}.jsonl.gz",
              [{"content": t, "lang": "Python" if j % 3 else "Go", "max_stars_repo_path": "x"} for j, t in
               enumerate(rows[i::2])])
    outs = []
    for workers in (1, 2):
        c = cfg_for(tmp_path, sorted(tmp_path.glob("in*.jsonl.gz")), out_dir=str(tmp_path / f"o{workers}"),
                    **{"executor.tasks": 2, "executor.workers": workers})
        r = prepare(c, log=lambda *_: None)
        files = {p.split(f"o{workers}/")[1]: hashlib.sha1(gzip.open(p).read()).hexdigest()
                 for p in sorted(glob.glob(f"{c.out_dir}/*/*/*.jsonl.gz"))
                 if p.split("/")[-3] in ("code", "python", "nl_code", "nl")}
        outs.append((files, r["sources"], r["removed_by_reason"]))
    assert outs[0] == outs[1]
    # resumable: a rerun finds every datatrove task completed and changes nothing
    r2 = prepare(c, log=lambda *_: None)
    assert r2["sources"] == outs[1][1]
    # ... and the same out_dir with other settings or other inputs is refused, never a mix of two corpora
    other = cfg_for(tmp_path, sorted(tmp_path.glob("in*.jsonl.gz")), out_dir=c.out_dir, **{"executor.tasks": 3})
    with pytest.raises(ConfigError, match=r"out_dir.*other settings \(settings: executor.tasks\)"):
        prepare(other, log=lambda *_: None)
    write(tmp_path / "in0.jsonl.gz", [{"content": rows[0], "lang": "Python", "max_stars_repo_path": "x"}])
    with pytest.raises(ConfigError, match=r"other inputs \(inputs added, removed or modified: .*in0\.jsonl\.gz"):
        prepare(c, log=lambda *_: None)


def test_end_to_end_training_config_reads_the_output(tmp_path):
    rng = random.Random(3)
    write(tmp_path / "raw.jsonl.gz", [{"content": make_doc(rng, 8), "lang": "Go", "max_stars_repo_path": "m.go"}
                                      for _ in range(20)])
    out = tmp_path / "out"
    assert main([f"input.paths=[{tmp_path}/raw.jsonl.gz]", f"out_dir={out}", "heldout_share=0.2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    code = manifest["sources"]["code"]
    assert code["read"]["documents"] == 20 and code["read"]["tokens"] > 0
    cfg = compose("train", [f"corpus.code.paths=[{out}/code/train/*.jsonl.gz]",
                            f"corpus.code.val_paths=[{out}/code/heldout/*.jsonl.gz]"])
    from codellama_recipe.data.record_readers import iter_jsonl_gz
    from codellama_recipe.data.source_files import resolve_globs

    train = resolve_globs(tuple(cfg.corpus.code.paths), "corpus.code.paths")
    val = resolve_globs(tuple(cfg.corpus.code.val_paths), "corpus.code.val_paths")
    n = sum(1 for p in train + val for _ in iter_jsonl_gz(p, 0, None, 1 << 20))
    assert n == code["after_near_dedup"]["documents"] == 20
    assert code["splits"]["heldout"] == len([1 for p in val for _ in iter_jsonl_gz(p, 0, None, 1 << 20)])
    # ... and a training stage runs on it by overrides only (every source of the code mix pointed at it)
    import subprocess
    import sys

    from helpers_engine import TINY

    corpus = [f"corpus.{s}.{k}=[{out}/code/{split}/*.jsonl.gz]" for s in ("code", "nl_code", "nl")
              for k, split in (("paths", "train"), ("val_paths", "heldout"))]
    done = subprocess.run([sys.executable, "-m", "codellama_recipe.train.cli", *TINY, *corpus, "stage=code",
                           f"run_dir={tmp_path}/run", "trainer.max_steps=2", "trainer.batch_tokens=128",
                           "trainer.val_every=2", "trainer.val_batches=1", "trainer.log_every=1",
                           "data.num_workers=0", "optim.warmup_steps=1"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert any("val/loss/code" in r for r in rows), rows[-1].keys()


def test_wrong_field_name_is_one_line_exit_2(tmp_path, capsys):
    write(tmp_path / "raw.jsonl.gz", [{"text": "int main() { return 0; }"}] * 3)
    code = main([f"input.paths=[{tmp_path}/raw.jsonl.gz]", f"out_dir={tmp_path}/o"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "input.text_key" in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("args, key", [
    ([], "input.paths"),
    (["input.paths=[/nonexistent/*.jsonl]"], "input.paths"),
    (["input.paths=[x.jsonl]", "executor.kind=spark"], "executor.kind"),
    (["input.paths=[x.jsonl]", "routes.java={langs:[java]}"], "routes.java"),
    (["input.paths=[x.jsonl]", "dedup.ngram=0"], "dedup.ngram"),
    (["input.paths=[x.jsonl]", "nosuchkey=1"], "nosuchkey"),
    (["input.paths=[x.jsonl]", "progress_bar=sometimes"], "progress_bar"),
])
def test_config_mistakes_are_one_line_exit_2(tmp_path, capsys, args, key):
    code = main([*args, f"out_dir={tmp_path}/o"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and key in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------
# kill -9 and resume
# --------------------------------------------------------------------------------------------------------

def _content_of(out):
    """Every output and removed-document file, decompressed (gzip headers hold a time), plus the manifest without
    its timings."""
    files = {}
    for p in sorted(glob.glob(f"{out}/**/*.jsonl.gz", recursive=True)):
        rel = p[len(str(out)) + 1:]
        if rel.split("/")[0] in ("code", "python", "nl_code", "nl", "removed"):
            files[rel] = gzip.open(p).read()
    manifest = json.loads(open(f"{out}/manifest.json").read())
    manifest.pop("throughput")
    return files, manifest


def test_kill_9_mid_run_then_rerun_gives_the_same_output(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    duplicated_corpus(tmp_path, seed=5, docs=120, lines=12, share=0.1, shards=4, langs=("Python", "Go", "Markdown"),
                      path="x")

    def args(out):
        return [f"input.paths=[{tmp_path}/in*.jsonl.gz]", f"out_dir={out}", "executor.tasks=4", "executor.workers=2",
                "heldout_share=0.2"]

    def command(out):
        return [sys.executable, "-m", "codellama_recipe.stages.prepare.cli", *args(out)]

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the uninterrupted run: what the command does, in this process
    from codellama_recipe.stages.prepare.cli import load_tokenizer

    prepare(typed(PrepareConfig, compose("prepare", args(tmp_path / "whole")), "prepare"),
            tokenizer=load_tokenizer(None), log=lambda *_: None)
    out = tmp_path / "killed"
    # killed in the middle of the MinHash signature step: some of its tasks done, the later steps not started
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline = time.time() + 120
    while not glob.glob(f"{out}/logs/mh_sig/completions/*") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)              # the command and its datatrove worker processes
    proc.wait()
    done = len(glob.glob(f"{out}/logs/mh_sig/completions/*"))
    # killed mid-run (usually with 1-2 of the 4 signature tasks done; a loaded machine may let the step finish)
    assert proc.returncode == -signal.SIGKILL and done >= 1, (proc.returncode, done)
    assert not (out / "manifest.json").exists() and len(glob.glob(f"{out}/logs/mh_apply/completions/*")) < 4
    rerun = subprocess.run(command(out), capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Skipping" in rerun.stderr + rerun.stdout             # datatrove skipped the tasks done before the kill
    assert _content_of(out) == _content_of(tmp_path / "whole")


# --------------------------------------------------------------------------------------------------------
# bad input: counted, or one line
# --------------------------------------------------------------------------------------------------------

def _bad_corpus(tmp_path):
    rng = random.Random(6)
    d = tmp_path / "raw"
    d.mkdir()
    good = [make_doc(rng, 6) for _ in range(6)]
    row = lambda t: json.dumps({"content": t, "lang": "Go", "max_stars_repo_path": "a.go"}).encode()
    (d / "mixed.jsonl").write_bytes(b"\n".join([
        row(good[0]), row(good[1]),
        b'{"content": "unterminated',                                        # line 3: malformed JSON
        row(good[2]).replace(b"x = ", b"x\xe9 = ", 1),                        # line 4: latin-1, not UTF-8
        b'["an", "array"]',                                                   # line 5: not an object
        json.dumps({"text": "wrong field"}).encode(),                         # line 6: no content
        row(good[3]), row(good[4])]) + b"\n")
    (d / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not deflate data")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "notes.txt").write_text("a file of another kind")
    # a gzip stream cut short: the lines before the cut are kept, the cut is counted
    big = [make_doc(rng, 60) for _ in range(60)]
    write(d / "cut.jsonl.gz", [{"content": t, "lang": "Go", "max_stars_repo_path": "b.go"} for t in big])
    data = (d / "cut.jsonl.gz").read_bytes()
    (d / "cut.jsonl.gz").write_bytes(data[:int(len(data) * 0.8)])
    # a parquet file with a sound footer and damaged data pages
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"content": [make_doc(rng, 30) for _ in range(40)], "lang": ["Go"] * 40})
    pq.write_table(table, d / "damaged.parquet", row_group_size=10, compression="none")
    raw = bytearray((d / "damaged.parquet").read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 2000] = b"\xff" * 2000
    (d / "damaged.parquet").write_bytes(bytes(raw))
    return d, good, big


def test_bad_input_is_skipped_and_counted_per_reason(tmp_path):
    d, good, big = _bad_corpus(tmp_path)
    c = cfg_for(tmp_path, [f"{d}/*"], heldout_share=0.0, **{"dedup.near": False})
    r = prepare(c, log=lambda *_: None)
    b = r["bad_input"]
    assert b["skipped_files_by_reason"] == {"corrupt_gzip": 1, "empty_file": 1, "unsupported_format": 1}
    assert sorted(r["skipped_files"]) == sorted(str(d / n) for n in ("corrupt.jsonl.gz", "empty.jsonl", "notes.txt"))
    assert b["records_by_reason"] == {"corrupt_parquet": 1, "malformed_json": 1, "no_text": 1, "non_utf8_line": 1,
                                      "not_an_object": 1, "truncated_file": 1}
    assert b["records_by_file"][str(d / "mixed.jsonl")] == {"malformed_json": 1, "no_text": 1, "non_utf8_line": 1,
                                                            "not_an_object": 1}
    assert any(e.startswith(f"{d}/mixed.jsonl:3: malformed_json") for e in b["examples"])
    kept = set(kept_texts(c.out_dir))
    # the lines after the non-UTF-8 one are read (datatrove's JsonlReader drops the rest of such a file)
    assert {good[0], good[1], good[3], good[4]} <= kept and good[2] not in kept
    cut_kept = kept & set(big)
    assert 0 < len(cut_kept) < len(big)
    parquet_kept = kept - set(big) - set(good)
    assert len(parquet_kept) < 40               # the batches before the damage, if any (datatrove reads 1000 rows a batch)
    # everything read is accounted for: kept + removed by a reason
    assert r["sources"]["code"]["read"]["documents"] == 4 + len(cut_kept) + len(parquet_kept)


def test_strict_input_stops_at_file_and_line_then_rerun_without_it(tmp_path, capsys):
    d, good, _ = _bad_corpus(tmp_path)
    out = tmp_path / "o"
    args = [f"input.paths=[{d}/mixed.jsonl]", f"out_dir={out}", "dedup.near=false"]
    assert main([*args, "input.strict=true"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert f"{d}/mixed.jsonl:3" in last and "malformed_json" in last and "Traceback" not in err
    assert not (out / "manifest.json").exists()
    mixed = (d / "mixed.jsonl").read_bytes().split(b"\n")   # edited in place (still one malformed line):
    (d / "mixed.jsonl").write_bytes(b"\n".join(mixed[:2] + [b'{"content": "cut short'] + mixed[3:]))
    assert main(args) == 0               # the stopped task is redone, not skipped as completed
    m = json.loads((out / "manifest.json").read_text())
    assert m["bad_input"]["records_by_reason"]["malformed_json"] == 1
    assert m["sources"]["code"]["read"]["documents"] == 4


@pytest.mark.parametrize("make, key", [
    (lambda p: p.mkdir(), "an empty folder"),
    (lambda p: (p.mkdir(), (p / "a.jsonl").write_bytes(b""), (p / "b.jsonl.gz").write_bytes(b"xx")),
     "no readable input file"),
])
def test_empty_input_is_a_config_mistake(tmp_path, capsys, make, key):
    make(tmp_path / "in")
    code = main([f"input.paths=[{tmp_path}/in]", f"out_dir={tmp_path}/o"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "input.paths" in err and key in err, err


# --------------------------------------------------------------------------------------------------------
# a hub dataset, streamed (datasets' local json builder: no network)
# --------------------------------------------------------------------------------------------------------

def test_hub_input_streamed_gives_the_same_output_as_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rng = random.Random(7)
    rows = []
    for j in range(30):
        t = make_doc(rng, 20)
        rows += [t, edit(rng, t, 0.05)]
    records = [{"content": t, "lang": ("Python", "Go")[j % 2], "max_stars_repo_path": "m"} for j, t in enumerate(rows)]
    records.insert(7, {"content": None, "lang": "Go", "max_stars_repo_path": "m"})          # no text: counted
    for i in range(2):
        with open(tmp_path / f"part{i}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records[i::2])
    files = [str(tmp_path / f"part{i}.jsonl") for i in range(2)]
    hub = cfg_for(tmp_path, [], out_dir=str(tmp_path / "hub"), heldout_share=0.0,
                  **{"input.hub": {"path": "json", "data_files": files}, "executor.tasks": 2})
    r = prepare(hub, log=lambda *_: None)
    local = prepare(cfg_for(tmp_path, files, out_dir=str(tmp_path / "local"), heldout_share=0.0,
                            **{"executor.tasks": 2}), log=lambda *_: None)
    assert sorted(kept_texts(hub.out_dir)) == sorted(kept_texts(tmp_path / "local"))
    assert r["sources"] == local["sources"] and r["removed_by_reason"] == local["removed_by_reason"]
    assert r["removed_by_reason"]["near_duplicate"] >= 25
    assert r["bad_input"]["records_by_reason"] == {"no_text": 1} == local["bad_input"]["records_by_reason"]
    # input.hub_limit: at most that many documents read, split over the tasks
    limited = prepare(cfg_for(tmp_path, [], out_dir=str(tmp_path / "lim"), heldout_share=0.0,
                              **{"input.hub": {"path": "json", "data_files": files}, "input.hub_limit": 10,
                                 "executor.tasks": 2, "dedup.near": False}), log=lambda *_: None)
    assert sum(v["read"]["documents"] for v in limited["sources"].values()) == 10


@pytest.mark.parametrize("args, key", [
    (["input.hub={name:x}"], "input.hub"),
    (["input.hub=x", "input.hub_limit=0"], "input.hub_limit"),
    (["input.paths=[x.jsonl]", "executor.kind=slurm", "executor.time=soon"], "executor.time"),
])
def test_hub_and_slurm_config_mistakes_are_one_line_exit_2(tmp_path, capsys, args, key):
    code = main([*args, f"out_dir={tmp_path}/o"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and key in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------------
# SLURM: submissions through a stub sbatch, then the jobs run as SLURM would run them
# --------------------------------------------------------------------------------------------------------

STUB_SBATCH = """#!/bin/sh
# records its arguments and the submitted script; answers like sbatch
d="{log}"
n=$(( $(cat "$d/count" 2>/dev/null || echo 100) + 1 ))
echo $n > "$d/count"
for a in "$@"; do last="$a"; done
printf '%s\\n' "$@" > "$d/args_$n"
cp "$last" "$d/script_$n"
echo "Submitted batch job $n"
"""


def test_slurm_submissions_and_dependencies_with_a_stub_sbatch(tmp_path, monkeypatch, capsys):
    import os
    import stat
    import sys

    import dill

    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch_log"
    bin_dir.mkdir()
    log.mkdir()
    (bin_dir / "sbatch").write_text(STUB_SBATCH.format(log=log))
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho localhost\n")      # `scontrol show hostnames` in a job
    for name in ("sbatch", "scontrol"):
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    duplicated_corpus(tmp_path, seed=8, docs=20, lines=20, share=0.05, shards=2, langs=("Go",), path="m.go")
    out = tmp_path / "out"
    args = [f"input.paths=[{tmp_path}/in*.jsonl.gz]", f"out_dir={out}", "heldout_share=0.1", "executor.tasks=3"]
    slurm = ["executor.kind=slurm", "executor.partition=cpu-long", "executor.time=02:00:00",
             "executor.cpus_per_task=2", "executor.mem_per_cpu_gb=4"]
    assert main([*args, *slurm]) == 0
    assert "submitted" in capsys.readouterr().out
    steps = ["filter", "exact_sig", "exact_find", "exact_apply", "mh_sig", "mh_buckets", "mh_cluster", "mh_apply"]
    arrays = {"exact_find": 1, "mh_buckets": 14, "mh_cluster": 1}
    jobs = {}
    for n in range(101, int((log / "count").read_text()) + 1):
        script = (log / f"script_{n}").read_text()
        argv = (log / f"args_{n}").read_text().split("\n")
        name = re.search(r"#SBATCH --job-name=prepare_(\w+)", script).group(1)
        if "launch_pickled_pipeline" in script:
            jobs[name] = (n, script, argv)
        else:                                             # datatrove's stats merge after each step
            assert "merge_stats" in script and re.search(r"--dependency=afterok:(\d+)", script)
    assert list(jobs) == steps                            # submitted in dependency order, one job array each
    for k, name in enumerate(steps):
        n, script, argv = jobs[name]
        for directive in ("--partition=cpu-long", "--time=02:00:00", "--cpus-per-task=2", "--mem-per-cpu=4G",
                          f"--array=0-{arrays.get(name, 3) - 1}"):
            assert f"#SBATCH {directive}\n" in script, (name, directive)
        assert f"source {sys.prefix}/bin/activate" in script
        assert f"launch_pickled_pipeline {out}/logs/{name}/executor.pik" in script
        dependency = [a for a in argv if a.startswith("--dependency=")]
        assert dependency == ([f"--dependency=afterok:{jobs[steps[k - 1]][0]}"] if k else [])
    # the jobs, run as SLURM runs them (each array index loads the pickled executor), then the local rerun
    # finds every task completed and writes the manifest: the same as a local run
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    for name in steps:
        for i in range(arrays.get(name, 3)):
            with open(out / "logs" / name / "executor.pik", "rb") as f:
                executor = dill.load(f)
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(i))
            executor.run()
        assert len(os.listdir(out / "logs" / name / "completions")) == arrays.get(name, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    # what `codellama-prepare <args> executor.kind=local` does (its CLI is tested above), without a tokenizer
    finish = lambda extra: prepare(typed(PrepareConfig, compose("prepare", [*args, *extra]), "prepare"),
                                   log=lambda *_: None)
    m, local = finish([]), finish([f"out_dir={tmp_path}/local"])
    assert m["sources"] == local["sources"] and m["removed_by_reason"] == local["removed_by_reason"]
    assert m["removed_by_reason"]["exact_duplicate"] == 20 and m["removed_by_reason"]["near_duplicate"] >= 15
    assert sorted(kept_texts(out)) == sorted(kept_texts(tmp_path / "local"))


@pytest.mark.parametrize("setting, shown", [("true", True), ("false", False), ("auto", False)])  # auto: no terminal
def test_a_progress_bar_per_reading_step_when_asked(tmp_path, capsys, setting, shown):
    rng = random.Random(9)
    write(tmp_path / "in.jsonl.gz", [{"content": make_doc(rng, 8), "lang": "Go", "max_stars_repo_path": "a.go"}
                                     for _ in range(4)])
    assert main([f"input.paths=[{tmp_path}/in.jsonl.gz]", f"out_dir={tmp_path}/o", "dedup.near=false",
                 f"progress_bar={setting}"]) == 0
    bars = capsys.readouterr().err.count("Document progress")
    assert (bars >= 2) if shown else bars == 0     # the filter step's reader and the exact-dedup readers


def test_ray_without_the_ray_package_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    write(tmp_path / "in.jsonl.gz", [{"content": "x = 1"}])
    code = main([f"input.paths=[{tmp_path}/in.jsonl.gz]", f"out_dir={tmp_path}/o", "executor.kind=ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "executor.kind" in err[0] and "pip install" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_ray_executor_gives_the_same_output_as_local(tmp_path):
    pytest.importorskip("ray", reason="executor.kind=ray needs the ray package (pip install 'codellama-recipe[ray]')")
    import ray

    rng = random.Random(4)
    rows = []
    for _ in range(12):
        t = make_doc(rng, 10)
        rows += [t, edit(rng, t, 0.1)]
    write(tmp_path / "in.jsonl.gz", [{"content": t, "lang": "Python", "max_stars_repo_path": "x.py"} for t in rows])
    outputs = []
    try:
        for kind in ("local", "ray"):
            c = cfg_for(tmp_path, [tmp_path / "in.jsonl.gz"], out_dir=str(tmp_path / kind),
                        **{"executor.kind": kind, "executor.tasks": 2, "executor.workers": 2,
                           "executor.mem_per_cpu_gb": 1})
            r = prepare(c, log=lambda *_: None)
            files = {p.split(f"/{kind}/")[1]: gzip.open(p).read()
                     for p in sorted(glob.glob(f"{c.out_dir}/*/*/*.jsonl.gz"))}
            outputs.append((files, r["sources"], r["removed_by_reason"]))
    finally:
        ray.shutdown()
    assert outputs[0][0] and outputs[0] == outputs[1]
