"""Bad input is skipped and counted per reason (strict mode: raises naming file and line); bad
configuration fails at start-up with one clear message."""
import gzip
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, write_jsonl  # noqa: E402

from codellama_recipe.data.pipeline import build_train_loader, build_val_loaders  # noqa: E402
from codellama_recipe.data.record_readers import BadInputError  # noqa: E402
from codellama_recipe.core.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.timeout(60)
MAX_CHARS = 100

JSONL_LINES = [
    b'{"text": "good one"}',                     # 1 ok
    b'{"text": "unterminated',                   # 2 malformed_json
    b'[1, 2, 3]',                                # 3 malformed_json (not an object)
    b'{"content": "no text field"}',             # 4 missing_field
    b'{"text": 42}',                             # 5 missing_field (not a string)
    b'{"text": "caf\xe9"}',                      # 6 invalid_utf8
    b'{"text": ""}',                             # 7 empty
    b'{"text": "   \\n  "}',                     # 8 empty (whitespace only)
    b'',                                         # 9 empty (blank line)
    b'{"text": "' + b"x" * 200 + b'"}',          # 10 too_long
    b'{"text": "a\\u0000b"}',                    # 11 binary (NUL)
    b'{"text": "good two"}',                     # 12 ok
]
CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},   # ok
    {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},   # bad_chat
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]},                      # bad_chat
    {"messages": "not a list"},                                                                    # missing_field
    {"messages": [{"role": "user", "content": "unanswered"}]},                                     # bad_chat
]


def make_fixture(root: pathlib.Path) -> dict:
    (root / "code").mkdir(parents=True)
    (root / "code" / "bad.jsonl").write_bytes(b"\n".join(JSONL_LINES) + b"\n")
    prose = root / "prose"
    prose.mkdir()
    (prose / "ok.txt").write_text("a fine paragraph")
    (prose / "bin.dat").write_bytes(b"ELF\x00\x01\x02 binary")        # binary
    (prose / "latin1.txt").write_bytes("déjà vu".encode("latin-1"))   # invalid_utf8
    (prose / "blank.txt").write_text(" \n\n")                         # empty
    (prose / "big.txt").write_text("y" * (4 * MAX_CHARS + 1))        # too_long (not even read)
    (root / "nl").mkdir()
    data = gzip.compress(b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(50)))
    (root / "nl" / "broken.jsonl.gz").write_bytes(data[:-12])       # truncated: unreadable_file
    write_jsonl(root / "nl" / "fine.jsonl", ["fine"])
    (root / "chat").mkdir()
    (root / "chat" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS))
    return {
        "code": {"weight": 1, "paths": [str(root / "code" / "*.jsonl")]},
        "prose": {"weight": 1, "paths": [str(root / "prose" / "*")]},
        "nl": {"weight": 1, "paths": [str(root / "nl" / "*")]},
        "chat": {"weight": 1, "format": "chat", "paths": [str(root / "chat" / "*.jsonl")]},
    }


EXPECTED = {  # per source: skipped counts by reason, and the documents that come through
    "code": ({"malformed_json": 2, "missing_field": 2, "invalid_utf8": 1, "empty": 3, "too_long": 1, "binary": 1},
             ["good one", "good two"]),
    "prose": ({"binary": 1, "invalid_utf8": 1, "empty": 1, "too_long": 1}, ["a fine paragraph"]),
    "nl": ({"unreadable_file": 1}, None),
    "chat": ({"bad_chat": 3, "missing_field": 1}, None),
}


def cfg_for(sources, **over):
    return {"seq_len": 32, "seed": 0, "num_workers": 0, "max_doc_chars": MAX_CHARS, "max_epochs": 1,
            "fim": {"enabled": False}, "sources": sources, **over}


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_each_kind_of_bad_record_is_counted(tmp_path, source):
    sources = make_fixture(tmp_path)
    tok = ByteTokenizer()
    loader = build_train_loader(cfg_for({source: sources[source]}), tok, 0, 1, 1)
    batches = list(loader)
    m = loader.metrics()
    want, good = EXPECTED[source]
    got = {k.split("/")[-1]: int(v) for k, v in m.items() if k.startswith("data/skipped/") and v}
    assert got == want
    if good is not None:
        stream = [t for b in batches for t in b["input_ids"][b["source_ids"] >= 0].tolist()]
        expect = [t for g in good for t in tok.encode(g, bos=True, eos=True)]
        assert sorted(stream) == sorted(expect)  # exactly the good documents came through
    if source == "nl":
        assert m["data/tokens/nl"] > 0  # the good file next to the broken one is read


def test_strict_mode_names_file_and_line(tmp_path):
    sources = make_fixture(tmp_path)
    loader = build_train_loader(cfg_for({"code": sources["code"]}, strict=True), ByteTokenizer(), 0, 1, 1)
    with pytest.raises(BadInputError, match=r"malformed_json.*bad\.jsonl:2\b"):
        list(loader)
    loader = build_train_loader(cfg_for({"prose": sources["prose"]}, strict=True, seed=1), ByteTokenizer(), 0, 1, 1)
    with pytest.raises(BadInputError, match=r"prose.*\.(dat|txt)"):
        list(loader)


def test_a_source_without_any_valid_document_fails_clearly(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"oops": 1}\n{"text": ""}\n')
    cfg = cfg_for({"code": {"weight": 1, "paths": [str(tmp_path / "bad.jsonl")], "text_field": "oops"}})
    with pytest.raises(ValueError, match="no valid document"):
        list(build_train_loader(cfg, ByteTokenizer(), 0, 1, 1))


def test_configuration_errors_fail_at_start_up(tmp_path):
    sources = make_fixture(tmp_path)
    tok = ByteTokenizer()

    def build(**source_over):
        return build_train_loader(cfg_for({"code": {**sources["code"], **source_over}}), tok, 0, 1, 1)
    with pytest.raises(ConfigError, match=r"data\.sources\.code\.paths=.*nothing-here.*matches no file"):
        build(paths=[str(tmp_path / "nothing-here" / "*.jsonl")])
    with pytest.raises(ConfigError, match=r"data\.sources\.code\.text_field='body'.*no such field"):
        build(text_field="body")
    with pytest.raises(ConfigError, match=r"data\.sources\.code\.filters='lang'"):
        build(filters=[{"field": "lang", "values": ["en"]}])
    with pytest.raises(ConfigError, match=r"pathz.*unknown key"):
        build(pathz=["x"])
    with pytest.raises(ConfigError, match="exactly one of"):
        build(hub={"path": "bigcode/the-stack"})
    with pytest.raises(ConfigError, match=r"data\.sources\.code\.weight"):
        build(weight=-1)
    with pytest.raises(ConfigError, match=r"seqlen.*unknown key"):
        build_train_loader({**cfg_for({"code": sources["code"]}), "seqlen": 3}, tok, 0, 1, 1)
    with pytest.raises(ConfigError, match=r"val_paths=.*matches no file"):
        build_val_loaders(cfg_for({"code": {**sources["code"], "val_paths": [str(tmp_path / "none*.jsonl")]}}),
                          tok, 0, 1, 1, 1)


# ------------------------------------------------------------------------------------------ poison records
POISON_LINES = [
    b'{"text": "before"}',
    b'{"text": "\\ud800 lone surrogate"}',               # invalid_text (crashed SentencePiece)
    b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b'}',  # malformed_json (RecursionError in json)
    b'{"text": "' + b"z" * 300_000 + b'"}',             # too_long: a line longer than the line limit
    b'{"text": "after"}',
]


class PickyTokenizer(ByteTokenizer):
    """A stand-in tokenizer that fails on one text, as a tokenizer bug or an unexpected input would."""

    def encode(self, s, bos=False, eos=False):
        if "tokenizer bomb" in s:
            raise RuntimeError("the tokenizer gave up")
        return super().encode(s, bos, eos)


def _skipped(loader):
    return {k.split("/")[-1]: int(v) for k, v in loader.metrics().items() if k.startswith("data/skipped/") and v}


def test_poison_records_are_skipped_and_counted_never_a_crash(tmp_path):
    lines = POISON_LINES[:-1] + [b'{"text": "tokenizer bomb"}', POISON_LINES[-1]]
    (tmp_path / "poison.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "poison.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    for name in ("poison.jsonl", "poison.jsonl.gz"):
        tok = PickyTokenizer()
        loader = build_train_loader(cfg_for({"code": {"weight": 1, "paths": [str(tmp_path / name)]}},
                                            max_doc_chars=40_000), tok, 0, 1, 1)
        batches = list(loader)
        assert _skipped(loader) == {"invalid_text": 1, "malformed_json": 1, "too_long": 1, "tokenize_error": 1}, name
        stream = [t for b in batches for t in b["input_ids"][b["source_ids"] >= 0].tolist()]
        assert sorted(stream) == sorted(tok.encode("before", True, True) + tok.encode("after", True, True))


@pytest.mark.parametrize("line,reason", [(2, "invalid_text"), (3, "malformed_json"), (4, "too_long"),
                                         (5, "tokenize_error")])
def test_strict_mode_stops_at_each_poison_record_with_file_and_line(tmp_path, line, reason):
    lines = POISON_LINES[:-1] + [b'{"text": "tokenizer bomb"}', POISON_LINES[-1]]
    keep = [lines[0], lines[line - 1]]
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(keep) + b"\n")
    loader = build_train_loader(cfg_for({"code": {"weight": 1, "paths": [str(tmp_path / "p.jsonl")]}},
                                        max_doc_chars=40_000, strict=True), PickyTokenizer(), 0, 1, 1)
    with pytest.raises(BadInputError) as e:
        list(loader)
    assert f"({reason})" in str(e.value) and "p.jsonl:2" in str(e.value) and "\n" not in str(e.value)


READ_HUGE_LINE = """
import resource, sys
from codellama_recipe.data.pipeline import build_train_loader
sys.path.insert(0, sys.argv[2])
from helpers_data import ByteTokenizer
cfg = {"seq_len": 32, "seed": 0, "num_workers": 0, "max_doc_chars": 1000, "max_epochs": 1, "fim": {"enabled": False},
       "sources": {"code": {"weight": 1, "paths": [sys.argv[1]]}}}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
loader = build_train_loader(cfg, ByteTokenizer(), 0, 1, 1)      # start-up checks peek at the file too
list(loader)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(int(dict(loader.metrics())["data/skipped/too_long"]), after - before)
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["huge.jsonl", "huge.jsonl.gz"])
def test_a_300_mb_line_is_skipped_while_streaming_with_bounded_memory(tmp_path, name):
    import subprocess

    line_mb = 300
    path = tmp_path / name
    opener = gzip.open(path, "wb", compresslevel=1) if name.endswith(".gz") else open(path, "wb")
    with opener as f:
        f.write(b'{"text": "ok"}\n{"text": "')
        chunk = b"w" * (1 << 20)
        for _ in range(line_mb):
            f.write(chunk)
        f.write(b'"}\n{"text": "fine"}\n')
    done = subprocess.run([sys.executable, "-c", READ_HUGE_LINE, str(path), str(pathlib.Path(__file__).parent)],
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-2000:]
    skipped, growth_mb = map(int, done.stdout.split())
    assert skipped == 1
    assert growth_mb < 40, f"peak RSS grew by {growth_mb} MB while skipping a {line_mb} MB line"


def test_a_corrupt_parquet_file_is_skipped_wherever_it_sorts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("b_good.parquet", "c_good.parquet"):
        pq.write_table(pa.table({"text": [f"{name} row {i}" for i in range(3)]}), tmp_path / name)
    (tmp_path / "a_corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    tok = ByteTokenizer()
    loader = build_train_loader(cfg_for({"code": {"weight": 1, "paths": [str(tmp_path / "*.parquet")]}},
                                        max_doc_chars=500), tok, 0, 1, 1)
    batches = list(loader)
    assert _skipped(loader) == {"unreadable_file": 1}
    stream = [t for b in batches for t in b["input_ids"][b["source_ids"] >= 0].tolist()]
    expected = [t for name in ("b_good.parquet", "c_good.parquet") for i in range(3)
                for t in tok.encode(f"{name} row {i}", True, True)]
    assert sorted(stream) == sorted(expected)
