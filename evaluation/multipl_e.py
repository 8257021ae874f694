"""The `multipl_e` benchmark: HumanEval in other languages, the way MultiPL-E (Cassano et al. 2022) and Code Llama's
Table 4 evaluate it: the prompt is the translated signature with the docstring as comments, generation stops at the
language's stop tokens, and `prompt + completion + "\\n" + tests` is compiled once and run in the sandbox.

Problems come from our translator (multipl_e_translate.py, from the HumanEval file of `humaneval.path`) or, with
`multipl_e.path`, from files in MultiPL-E's published format: rows {name, language, prompt, doctests, original,
prompt_terminology, tests, stop_tokens} as jsonl (its repository's prompt files) or parquet (its dataset's
`humaneval-<lang>/*.parquet`); only name, language, prompt, tests and stop_tokens are used.

A language whose toolchain is missing is skipped with the reason, never silently; problems the translator cannot
translate are counted per reason.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path

from codellama_recipe.core.errors import ConfigError, InputError, InputFileError
from codellama_recipe.core.jsonl import read_jsonl
from codellama_recipe.evaluation.multipl_e_parse import Untranslatable, parse_problem
from codellama_recipe.evaluation.multipl_e_translate import LANGUAGES, translate
from codellama_recipe.evaluation.problems import Problem, evenly_spaced
from codellama_recipe.evaluation.toolchains import TOOLCHAINS, with_sentinel

PAPER_LANGUAGES = ("cpp", "java", "php", "cs", "ts", "sh")   # Code Llama, Table 4
ROW_FIELDS = ("name", "language", "prompt", "tests", "stop_tokens")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclasses.dataclass
class LanguageSet:
    """One language's problems, or why it has none."""
    language: str
    problems: list[Problem]
    available: int = 0                       # problems translated / read, before the limit
    untranslatable: dict[str, int] = dataclasses.field(default_factory=dict)   # reason -> count
    skipped: str | None = None


def check_multipl_e_config(me) -> None:
    """The values `multipl_e.*` may not take (one ConfigError naming the key)."""
    allowed = sorted(LANGUAGES)
    if not me.languages:
        raise ConfigError("multipl_e.languages", list(me.languages), f"at least one of {allowed}")
    bad = [x for x in me.languages if x not in LANGUAGES]
    if bad or len(set(me.languages)) != len(me.languages):
        raise ConfigError("multipl_e.languages", list(me.languages), f"distinct, each one of {allowed}")
    if me.limit is not None and me.limit < 1:
        raise ConfigError("multipl_e.limit", me.limit, "null (every problem) or >= 1")
    if me.sampled_n < 0:
        raise ConfigError("multipl_e.sampled_n", me.sampled_n, "0 (greedy only) or the samples per problem")
    if me.sampled_n and me.temperature <= 0:
        raise ConfigError("multipl_e.temperature", me.temperature, "must be > 0 when sampled_n > 0")
    if not 0 < me.top_p <= 1:
        raise ConfigError("multipl_e.top_p", me.top_p, "must be in (0, 1]")
    for key in ("compile_s", "run_s", "memory_mb"):
        for lang, value in (getattr(me, key) or {}).items():
            if lang not in LANGUAGES:
                raise ConfigError(f"multipl_e.{key}", dict(getattr(me, key)), f"keys each one of {allowed}")
            if value is not None and value <= 0:
                raise ConfigError(f"multipl_e.{key}.{lang}", value, "must be > 0")
    for path in _paths(me.path):
        if not Path(path).exists():
            raise InputError("multipl_e.path", me.path, f"{path} does not exist (a jsonl file or a folder of them)")


def _paths(path) -> list[str]:
    if path is None:
        return []
    return [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]


def multipl_e_files(path) -> list[Path]:
    """The files that `multipl_e.path` names: files as given, and every FILE_SUFFIXES file under a folder."""
    files = []
    for item in map(Path, _paths(path)):
        if item.is_dir():
            files += sorted(f for f in item.rglob("*") if f.is_file() and f.name.endswith(FILE_SUFFIXES))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"multipl_e.path: {item} does not exist")
    if not files:
        raise FileNotFoundError(f"multipl_e.path: no {'/'.join(FILE_SUFFIXES)} file in {path}")
    return files


def read_multipl_e_rows(path) -> dict[str, list[dict]]:
    """{language: [rows]} from MultiPL-E's published files; a row without a needed field is refused (file:line)."""
    by_language: dict[str, list[dict]] = collections.defaultdict(list)
    seen: dict[tuple[str, str], Path] = {}
    for file in multipl_e_files(path):
        try:
            if file.suffix == ".parquet":
                import pyarrow.parquet

                rows = pyarrow.parquet.read_table(file).to_pylist()
            else:
                rows = read_jsonl(file)
        except (ValueError, OSError) as e:
            raise InputFileError(file, None, str(e).split(": ", 1)[-1]) from None
        for line, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise InputFileError(file, line, f"a JSON {type(row).__name__}, not an object")
            missing = [k for k in ROW_FIELDS if k not in row]
            if missing:
                raise InputFileError(file, line, f"no {missing} (MultiPL-E rows have {list(ROW_FIELDS)})")
            if not isinstance(row["stop_tokens"], list) or not all(isinstance(s, str) for s in row["stop_tokens"]):
                raise InputFileError(file, line, "stop_tokens is not a list of strings")
            key = (row["language"], row["name"])
            if key in seen:   # e.g. a folder holding several of the dataset's variants (-keep, -remove, ...)
                raise InputFileError(file, line, f"{row['language']} problem {row['name']} is also in {seen[key]}; "
                                                 "point multipl_e.path at one variant per language")
            seen[key] = file
            by_language[row["language"]].append(row)
    return by_language


def reason_kind(reason: str) -> str:
    """A reason without its particulars (values, names, counts), so that reasons can be counted."""
    text = reason.split(": ", 1)[0].split(" (", 1)[0]
    return re.sub(r"\d+", "N", text).strip()


def _problem(row: dict, toolchain) -> Problem:
    language = row["language"]
    return Problem(task_id=f"{language}/{row['name']}", prompt=row["prompt"], head=row["prompt"], tail="",
                   tests=with_sentinel(language, row["tests"]), reference="", stop=tuple(row["stop_tokens"]),
                   toolchain=toolchain, language=language)


def toolchain_for(language: str, me):
    return TOOLCHAINS[language].with_limits(compile_s=(me.compile_s or {}).get(language),
                                            run_s=(me.run_s or {}).get(language),
                                            memory_mb=(me.memory_mb or {}).get(language))


def load_multipl_e(me, humaneval_rows: list[dict] | None, limit: int | None,
                   require_toolchains: bool = True) -> list[LanguageSet]:
    """Per configured language: its problems (translated from humaneval_rows, or read from me.path), or why not.
    require_toolchains=False lists a language's problems even when it cannot be judged here."""
    published = read_multipl_e_rows(me.path) if me.path is not None else None
    parsed = []
    if published is None:
        for row in humaneval_rows:
            try:
                parsed.append((row, parse_problem(row)))
            except Untranslatable as e:
                parsed.append((row, e))
    out = []
    for language in me.languages:
        missing = TOOLCHAINS[language].missing()
        if missing and require_toolchains:
            out.append(LanguageSet(language, [], skipped=f"toolchain missing: {', '.join(missing)} not on the "
                                                         "sandbox's PATH (make toolchains)"))
            continue
        toolchain = toolchain_for(language, me)
        reasons = collections.Counter()
        if published is not None:
            rows = published.get(language, [])
            if not rows:
                out.append(LanguageSet(language, [], skipped=f"no {language} rows in multipl_e.path"))
                continue
        else:
            rows = []
            for _, p in parsed:
                try:
                    if isinstance(p, Untranslatable):
                        raise p
                    rows.append(translate(p, language))
                except Untranslatable as e:
                    reasons[reason_kind(str(e))] += 1
        problems = [_problem(r, toolchain) for r in rows]
        out.append(LanguageSet(language, evenly_spaced(problems, limit), available=len(problems),
                               untranslatable=dict(reasons.most_common())))
    return out
