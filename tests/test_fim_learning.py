"""The infilling objective, as this project trains and measures it, teaches a model to use the suffix.

A control task where only the suffix can tell part of the middle: every document is

    x = <n>
    open <tag>
    y = <n>          (2 to 4 lines)
    close <tag>
    z = <n>

with <tag> drawn from 40 words. A middle that holds the `open` line can be predicted from a suffix that holds
the `close` line, and from nothing else. A tiny model trained by codellama-train with FIM (rate 0.9, PSM and SPM)
is then measured by evaluation/corpus_infilling.py on held-out documents: the middle's loss with the true
suffix against its loss with another document's suffix (the suffix gain of docs/ablations.md). A defect anywhere
between the FIM transform and the evaluation prompts (a suffix that never reaches the model, a misplaced
sentinel, an evaluation prompt that differs from training) keeps that gain at 1.
"""
import json
import random
import subprocess
import sys

import pytest

from conftest import REPO

TAGS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "theta", "zeta", "apple", "banana",
        "cherry", "grape", "lemon", "mango", "olive", "peach", "plum", "melon", "red", "green", "blue", "black",
        "white", "brown", "amber", "coral", "ivory", "jade", "north", "south", "east", "west", "river", "stone",
        "cloud", "storm", "flame", "frost"]


def control_document(rng: random.Random) -> str:
    tag = rng.choice(TAGS)
    lines = [f"x = {rng.randint(0, 999)}\n", f"open {tag}\n"]
    lines += [f"y = {rng.randint(0, 999)}\n" for _ in range(rng.randint(2, 4))]
    return "".join(lines + [f"close {tag}\n", f"z = {rng.randint(0, 999)}\n"])


def write_jsonl(path, n, seed):
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": control_document(rng)}) + "\n" for _ in range(n)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_fim_trained_model_uses_the_suffix_on_a_control_task(tmp_path):
    from codellama_recipe.evaluation.corpus_infilling import fitting_files, infill_loss_sums
    from codellama_recipe.evaluation.model_loading import ModelToLoad, load_model_and_tokenizer

    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", 30_000, seed=0)
    write_jsonl(data / "val.jsonl", 200, seed=1)
    paths = f"[{data / 'train.jsonl'}]"
    sources = [f"corpus.{s}.paths={paths}" for s in ("code", "nl_code", "nl")] + \
              [f"corpus.{s}.val_paths=null" for s in ("code", "nl_code", "nl")]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "codellama_recipe.train.cli", "stage=code", f"run_dir={run_dir}",
           "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.max_seq_len=128",
           "data.seq_len=128", "data.fim.rate=0.9", "optim.lr=3e-3", "optim.warmup_steps=10",
           "trainer.batch_tokens=2048", "trainer.micro_batch_size=16", "trainer.max_steps=300",
           "trainer.checkpoint_every=0", "trainer.val_every=0", "trainer.log_every=50", "wandb.mode=disabled",
           "trainer.progress_bar=false", *sources]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    model, tokenizer = load_model_and_tokenizer(ModelToLoad(str(run_dir / "hf")))
    texts = [json.loads(line)["text"] for line in (data / "val.jsonl").read_text().splitlines()]
    docs = fitting_files(texts, tokenizer, 1500, 128, 64)

    def loss(mode):
        sums = infill_loss_sums(model, tokenizer, docs, mode, spans_per_doc=4, max_span_lines=3, seed=0)
        return sum(sums["sums"]) / sum(sums["counts"])

    gain = {mode: loss(f"{mode}_othersuffix") / loss(mode) for mode in ("spm", "psm")}
    assert gain["spm"] >= 1.08 and gain["psm"] >= 1.03, gain
