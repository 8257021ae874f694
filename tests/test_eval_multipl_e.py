"""MultiPL-E translation and judging: oracle completions pass, wrong ones, an early exit and an infinite loop fail
(Bash and JavaScript here: fast; bench/multipl_e_suite.py runs every language over the whole suite)."""
import gzip
import json
from pathlib import Path

import pytest
from helpers_eval import one_torch_thread  # noqa: F401  (autouse fixture)

from codellama_recipe.evaluation.humaneval import default_humaneval_path
from codellama_recipe.evaluation.multipl_e_parse import Untranslatable, parse_problem
from codellama_recipe.evaluation.multipl_e_translate import LANGUAGES, translate
from codellama_recipe.evaluation.run import evaluate
from codellama_recipe.evaluation.sandbox import Sandbox
from codellama_recipe.evaluation.toolchains import TOOLCHAINS, with_sentinel


def _rows():
    with gzip.open(default_humaneval_path(), "rt") as f:
        return [json.loads(line) for line in f]


# Per language: a completion that exits 0 before any test runs, and one that never returns (each compiles).
EXIT_EARLY = {"sh": "    exit 0\n", "js": "  process.exit(0);\n}\n",
              "cpp": "    exit(0);\n", "java": "        if (true) { System.exit(0); }\n        return true;\n",
              "ts": "  (globalThis as any).process.exit(0);\n  return true;\n}\n", "php": "    exit(0);\n}\n",
              "cs": "        System.Environment.Exit(0);\n        return true;\n"}
LOOP = {"sh": "    while true; do :; done\n", "js": "  while (true) {}\n}\n",
        # a loop without side effects is undefined behaviour in C++: the compiler may remove it
        "cpp": "    volatile bool spin = true;\n    while (spin) {}\n    return true;\n",
        "java": "        while (true) {}\n", "ts": "  while (true) {}\n}\n", "php": "    while (true) {}\n}\n",
        "cs": "        while (true) {}\n"}


@pytest.mark.parametrize("lang", ["sh", "js", "cpp", "java", "ts", "php", "cs"])
def test_oracle_passes_wrong_fails(lang):
    if TOOLCHAINS[lang].missing():
        pytest.skip(f"{lang}: toolchain missing {TOOLCHAINS[lang].missing()} (make toolchains)")
    p = parse_problem(_rows()[0])
    t = translate(p, lang)
    tests = with_sentinel(lang, t["tests"])
    oracle = LANGUAGES[lang].oracle_completion(p)
    wrong = LANGUAGES[lang].oracle_completion(p, p.cases[1:])
    exit_early, loop = EXIT_EARLY[lang], LOOP[lang]
    sandbox = Sandbox({"workers": 2})
    tc = TOOLCHAINS[lang].with_limits(run_s=3)
    results = sandbox.judge_many([(t["prompt"] + c, tests, tc) for c in (oracle, wrong, exit_early, loop)])
    assert [r.status for r in results][:3] == ["passed", "failed", "failed"], [(r.status, r.message) for r in results]
    assert results[3].status in ("timed_out", "failed")
    assert "compil" not in (results[2].message + results[3].message).lower(), [r.message for r in results[2:]]


# ------------------------------------------------------------------ the `multipl_e` benchmark of codellama-eval
PAPER = ("cpp", "java", "php", "cs", "ts", "sh")   # Code Llama, Table 4
FAST = [lang for lang in ("sh", "js") if not TOOLCHAINS[lang].missing()]
FIXTURE = Path(__file__).parent / "fixtures" / "multipl_e" / "humaneval-sh-sample.jsonl"


@pytest.fixture(scope="module")
def tiny_model():
    from helpers_model import random_model, tiny_config
    from helpers_tokenizer import small_tokenizer

    tok = small_tokenizer()
    return random_model(tiny_config(vocab_size=tok.vocab_size, max_seq_len=512), seed=3), tok


def _fake_complete(monkeypatch, answers, seen):
    """Generator.complete answering each prompt from `answers` (prompt -> completion); records the params."""
    from codellama_recipe.evaluation.generation import Generator

    def complete(self, prompts, params, bos=True):
        seen.append(params)
        return [answers[p] for p in prompts]
    monkeypatch.setattr(Generator, "complete", complete)


def _oracles(lang, wrong=False):
    out = {}
    for row in _rows():
        try:
            p = parse_problem(row)
            t = translate(p, lang)
        except Untranslatable:
            continue
        out[t["prompt"]] = LANGUAGES[lang].oracle_completion(p, p.cases[1:] if wrong else None)
    return out


def test_multipl_e_run_oracle_scores_one_wrong_scores_zero(tiny_model, tmp_path, monkeypatch):
    if not FAST:
        pytest.skip("neither bash nor node is on the sandbox's PATH (make toolchains)")
    model, tok = tiny_model
    cfg = {"benchmarks": ["multipl_e"], "multipl_e": {"languages": FAST, "limit": 3},
           "sandbox": {"workers": 2}, "generation": {"max_new_tokens": 8}}
    seen = []
    for wrong in (False, True):
        answers = {k: v for lang in FAST for k, v in _oracles(lang, wrong).items()}
        _fake_complete(monkeypatch, answers, seen)
        results = evaluate(None, {**cfg, "out_dir": str(tmp_path / str(wrong))}, model=model, tokenizer=tok)
        m = results["metrics"]
        for lang in FAST:
            assert m[f"multipl_e/{lang}/pass@1"] == (0.0 if wrong else 1.0), (lang, results["details"])
            entry = results["details"]["multipl_e"]["languages"][lang]
            assert entry["judged"] == 3 and entry["translated"] == 149
            assert entry["untranslatable"]["the prompt defines N functions"] == 4
        assert m["multipl_e/mean/pass@1"] == (0.0 if wrong else 1.0)
        report = (tmp_path / str(wrong) / "report.md").read_text()
        assert "| language | translated | judged | pass@1 greedy |" in report
        assert f"| {FAST[0]} | 149 | 3 | {0 if wrong else 1} |" in report
    assert {p.stop for p in seen} == {tuple(LANGUAGES[lang].stop_tokens) for lang in FAST}
    assert {p.temperature for p in seen} == {0.0}

    # the random model itself, greedy and sampled: nothing passes, pass@k of every k <= sampled_n is reported
    monkeypatch.undo()
    results = evaluate(None, {**cfg, "out_dir": str(tmp_path / "model"),
                              "generation": {"max_new_tokens": 6, "ks": [1, 2]},
                              "multipl_e": {"languages": FAST[:1], "limit": 2, "sampled_n": 2}},
                       model=model, tokenizer=tok)
    m = results["metrics"]
    assert m[f"multipl_e/{FAST[0]}/pass@1"] == 0.0 and m[f"multipl_e/{FAST[0]}/sampled/pass@2"] == 0.0
    assert len((tmp_path / "model" / "samples" / f"multipl_e_{FAST[0]}_sampled.jsonl").read_text().splitlines()) == 4


def test_multipl_e_missing_toolchain_is_skipped_with_its_reason(tiny_model, tmp_path, monkeypatch):
    from codellama_recipe.evaluation import toolchains

    monkeypatch.setattr(toolchains, "SANDBOX_PATH", str(tmp_path))   # no compiler anywhere
    model, tok = tiny_model
    results = evaluate(None, {"benchmarks": ["multipl_e"], "out_dir": str(tmp_path / "eval"),
                              "multipl_e": {"languages": ["cpp", "sh"]}}, model=model, tokenizer=tok)
    assert results["skipped"] == {"multipl_e/cpp": "toolchain missing: g++ not on the sandbox's PATH (make toolchains)",
                                  "multipl_e/sh": "toolchain missing: bash not on the sandbox's PATH (make toolchains)"}
    assert not [k for k in results["metrics"] if k.startswith("multipl_e/")]
    assert "| cpp | – | – | skipped |" in (tmp_path / "eval" / "report.md").read_text()


def test_multipl_e_path_reads_published_rows(tiny_model, tmp_path, monkeypatch):
    from codellama_recipe.core.errors import InputFileError
    from codellama_recipe.evaluation.multipl_e import read_multipl_e_rows

    rows = read_multipl_e_rows(str(FIXTURE))
    assert list(rows) == ["sh"] and [r["name"] for r in rows["sh"]] == ["Demo_1_add_two", "Demo_2_reverse_words"]
    # the same rows as the published dataset's parquet layout (a folder per language)
    import pyarrow
    import pyarrow.parquet

    (tmp_path / "hf" / "humaneval-sh").mkdir(parents=True)
    table = pyarrow.Table.from_pylist([json.loads(line) for line in FIXTURE.read_text().splitlines()])
    pyarrow.parquet.write_table(table, tmp_path / "hf" / "humaneval-sh" / "test-00000-of-00001.parquet")
    assert read_multipl_e_rows(str(tmp_path / "hf")) == rows
    with pytest.raises(InputFileError, match="Demo_1_add_two is also in"):   # two variants of one language
        read_multipl_e_rows([str(tmp_path / "hf"), str(FIXTURE)])
    if TOOLCHAINS["sh"].missing():
        pytest.skip("bash is not on the sandbox's PATH")
    right = {rows["sh"][0]["prompt"]: '    echo $(( $1 + $2 ))', rows["sh"][1]["prompt"]:
             '    local out=""\n    for w in $1; do out="$w${out:+ $out}"; done\n    echo "$out"'}
    wrong = {rows["sh"][0]["prompt"]: '    echo $(( $1 - $2 ))', rows["sh"][1]["prompt"]: '    echo "$1"'}
    model, tok = tiny_model
    for answers, expected in ((right, 1.0), (wrong, 0.0)):
        _fake_complete(monkeypatch, answers, [])
        cfg = {"benchmarks": ["multipl_e"], "out_dir": str(tmp_path / str(expected)), "report": {"enabled": False},
               "multipl_e": {"languages": ["sh"], "path": str(FIXTURE.parent)}, "sandbox": {"workers": 2}}
        results = evaluate(None, cfg, model=model, tokenizer=tok)
        assert results["metrics"]["multipl_e/sh/pass@1"] == expected
        assert results["details"]["multipl_e"]["languages"]["sh"]["judged"] == 2
    # a language the files lack is skipped with the reason; a row without a field is refused naming file and line
    cfg["multipl_e"]["languages"] = ["php"]
    if not TOOLCHAINS["php"].missing():
        skipped = evaluate(None, cfg, model=model, tokenizer=tok)["skipped"]
        assert skipped == {"multipl_e/php": "no php rows in multipl_e.path"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(FIXTURE.read_text().splitlines()[0] + "\n" + '{"name": "x", "language": "sh", "prompt": ""}\n')
    with pytest.raises(InputFileError, match=r"bad.jsonl:2: no \['tests', 'stop_tokens'\]"):
        read_multipl_e_rows(str(bad))


@pytest.mark.parametrize("override, key", [
    ("multipl_e.languages=[cpp,cobol]", "multipl_e.languages=['cpp', 'cobol']"),
    ("multipl_e.run_s.fortran=3", "multipl_e.run_s.fortran"),
    ("multipl_e.run_s.java=0", "multipl_e.run_s.java=0"),
    ("multipl_e.path=/nonexistent/multipl_e", "multipl_e.path='/nonexistent/multipl_e'"),
    ("multipl_e.sampled_n=-1", "multipl_e.sampled_n=-1"),
])
def test_multipl_e_config_mistakes_are_one_line_with_exit_2(override, key, tmp_path, capsys):
    from codellama_recipe.core.cli import run_hydra_command
    from codellama_recipe.evaluation.cli import check, run

    code = run_hydra_command("codellama-eval", "eval", run, check=check,
                             argv=["benchmarks=[multipl_e]", override, f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert key in err[0], err[0]
    assert not (tmp_path / "out").exists()


def test_multipl_e_samples_file_is_scored_per_language(tmp_path, capsys):
    from codellama_recipe.core.cli import run_hydra_command
    from codellama_recipe.evaluation.cli import check, run

    if TOOLCHAINS["sh"].missing():
        pytest.skip("bash is not on the sandbox's PATH")
    right, wrong = _oracles("sh"), _oracles("sh", wrong=True)
    names = {translate(parse_problem(r), "sh")["prompt"]: translate(parse_problem(r), "sh")["name"]
             for r in _rows()[:3]}
    rows = [{"task_id": f"sh/{name}", "completion": (right if i < 2 else wrong)[prompt]}
            for i, (prompt, name) in enumerate(names.items())]
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [f"samples={samples}", "benchmark=multipl_e", f"out_dir={tmp_path / 'out'}", "sandbox.workers=2"]
    assert run_hydra_command("codellama-eval", "eval", run, check=check, argv=argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert "multipl_e sh/pass@1 = 0.6667" in out, out
    samples.write_text('{"task_id": "sh/HumanEval_999_nope", "completion": ""}\n')
    assert run_hydra_command("codellama-eval", "eval", run, check=check, argv=argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task_id 'sh/HumanEval_999_nope' is not a multipl_e task" in err[0], err


def test_pipeline_summary_and_preset_carry_multipl_e():
    from codellama_recipe.evaluation.run import load_config, validate_config
    from codellama_recipe.stages.pipeline import format_eval_summary

    cfg = load_config(None, preset="multilingual")
    validate_config(cfg)
    assert list(cfg.benchmarks) == ["humaneval", "multipl_e"] and list(cfg.multipl_e.languages) == list(PAPER)
    rows = [{"stage": "code", "eval": {"metrics": {"multipl_e/sh/pass@1": 0.25, "multipl_e/mean/pass@1": 0.25,
                                                   "multipl_e/sh/sampled/pass@1": 0.5}}},
            {"stage": "python", "eval": {"metrics": {"humaneval/pass@1": 0.0}}}]
    table = format_eval_summary(rows)
    assert "| MultiPL-E sh pass@1 | 0.250 | - |" in table
    assert table[-1] == "| MultiPL-E pass@1, mean over languages | 0.250 | - |"


# ------------------------------------------------------------------ verdict parity with MultiPL-E's container rules
def _multipl_e_rule(lang: str, program: str, folder) -> str:
    """MultiPL-E's evaluation container, as its rules read (written here, not its code): the program is compiled
    (a compile error fails it), run with a time limit (a timeout fails it), and passes when it exits 0."""
    import os
    import signal
    import subprocess

    source = {"cpp": "program.cpp", "sh": "program.sh", "js": "program.js", "php": "program.php"}[lang]
    (folder / source).write_text(program)
    if lang == "cpp":
        if subprocess.run(["g++", "-std=c++17", "-o", "a.out", source], cwd=folder, capture_output=True).returncode:
            return "failed"
    command = {"cpp": ["./a.out"], "sh": ["bash", source], "js": ["node", source], "php": ["php", source]}[lang]
    proc = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return "passed" if proc.wait(timeout=2) == 0 else "failed"
    except subprocess.TimeoutExpired:
        return "failed"
    finally:   # the whole group: Bash runs the endless candidate in a $(…) subshell that outlives its parent
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


PARITY_LANGS = [lang for lang in ("sh", "js", "cpp", "php") if not TOOLCHAINS[lang].missing()]
BROKEN = {"sh": "    if then fi\n", "js": "  return ((;\n}\n", "cpp": "    return 1 +;\n",
          "php": "    return 1 +;\n}\n"}


@pytest.mark.skipif(not PARITY_LANGS, reason="none of bash, node, g++, php installed")
def test_verdicts_agree_with_multipl_e_rules_on_a_mixed_samples_file(tmp_path):
    """Per language: right, wrong, does not compile / parse, endless loop, exit 0 before the tests. Every verdict
    agrees with MultiPL-E's rules but one, by design: an exit 0 before any test ran passes there (its verdict is
    the exit code) and fails here (the tests must finish)."""
    p = parse_problem(_rows()[0])
    sandbox = Sandbox({"workers": 2})
    for lang in PARITY_LANGS:
        t = translate(p, lang)
        samples = {"right": LANGUAGES[lang].oracle_completion(p),
                   "wrong": LANGUAGES[lang].oracle_completion(p, p.cases[1:]),
                   "broken": BROKEN[lang], "loop": LOOP[lang], "exit_early": EXIT_EARLY[lang]}
        toolchain = TOOLCHAINS[lang].with_limits(run_s=3)
        ours = sandbox.judge_many([(t["prompt"] + c, with_sentinel(lang, t["tests"]), toolchain)
                                   for c in samples.values()])
        theirs = []
        for i, c in enumerate(samples.values()):
            (tmp_path / f"{lang}{i}").mkdir()
            theirs.append(_multipl_e_rule(lang, t["prompt"] + c + t["tests"], tmp_path / f"{lang}{i}"))
        ours = {k: ("failed" if r.status == "timed_out" else r.status) for k, r in zip(samples, ours)}
        theirs = dict(zip(samples, theirs))
        # Bash calls the candidate in $(…): its `exit 0` ends only that subshell, and the test fails either way
        exit_early_there = "failed" if lang == "sh" else "passed"
        assert theirs == {"right": "passed", "wrong": "failed", "broken": "failed", "loop": "failed",
                          "exit_early": exit_early_there}, (lang, theirs)
        assert ours == {**theirs, "exit_early": "failed"}, (lang, ours)


# ------------------------------------------------------------------ canonical solutions, translated by hand
# HumanEval/0 (has_close_elements) and HumanEval/2 (truncate_number), written in each language as a person would.
CANONICAL = {
    0: {
        "cpp": "    for (size_t i = 0; i < numbers.size(); i++)\n        for (size_t j = 0; j < numbers.size(); j++) {\n"
               "            double d = numbers[i] > numbers[j] ? numbers[i] - numbers[j] : numbers[j] - numbers[i];\n"
               "            if (i != j && d < threshold) return true;\n        }\n    return false;\n",
        "java": "        for (int i = 0; i < numbers.size(); i++)\n            for (int j = 0; j < numbers.size(); j++)\n"
                "                if (i != j && Math.abs(numbers.get(i) - numbers.get(j)) < threshold) return true;\n"
                "        return false;\n",
        "ts": "  for (let i = 0; i < numbers.length; i++)\n    for (let j = 0; j < numbers.length; j++)\n"
              "      if (i !== j && Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}\n",
        "js": "  for (let i = 0; i < numbers.length; i++)\n    for (let j = 0; j < numbers.length; j++)\n"
              "      if (i !== j && Math.abs(numbers[i] - numbers[j]) < threshold) return true;\n  return false;\n}\n",
        "sh": "    local -a xs=($1)\n    local i j\n    for ((i = 0; i < ${#xs[@]}; i++)); do\n"
              "        for ((j = 0; j < ${#xs[@]}; j++)); do\n"
              "            if ((i != j)) && awk -v a=\"${xs[i]}\" -v b=\"${xs[j]}\" -v t=\"$2\" "
              "'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < t) }'; then\n"
              "                echo true\n                return\n            fi\n        done\n    done\n    echo false\n",
        "php": "    foreach ($numbers as $i => $a)\n        foreach ($numbers as $j => $b)\n"
               "            if ($i != $j && abs($a - $b) < $threshold) return true;\n    return false;\n}\n",
        "cs": "        for (int i = 0; i < numbers.Count; i++)\n            for (int j = 0; j < numbers.Count; j++)\n"
              "                if (i != j && Math.Abs(numbers[i] - numbers[j]) < threshold) return true;\n"
              "        return false;\n",
    },
    2: {
        "cpp": "    return number - (long long)number;\n",
        "java": "        return number % 1.0;\n",
        "ts": "  return number % 1.0;\n}\n",
        "js": "  return number % 1.0;\n}\n",
        "sh": "    awk -v n=\"$1\" 'BEGIN { printf \"%g\\n\", n - int(n) }'\n",
        "php": "    return fmod($number, 1.0);\n}\n",
        "cs": "        return number % 1.0;\n",
    },
}
# A file written outside the program's own folder, before the right answer: it must not survive the run.
WRITE_OUTSIDE = {
    "cpp": '    { FILE* f = fopen("{path}", "w"); if (f) {{ fputs("x", f); fclose(f); }} }\n',
    "java": '        try {{ new java.io.FileWriter("{path}").close(); }} catch (Exception e) {{}}\n',
    "ts": '  try {{ require("fs").writeFileSync("{path}", "x"); }} catch (e) {{}}\n',
    "js": '  try {{ require("fs").writeFileSync("{path}", "x"); }} catch (e) {{}}\n',
    "sh": "    echo x > {path} 2>/dev/null\n",
    "php": '    @file_put_contents("{path}", "x");\n',
    "cs": '        try {{ System.IO.File.WriteAllText("{path}", "x"); }} catch (Exception) {{}}\n',
}


@pytest.mark.parametrize("lang", ["sh", "js", "cpp", "java", "ts", "php", "cs"])
def test_canonical_solutions_translated_by_hand_pass_and_leave_nothing_outside(lang, tmp_path):
    import os

    if TOOLCHAINS[lang].missing():
        pytest.skip(f"{lang}: toolchain missing {TOOLCHAINS[lang].missing()} (make toolchains)")
    marker = f"/tmp/multipl-e-litter-{lang}-{os.getpid()}"
    jobs = []
    for index, solutions in CANONICAL.items():
        t = translate(parse_problem(_rows()[index]), lang)
        tests = with_sentinel(lang, t["tests"])
        jobs.append((t["prompt"] + solutions[lang], tests, TOOLCHAINS[lang]))
        if index == 0:
            writes = WRITE_OUTSIDE[lang].replace("{path}", marker).replace("{{", "{").replace("}}", "}")
            jobs.append((t["prompt"] + writes + solutions[lang], tests, TOOLCHAINS[lang]))
    results = Sandbox({"workers": 2}).judge_many(jobs)
    assert [r.status for r in results] == ["passed"] * 3, [(r.status, r.message) for r in results]
    if os.geteuid() == 0:   # the private filesystem of the sandbox needs root (see test_eval_sandbox.py)
        assert not os.path.exists(marker)
