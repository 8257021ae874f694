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
from codellama_recipe.data.sources import BadInputError  # noqa: E402
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
