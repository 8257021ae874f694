"""MultiPL-E translation and judging: oracle completions pass, wrong ones, an early exit and an infinite loop fail
(Bash and JavaScript here: fast; bench/multipl_e_suite.py runs every language over the whole suite)."""
import gzip
import json

import pytest

from codellama_recipe.evaluation.humaneval import default_humaneval_path
from codellama_recipe.evaluation.multipl_e_parse import parse_problem
from codellama_recipe.evaluation.multipl_e_translate import LANGUAGES, translate
from codellama_recipe.evaluation.sandbox import Sandbox
from codellama_recipe.evaluation.toolchains import TOOLCHAINS, with_sentinel


def _rows():
    with gzip.open(default_humaneval_path(), "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("lang", ["sh", "js"])
def test_oracle_passes_wrong_fails(lang):
    if TOOLCHAINS[lang].missing():
        pytest.skip(f"{lang}: toolchain missing {TOOLCHAINS[lang].missing()}")
    p = parse_problem(_rows()[0])
    t = translate(p, lang)
    tests = with_sentinel(lang, t["tests"])
    oracle = LANGUAGES[lang].oracle_completion(p)
    wrong = LANGUAGES[lang].oracle_completion(p, p.cases[1:])
    exit_early = {"sh": "    exit 0\n", "js": "  process.exit(0);\n}\n"}[lang]
    loop = {"sh": "    while true; do :; done\n", "js": "  while (true) {}\n}\n"}[lang]
    sandbox = Sandbox({"workers": 2})
    tc = TOOLCHAINS[lang].with_limits(run_s=3)
    results = sandbox.judge_many([(t["prompt"] + c, tests, tc) for c in (oracle, wrong, exit_early, loop)])
    assert [r.status for r in results][:3] == ["passed", "failed", "failed"]
    assert results[3].status in ("timed_out", "failed")
