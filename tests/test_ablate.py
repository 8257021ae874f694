"""codellama-ablate: the measurement code against hand-computed values, the arms' declared differences, and
the smoke preset end to end (outputs, printed lines, rerun skips everything)."""
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codellama_recipe.evaluation.bootstrap import bootstrap_interval, pooled_mean, pooled_ratio
from codellama_recipe.evaluation.document_loss import document_windows
from codellama_recipe.evaluation.infill_loss import middle_losses
from codellama_recipe.evaluation.infill_spans import Span, exact_match, line_spans, removed_lines
from codellama_recipe.evaluation.target_losses import target_losses

REPO = Path(__file__).resolve().parents[1]
SUMMARY_PATTERNS = [
    r"fim: infill_loss fim_psm/ar = [\d.]+",
    r"fim: exact_match fim_psm = [\d.]+ fim_spm = [\d.]+ ar = [\d.]+",
    r"fim: suffix_gain psm = [\d.]+ spm = [\d.]+ \(other file's suffix: psm = [\d.]+ spm = [\d.]+\)",
    r"fim: psm_only infill_loss psm/ar = [\d.]+ suffix_gain = [\d.]+ \(other: [\d.]+\) exact_match = [\d.]+",
    r"fim: ar_val_loss fim/ar = [\d.]+",
    r"lcft: ppl@16T theta1e6/theta1e4 = [\d.]+",
    r"lcft: ppl@16T theta1e6/none = [\d.]+",
    r"lcft: ppl@4T theta1e6/none = [\d.]+",
    r"python: python_val_loss python/code = [\d.]+",
]


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_of_constant_data_is_a_point():
    ci = bootstrap_interval(pooled_mean, [[2.0] * 10, [1.0] * 10], n_samples=200)
    assert ci == {"value": 2.0, "low": 2.0, "high": 2.0}


def test_bootstrap_interval_of_a_proportion_matches_the_normal_approximation():
    hits = [0.0] * 100 + [1.0] * 100                       # p = 0.5, n = 200: ±1.96·sqrt(.25/200) = ±0.069
    ci = bootstrap_interval(np.mean, [hits], n_samples=4000, seed=1)
    assert ci["value"] == 0.5
    assert ci["low"] == pytest.approx(0.5 - 0.069, abs=0.01)
    assert ci["high"] == pytest.approx(0.5 + 0.069, abs=0.01)


def test_paired_ratio_has_no_spread_when_one_arm_is_a_multiple_of_the_other():
    sums = np.array([3.0, 1.0, 7.0, 2.5])
    counts = np.array([2.0, 1.0, 5.0, 2.0])
    ci = bootstrap_interval(pooled_ratio, [sums, counts, 2 * sums, counts], n_samples=300)
    assert ci["value"] == pytest.approx(0.5) and ci["low"] == pytest.approx(0.5) and ci["high"] == pytest.approx(0.5)
    assert pooled_mean(sums, counts) == pytest.approx(13.5 / 10)


# ------------------------------------------------------------------------------------------ spans
def test_line_spans_cut_whole_lines_after_the_first():
    text = "".join(f"line {i}\n" for i in range(10))
    for span in line_spans(text, 50, 3, random.Random(0)):
        assert span.prefix + span.middle + span.suffix == text
        assert span.prefix.endswith("\n") and span.middle.endswith("\n")
        assert 1 <= span.middle.count("\n") <= 3
        assert span.suffix == "" or span.suffix.startswith("line")


def test_removed_line_is_one_non_blank_line_without_its_newline():
    text = "def f():\n\n    x = 1\n    return x\n"
    spans = removed_lines(text, 5, random.Random(0))
    assert [s.middle for s in spans] == ["    x = 1", "    return x"]
    assert spans[0] == Span("def f():\n\n", "    x = 1", "\n    return x\n")
    assert spans[1] == Span("def f():\n\n    x = 1\n", "    return x", "\n")


def test_exact_match_reads_the_first_line_and_ignores_trailing_whitespace():
    assert exact_match("    x = 1  \n    y = 2", "    x = 1")
    assert not exact_match("x = 1", "    x = 1")
    assert not exact_match("", "    x = 1")


def test_document_windows_overlap_by_one_token():
    assert document_windows(list(range(10)), 4, 9) == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert document_windows(list(range(10)), 4, 1) == [[0, 1, 2, 3, 4]]


# ------------------------------------------------------------------------------------------ infill loss
V = 128


class BigramModel(torch.nn.Module):
    """logits(next | current): token current + 1 has probability 1/2, every other token 1 / (2 (V - 1))."""

    def __init__(self):
        super().__init__()
        weight = torch.zeros(V, V)
        for c in range(V):
            weight[c, (c + 1) % V] = math.log(V - 1)
        self.output = torch.nn.Linear(V, V, bias=False)
        self.output.weight.data = weight.T.contiguous()

    def forward(self, ids, return_hidden=False):
        hidden = torch.nn.functional.one_hot(ids, V).float()
        return hidden if return_hidden else self.output(hidden)


class CharTokenizer:
    bos_id, eos_id, pad_id, prefix_id, suffix_id, middle_id, eot_id = 1, 2, 0, 3, 4, 5, 6
    has_infilling = True

    def encode(self, s, bos=False, eos=False):
        return [self.bos_id] * bos + [ord(c) for c in s] + [self.eos_id] * eos

    encode_no_space = encode


LIKELY, UNLIKELY = math.log(2), math.log(2 * (V - 1))


def test_target_losses_score_only_the_targets_of_right_padded_rows():
    seqs = [[ord("a"), ord("b"), ord("c"), ord("x")], [ord("a"), ord("q")]]
    losses = target_losses(BigramModel(), seqs, [2, 1], pad_id=0, batch_size=2)
    assert np.allclose(losses[0], [LIKELY, UNLIKELY])        # b→c (+1), c→x
    assert np.allclose(losses[1], [UNLIKELY])                # a→q


def test_infill_loss_scores_the_same_middle_tokens_in_every_mode():
    span = Span("a\n", "bc\n", "z\n")
    for mode in ("psm", "spm", "ar"):
        (losses,) = middle_losses(BigramModel(), CharTokenizer(), [span], mode)
        # middle "bc\n": b after <MID> / after "\n" (SPM: after the prefix's "\n"), c after b, "\n" after c
        assert np.allclose(losses, [UNLIKELY, LIKELY, UNLIKELY]), mode


# ------------------------------------------------------------------------------------------ arms
def _differences(a, b):
    from codellama_recipe.train.checkpoint_identity import config_differences, resolved
    from codellama_recipe.train.trainer import fingerprinted_config

    skip = ("init_from", "wandb", "run_dir", "stage.name", "stage.token_budget")
    changed = config_differences(fingerprinted_config(resolved(a)), fingerprinted_config(resolved(b)))
    return {d.split(":")[0] for d in changed
            if not d.startswith(skip)}


def test_arms_differ_only_where_declared():
    from codellama_recipe.stages.ablate.cli import load_ablate_config
    from codellama_recipe.stages.ablate.arms import compose_arms

    arms = {a.name: a for a in compose_arms(load_ablate_config(["ablate=smoke", "run_dir=/tmp/x"]))}
    assert _differences(arms["fim"].cfg, arms["ar"].cfg) == {"data.fim.rate"}
    assert _differences(arms["fim"].cfg, arms["fim_psm_only"].cfg) == {"data.fim.spm_rate"}
    assert _differences(arms["lcft_theta1e4"].cfg, arms["lcft_theta1e6"].cfg) == {"model.rope_theta"}
    assert _differences(arms["code_more"].cfg, arms["lcft_theta1e6"].cfg) == {
        "data.seq_len", "model.max_seq_len", "trainer.micro_batch_size", "model.rope_theta"}
    python_vs_code = _differences(arms["code_more"].cfg, arms["python"].cfg)
    assert python_vs_code and all(k.startswith("data.sources.") for k in python_vs_code)
    for name in ("code_more", "lcft_theta1e4", "lcft_theta1e6", "python"):
        assert arms[name].cfg.init_from == "/tmp/x/ar/hf"
        assert arms[name].cfg.trainer.batch_tokens * arms[name].cfg.trainer.max_steps == \
            arms["code_more"].cfg.trainer.batch_tokens * arms["code_more"].cfg.trainer.max_steps
    for twin in ("fim", "fim_psm_only", "ar"):       # every twin continues the one general base
        assert arms[twin].cfg.init_from == "/tmp/x/general/hf" and arms[twin].curve
        assert arms[twin].cfg.data.sources.code.paths[0].endswith("code/train_pieces-*.jsonl")
    assert arms["general"].cfg.init_from is None and arms["general"].cfg.data.fim.rate == 0.0


def test_gpu_preset_composes_with_the_arms_of_the_cpu_presets():
    from codellama_recipe.stages.ablate.cli import load_ablate_config
    from codellama_recipe.stages.ablate.arms import compose_arms
    from codellama_recipe.stages.ablate.measure import check_measurements, curve_steps

    acfg = load_ablate_config(["ablate=gpu", "run_dir=/tmp/x"])
    arms = {a.name: a for a in compose_arms(acfg)}
    check_measurements(list(arms.values()), acfg)
    smoke = {a.name for a in compose_arms(load_ablate_config(["ablate=smoke", "run_dir=/tmp/x"]))}
    assert set(arms) == smoke
    fim = arms["fim"].cfg
    assert (fim.model.dim, fim.model.n_layers, fim.trainer.precision) == (512, 8, "bf16")
    assert fim.trainer.batch_tokens * fim.trainer.max_steps == 960 * 65536 and fim.trainer.keep_last >= 8
    assert curve_steps(acfg) == [120, 240, 480, 960] and acfg.eval.device == "cuda"
    assert arms["lcft_theta1e6"].cfg.data.seq_len == 2048 and arms["lcft_theta1e6"].cfg.trainer.precision == "bf16"


def test_fim_long_preset_is_full_with_eight_times_the_twins_tokens_and_a_curve_through_fulls_end():
    from codellama_recipe.stages.ablate.cli import load_ablate_config
    from codellama_recipe.stages.ablate.arms import compose_arms
    from codellama_recipe.stages.ablate.measure import curve_steps

    full = {a.name: a.cfg for a in compose_arms(load_ablate_config(["run_dir=/tmp/x"]))}
    acfg = load_ablate_config(["ablate=fim_long", "run_dir=/tmp/x"])
    long = {a.name: a.cfg for a in compose_arms(acfg)}
    assert set(long) == set(full) and long["general"] == full["general"]
    for twin in ("fim", "fim_psm_only", "ar"):
        assert long[twin].trainer.max_steps == 8 * full[twin].trainer.max_steps
        assert long[twin].model == full[twin].model and long[twin].data == full[twin].data
    assert curve_steps(acfg)[0] == full["fim"].trainer.max_steps and curve_steps(acfg)[-1] == 3840


# ------------------------------------------------------------------------------------------ smoke run
def ablate_cmd(run_dir):
    return [sys.executable, "-m", "codellama_recipe.stages.ablate", "ablate=smoke", f"run_dir={run_dir}"]


def run_ablate(run_dir, timeout=600):
    proc = subprocess.run(ablate_cmd(run_dir), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def run_ablate_stopped_in_second_twin(run_dir, timeout=600) -> str:
    """SIGTERM while the `ar` twin trains: the engine checkpoints and the command exits 0."""
    proc = subprocess.Popen(ablate_cmd(run_dir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "WANDB_MODE": "offline"})
    lines, in_ar, sent, deadline = [], False, False, time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        in_ar = in_ar or line.startswith("[ablate] arm 'ar'")
        if in_ar and not sent and line.startswith("[train] training steps"):   # the flag is installed by then
            proc.send_signal(signal.SIGTERM)
            sent = True
        assert time.time() < deadline, "".join(lines[-30:])
    assert proc.wait(timeout=60) == 0, "".join(lines[-30:])
    return "".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_ablation_resumes_and_writes_the_report_and_the_summary_lines(tmp_path):
    stopped = run_ablate_stopped_in_second_twin(tmp_path)
    assert "[ablate] arm 'ar' stopped by signal 15" in stopped and not (tmp_path / "report.md").exists()

    out = run_ablate(tmp_path)
    assert "arm 'fim': finished earlier with the same config, skipped" in out
    assert "arm 'ar': resume" in out and "[train] resumed from" in out
    last = out.strip().splitlines()[-len(SUMMARY_PATTERNS):]
    for line, pattern in zip(last, SUMMARY_PATTERNS):
        assert re.fullmatch(pattern, line), (line, pattern)
    steps = [json.loads(line)["step"] for line in (tmp_path / "ar" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 24          # no step logged twice across the resume
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"setup", "arms", "fim", "lcft", "python", "claims", "lines"} <= set(results)
    assert results["lines"] == last
    assert set(results["arms"]) == {"general", "fim", "fim_psm_only", "ar", "code_more", "lcft_theta1e4",
                                    "lcft_theta1e6", "python"}
    assert {"fim_psm", "fim_spm", "ar"} == set(results["fim"]["infill_loss"])
    for interval in results["fim"]["infill_loss"].values():
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert "ppl@16T theta1e6/theta1e4" in results["lcft"]["ratios"]
    for arm in ("fim", "fim_psm_only"):              # the learning curve: steps 8 and 24 of 24
        assert [p["step"] for p in results["fim_curve"][arm]] == [8, 24]
        assert {"psm"} <= set(results["fim_curve"][arm][0]["suffix_gain"])
    assert results["fim_curve"]["fim"][-1]["suffix_gain"]["psm"] == results["fim"]["suffix_gain"]["psm"]
    assert results["setup"]["corpus_fingerprint"]
    for png in ("training_curves", "fim_infilling", "fim_curve", "val_loss_by_source", "lcft_perplexity",
                "lcft_key_retrieval"):
        assert (tmp_path / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "report.md").read_text()
    assert "## Claims" in report and "theta1e6" in report

    again = run_ablate(tmp_path)       # finished arms and measurements are skipped
    assert again.count("skipped") == 8 and "[train] training steps" not in again and "measuring" not in again
    assert again.strip().splitlines()[-len(SUMMARY_PATTERNS):] == last


def test_an_arm_added_on_the_command_line_is_composed_and_its_keys_checked():
    from codellama_recipe.stages.ablate.cli import load_ablate_config
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.stages.ablate.arms import compose_arms

    extra = '+arms.fim_spm_only={parent: general, settings: base, set: {data.fim.spm_rate: 1.0}, measure: ["infill:spm"]}'
    arms = {a.name: a for a in compose_arms(load_ablate_config(["ablate=smoke", "run_dir=/tmp/x", extra]))}
    assert arms["fim_spm_only"].cfg.data.fim.spm_rate == 1.0 and arms["fim_spm_only"].measure == ["infill:spm"]
    assert _differences(arms["fim"].cfg, arms["fim_spm_only"].cfg) == {"data.fim.spm_rate"}
    with pytest.raises(ConfigError, match=r"arms\.bad\.parentt.*unknown key"):
        compose_arms(load_ablate_config(["ablate=smoke", "run_dir=/tmp/x",
                                                "+arms.bad={parentt: null, settings: base}"]))


def test_more_seeds_repeat_every_arm_below_the_general_base_from_the_same_base():
    from codellama_recipe.stages.ablate.cli import load_ablate_config
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.stages.ablate.arms import compose_arms

    acfg = load_ablate_config(["ablate=smoke", "run_dir=/r", "more_seeds=[5]"])
    arms = {a.name: a for a in compose_arms(acfg)}
    assert "general@seed5" not in arms and {"fim@seed5", "ar@seed5", "lcft_theta1e6@seed5"} <= set(arms)
    fim, lcft = arms["fim@seed5"], arms["lcft_theta1e6@seed5"]
    assert (fim.parent, fim.cfg.init_from, fim.cfg.run_dir, fim.cfg.seed) == ("general", "/r/general/hf",
                                                                              "/r/seed5/fim", 5)
    assert (lcft.parent, lcft.cfg.init_from) == ("ar@seed5", "/r/seed5/ar/hf")
    assert arms["fim"].curve and not fim.curve and arms["fim"].cfg.seed == 0
    with pytest.raises(ConfigError, match="more_seeds"):
        compose_arms(load_ablate_config(["ablate=smoke", "more_seeds=[0]"]))


def test_a_claim_holds_across_seeds_only_when_it_holds_in_every_seed():
    from codellama_recipe.stages.ablate.report import across_seeds

    def claim(value, direction, met):
        return {"ablation": "fim", "figure": "f", "target": "t", "direction": direction, "met": met,
                "interval": {"value": value, "low": value, "high": value}}
    rows = across_seeds({0: [claim(0.7, True, True), claim(0.9, True, False)],
                         1: [claim(0.8, True, True), claim(1.1, False, False)]})
    assert [(r["direction_every_seed"], r["met_every_seed"]) for r in rows] == [(True, True), (False, False)]
    assert (rows[1]["min"], rows[1]["max"], rows[1]["values"]) == (0.9, 1.1, {"0": 0.9, "1": 1.1})


def test_each_ablation_reads_its_arms_through_roles_that_are_checked_against_the_arms():
    from codellama_recipe.core.errors import ConfigError
    from codellama_recipe.stages.ablate.arms import compose_arms
    from codellama_recipe.stages.ablate.cli import load_ablate_config, roles_of

    def roles(*overrides):
        acfg = load_ablate_config(["ablate=smoke", "run_dir=/tmp/x", *overrides])
        return roles_of(acfg, compose_arms(acfg))

    assert roles()["fim"] == {"fim": "fim", "ar": "ar", "psm_only": "fim_psm_only"}
    assert set(roles("~ablations.python", "~arms.python")) == {"fim", "lcft"}
    assert roles("ablations.fim.psm_only=null", "~arms.fim_psm_only")["fim"] == {"fim": "fim", "ar": "ar"}
    with pytest.raises(ConfigError, match=r"ablations\.python\.python='python'.*~ablations\.python"):
        roles("~arms.python")
    with pytest.raises(ConfigError, match=r"arms\.ar\.measure=.*\['exact:ar'\].*ablations\.fim\.ar"):
        roles('arms.ar.measure=["infill:ar", val_loss]')
    with pytest.raises(ConfigError, match=r"ablations\.fim\.twin=.*the roles of fim"):
        roles("+ablations.fim.twin=fim")


def _synthetic_fim_measurements(rng: random.Random, docs: int, scale: float) -> dict:
    def sums(factor):
        return {"sums": [factor * scale * (3 + rng.random()) for _ in range(docs)], "counts": [10] * docs}
    out = {f"infill:{m}": sums(f) for m, f in (("psm", 1.0), ("psm_nosuffix", 1.1), ("psm_othersuffix", 1.05),
                                                ("spm", 1.0), ("spm_nosuffix", 1.02), ("spm_othersuffix", 1.01),
                                                ("ar", 1.0))}
    for mode in ("psm", "spm", "ar"):
        out[f"exact:{mode}"] = {"hits": [rng.randint(0, 2) for _ in range(docs)], "n": [2] * docs,
                                "examples": [{"line": "x = 1", "completion": "x = 2"}]}
    out["val_loss"] = {s: sums(1.0) for s in ("code", "nl")}
    return out


def test_an_ablation_left_out_is_not_reported_and_renamed_arms_are_found_by_role(tmp_path):
    from codellama_recipe.core.schema import AblateConfig, AblateEval, AblateScale
    from codellama_recipe.stages.ablate.cli import ablation_figures
    from codellama_recipe.stages.ablate.report import write_outputs

    rng = random.Random(0)
    measured = {"twin": _synthetic_fim_measurements(rng, 12, 1.0),
                "left_to_right": _synthetic_fim_measurements(rng, 12, 1.2)}
    roles = {"fim": {"fim": "twin", "ar": "left_to_right"}}
    acfg = AblateConfig(eval=AblateEval(bootstrap_samples=200), seed=0, scale=AblateScale(seq_len=64))
    figures = ablation_figures(measured, roles, acfg)
    assert set(figures) == {"fim"}
    twin, ar = measured["twin"]["infill:psm"], measured["left_to_right"]["infill:ar"]
    expected = (sum(twin["sums"]) / sum(twin["counts"])) / (sum(ar["sums"]) / sum(ar["counts"]))
    assert figures["fim"]["infill_loss_ratio"]["fim_psm/ar"]["value"] == pytest.approx(expected)

    arms = {name: {"parent": parent, "settings": "base", "set": {}, "steps": 4, "tokens": 256, "time_s": 1.0}
            for name, parent in (("base_model", None), ("twin", "base_model"), ("left_to_right", "base_model"))}
    results = {"setup": {"preset": "test", "seq_len": 64, "batch_tokens": 64, "corpus_fingerprint": "f",
                         "model": {"dim": 8, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1}},
               "arms": arms, "roles": roles, "fim_curve": {}, **figures}
    lines = write_outputs(results, tmp_path)
    assert lines and all(line.startswith("fim: ") for line in lines)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["fim_infilling.png", "training_curves.png",
                                                               "val_loss_by_source.png"]
    report = (tmp_path / "report.md").read_text()
    assert "## 1. FIM" in report and "Long context" not in report and "Python specialization" not in report
    assert [c["ablation"] for c in json.loads((tmp_path / "results.json").read_text())["claims"]] == ["fim"] * 4
