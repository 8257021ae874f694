"""Wiring: evaluate() on a saved checkpoint, `codellama-eval samples=FILE benchmark=NAME`, the report."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, infilling_dir
from helpers_eval import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers_model import random_model, tiny_config
from helpers_tokenizer import small_tokenizer, small_tokenizer_path, stdlib_python_files

from codellama_recipe.evaluation.humaneval import load_humaneval
from codellama_recipe.evaluation.report import write_report
from codellama_recipe.evaluation.run import evaluate, load_config
from codellama_recipe.train.weight_formats import save_hf
from codellama_recipe.core.errors import ConfigError

pytestmark = pytest.mark.timeout(300)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_samples_file_cli_prints_and_writes_pass_at_k(tmp_path):
    problems = load_humaneval(limit=3)
    rows = []
    for p in problems:   # per task: one correct sample out of three
        rows += [{"task_id": p.task_id, "completion": ""},
                 {"task_id": p.task_id, "completion": p.reference},
                 {"task_id": p.task_id, "completion": "    return 0\n"}]
    samples = tmp_path / "model_samples.jsonl"
    samples.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "codellama_recipe.evaluation.cli", f"samples={samples}", "benchmark=humaneval",
                           f"out_dir={out}", "generation.ks=[1,2,3,10]", "sandbox.workers=2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "humaneval pass@1 = 0.3333" in lines
    assert "humaneval pass@2 = 0.6667" in lines
    assert "humaneval pass@3 = 1.0000" in lines
    assert not any("pass@10" in line for line in lines)        # k > samples per task is not reported
    scores = json.loads((out / "model_samples_humaneval_scores.json").read_text())
    assert scores["n_tasks"] == 3 and scores["n_samples"] == 9
    assert scores["status_counts"] == {"passed": 3, "failed": 6, "timed_out": 0, "error": 0}
    per_sample = [json.loads(line) for line in (out / "model_samples_humaneval_results.jsonl").read_text().splitlines()]
    assert len(per_sample) == 9 and {s["status"] for s in per_sample} == {"passed", "failed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_samples.jsonl", "out"]   # no stray log files


BAD_SAMPLES = {
    "bad_json": ('{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "HumanEval/1", "completion": \n',
                 ":2: not valid JSON"),
    "unknown_task": ('{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": "HumanEval/9999", "completion": ""}\n',
                     ":2: task_id 'HumanEval/9999' is not a humaneval task"),
    "missing_key": ('\n{"task_id": "HumanEval/0"}\n', ":2: no 'completion' key"),
    "not_a_string": ('{"task_id": "HumanEval/0", "completion": 5}\n', ":1: 'completion' is a int, expected a string"),
    "not_an_object": ('["HumanEval/0", ""]\n', ":1: a JSON list, not an object"),
    "empty": ("\n", ": no completions in the file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_samples_file_mistakes_are_one_line_naming_file_and_line_with_exit_2(case, tmp_path, capsys):
    from codellama_recipe.core.cli import run_hydra_command
    from codellama_recipe.evaluation.cli import check, run

    text, expected = BAD_SAMPLES[case]
    samples = tmp_path / "s.jsonl"
    samples.write_text(text)
    code = run_hydra_command("codellama-eval", "eval", run, check=check,
                             argv=[f"samples={samples}", "benchmark=humaneval", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"codellama-eval: input error: {samples}{expected}"), err[0]
    assert not (tmp_path / "out").exists()          # refused before anything ran


def test_missing_samples_file_and_unknown_benchmark_are_refused(tmp_path, capsys):
    from codellama_recipe.core.cli import run_hydra_command
    from codellama_recipe.evaluation.cli import check, run

    for argv, expected in ([f"samples={tmp_path / 'none.jsonl'}", "benchmark=humaneval"], "none.jsonl: no such file"), \
                          ([f"samples={tmp_path / 'none.jsonl'}", "benchmark=nope"], "benchmark='nope' is invalid"):
        assert run_hydra_command("codellama-eval", "eval", run, check=check, argv=argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


def test_config_errors_name_the_key():
    with pytest.raises(Exception, match="benchmarkz"):
        load_config({"benchmarkz": ["humaneval"]})
    with pytest.raises(ConfigError, match="benchmarks"):
        evaluate(None, {"benchmarks": ["humaneval", "nope"]}, model=object(), tokenizer=object())


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    tok = small_tokenizer()
    model = random_model(tiny_config(vocab_size=tok.vocab_size, max_seq_len=512), seed=2)
    out = tmp_path_factory.mktemp("hf")
    save_hf(model.state_dict(), model.cfg, out, tokenizer_path=small_tokenizer_path())
    return out


def test_evaluate_checkpoint_end_to_end(tiny_export, tmp_path):
    infilling = infilling_dir()
    benchmarks = ["humaneval", "mbpp", "key_retrieval", "perplexity"] + (["infilling_single"] if infilling else [])
    stdlib = str(Path(stdlib_python_files()[0]).parent / "[a-d]*.py")
    out = tmp_path / "eval"
    cfg = {"out_dir": str(out), "label": "stage-code", "benchmarks": benchmarks, "limit": 2,
           "generation": {"max_new_tokens": 12},
           "mbpp": {"path": str(REPO / "tests/fixtures/mbpp_sample.jsonl")},
           "infilling": {"dir": str(infilling) if infilling else None, "max_new_tokens": 8},
           "key_retrieval": {"lengths": [256], "positions": [0.0, 1.0], "files": stdlib},
           "perplexity": {"context_lengths": [64, 256], "min_bytes": 20000, "files": stdlib},
           "sandbox": {"workers": 2},
           "wandb": {"mode": "offline"}}
    results = evaluate(tiny_export, cfg)
    m = results["metrics"]
    for key in ("humaneval/pass@1", "mbpp/pass@1", "key_retrieval/accuracy", "key_retrieval/accuracy@256",
                "perplexity/ppl@64", "perplexity/ppl@256"):
        assert key in m, key
    if infilling:
        assert {"infilling_single/psm/pass@1", "infilling_single/spm/pass@1"} <= set(m)
        assert results["details"]["infilling_single/spm"]["n_tasks"] == 2
    assert results["details"]["humaneval"]["n_tasks"] == 2
    assert results["details"]["key_retrieval"]["n_examples"] == 2
    # A random 2048-piece model is close to uniform: perplexity near the vocabulary size.
    assert 300 < m["perplexity/ppl@64"] < 20000
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == m and saved["label"] == "stage-code"
    assert len((out / "samples" / "humaneval.jsonl").read_text().splitlines()) == 2
    for png in ("metrics_by_stage.png", "perplexity_by_context.png", "key_retrieval.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert "| humaneval/pass@1 |" in (out / "report.md").read_text()
    assert list((out / "wandb").glob("offline-run-*")), "wandb offline run not written"


CODE_FILE = """import os


def first(items):
    for item in items:
        return item
    return None


class Box:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value
"""


def test_corpus_infilling_scores_the_files_middles_in_every_mode(tiny_export, tmp_path):
    import random
    import torch.nn.functional as F
    from codellama_recipe.evaluation.infill_spans import line_spans
    from codellama_recipe.train.model import Llama
    from codellama_recipe.train.pretrained import load_pretrained

    for i in range(3):
        (tmp_path / f"f{i}.py").write_text(CODE_FILE.replace("Box", f"Box{i}").replace("first", f"pick_{i}"))
    (tmp_path / "too_long.py").write_text("x = 1\n" * 400)
    ci = {"files": str(tmp_path / "*.py"), "max_chars": 1000, "spans_per_doc": 3, "max_span_lines": 3,
          "lines_per_doc": 2, "max_new_tokens": 6}
    results = evaluate(tiny_export, {"out_dir": str(tmp_path / "eval"), "benchmarks": ["corpus_infilling"],
                                     "corpus_infilling": ci, "report": {"enabled": False}})
    m, details = results["metrics"], results["details"]["corpus_infilling"]
    assert details["files"] == 3 and details["max_tokens"] == 512       # the long file is left out
    for mode in ("psm", "spm", "ar"):
        assert details["modes"][mode]["lines"] == 3 * 2
        assert 0.0 <= m[f"corpus_infilling/{mode}/exact_match"] <= 1.0
    # independent: the prefix-only loss is the model's plain next-token loss of each whole file's middle lines
    cfg, state = load_pretrained(str(tiny_export))
    model = Llama(cfg)
    model.load_state_dict(state)
    model.eval()
    tok = small_tokenizer()
    total, count = 0.0, 0
    docs = [(tmp_path / f"f{i}.py").read_text() for i in range(3)]
    for d, text in enumerate(docs):
        for span in line_spans(text, 3, 3, random.Random(f"0/infill/{d}")):
            start = len(tok.encode(span.prefix, bos=True))
            ids = tok.encode(span.prefix + span.middle, bos=True)
            with torch.no_grad():
                logits = model(torch.tensor([ids]))[0].float()
            losses = F.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]), reduction="none")
            total, count = total + losses.sum().item(), count + len(losses)
    assert details["modes"]["ar"]["middle_tokens"] == details["modes"]["psm"]["middle_tokens"] == count
    assert m["corpus_infilling/ar/loss"] == pytest.approx(total / count, rel=1e-4)
    # a random model reads a middle about as badly in every mode, near log(vocab)
    assert all(abs(m[f"corpus_infilling/{mode}/loss"] - m["corpus_infilling/ar/loss"]) < 0.5 for mode in ("psm", "spm"))


def test_corpus_infilling_with_no_fitting_file_is_skipped_or_refused(tiny_export, tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * 400)
    cfg = {"out_dir": str(tmp_path / "eval"), "benchmarks": ["corpus_infilling"], "report": {"enabled": False},
           "corpus_infilling": {"files": str(tmp_path / "*.py")}}
    results = evaluate(tiny_export, cfg)
    assert "no file of at most" in results["skipped"]["corpus_infilling"]
    with pytest.raises(FileNotFoundError):
        evaluate(tiny_export, {**cfg, "skip_missing": False})
    with pytest.raises(ConfigError, match="corpus_infilling.modes"):
        evaluate(tiny_export, {**cfg, "corpus_infilling": {"modes": ["fim"]}})


def test_report_across_stages(tmp_path):
    def result(label, score, ppl):
        return {"label": label, "metrics": {"humaneval/pass@1": score, "key_retrieval/accuracy": score / 2,
                                            "corpus_infilling/psm/loss": 3 - score,
                                            "corpus_infilling/psm/exact_match": score},
                "details": {"perplexity": {"context_lengths": [128, 256], "ppl": ppl, "ppl_bin": ppl},
                            "key_retrieval": {"lengths": [256, 512], "positions": [0.0, 1.0],
                                              "accuracy": [[1.0, 0.5], [0.25, 0.0]]}}}
    paths = []
    for i, (label, score) in enumerate([("code", 0.1), ("python", 0.2), ("long_context", 0.25)]):
        p = tmp_path / f"{label}.json"
        p.write_text(json.dumps(result(label, score, [10.0 - i, 9.0 - i])))
        paths.append(p)
    report = write_report(paths, tmp_path / "report")
    text = report.read_text()
    assert "| metric | code | python | long_context |" in text
    assert "| humaneval/pass@1 | 0.1 | 0.2 | 0.25 |" in text
    for png in ("metrics_by_stage.png", "infill_loss_by_stage.png", "perplexity_by_context.png", "key_retrieval.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == PNG_MAGIC
        assert f"]({png})" in text
