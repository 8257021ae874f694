"""Embedded corpus: determinism, dedup, split by file, well-formed instruct rows, racing builders."""
import ast
import dataclasses
import hashlib
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from codellama_recipe.data.embedded.corpus import SOURCES, CorpusConfig, _read_text, Skip, build_corpus, shard_files
from codellama_recipe.data.embedded.cache import TOKENIZER_VERSION, corpus_train_files, ensure_embedded
from codellama_recipe.data.embedded.instruct_mining import USER_TEMPLATE, mine_pairs, module_docstrings
from codellama_recipe.data.tokenizer import Tokenizer

pytestmark = pytest.mark.timeout(300)

SMALL = CorpusConfig(source_bytes={s: 250_000 for s in SOURCES}, train_shards=4, val_shards=2,
                     val_per_mille=50)


def _rows(corpus_dir, source, split):
    for shard in shard_files(corpus_dir, source, split):
        with shard.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


def _label(row):
    return row.get("path") or row["source_path"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "small"
    manifest = build_corpus(out, SMALL, log=lambda *a: None)
    return out, manifest


def test_build_is_deterministic(small_corpus, tmp_path):
    out, manifest = small_corpus
    again = build_corpus(tmp_path / "again", SMALL, log=lambda *a: None)
    assert again["fingerprint"] == manifest["fingerprint"]
    assert again["sources"] == manifest["sources"]
    for source in SOURCES:  # the manifest's hashes are the files' hashes
        for split in ("train", "val"):
            for sh in manifest["sources"][source]["shards"][split]:
                data = (out / source / sh["file"]).read_bytes()
                assert hashlib.sha256(data).hexdigest() == sh["sha256"]
                assert data == (tmp_path / "again" / source / sh["file"]).read_bytes()


def test_every_source_non_empty_sharded_and_capped(small_corpus):
    out, manifest = small_corpus
    assert set(manifest["sources"]) == set(SOURCES)
    for source, m in manifest["sources"].items():
        assert m["docs"]["train"] > 0 and m["docs"]["val"] > 0, source
        assert len(m["shards"]["train"]) == 4, source
        total = m["bytes"]["train"] + m["bytes"]["val"]
        # The cap is checked before each file, so a source overshoots by at most one file.
        assert 0 < total <= 250_000 + SMALL.max_file_bytes, source
        assert m["description"]
    code_kinds = manifest["sources"]["code"]["kinds"]
    assert {"c_cpp", "python"} <= set(code_kinds)  # several languages even at a small cap


def test_no_duplicate_texts_and_splits_disjoint_by_file(small_corpus):
    out, _ = small_corpus
    seen = {}
    for source in SOURCES:
        labels = {}
        for split in ("train", "val"):
            for row in _rows(out, source, split):
                text = row["text"] if "text" in row else row["messages"][-1]["content"]
                key = hashlib.sha256(text.encode()).hexdigest()
                assert key not in seen, f"duplicate text in {source}/{split} and {seen.get(key)}"
                seen[key] = (source, split)
                labels.setdefault(split, set()).add(_label(row))
        assert not labels["train"] & labels["val"], source


def test_text_rows_are_real_files(small_corpus):
    out, manifest = small_corpus
    roots = {k: pathlib.Path(v) for k, v in manifest["roots"].items()}
    for source in ("code", "python"):
        rows = list(_rows(out, source, "train"))[:20]
        for row in rows:
            assert set(row) == {"text", "path", "kind"}
            root, rel = row["path"].split("/", 1)
            assert (roots[root] / rel).read_text(encoding="utf-8") == row["text"]  # nothing invented


def test_instruct_rows_well_formed_and_held_out_apart(small_corpus):
    out, _ = small_corpus
    python_train = {r["path"] for r in _rows(out, "python", "train")}
    prefix = USER_TEMPLATE.split("{")[0]
    for split in ("train", "val"):
        rows = list(_rows(out, "instruct", split))
        assert rows
        for row in rows:
            assert set(row) == {"messages", "source_path"}
            user, answer = row["messages"]
            assert (user["role"], answer["role"]) == ("user", "assistant")
            assert user["content"].startswith(prefix) and answer["content"].strip()
            tree = ast.parse(answer["content"])  # the answer is one complete function definition
            assert len(tree.body) == 1 and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef))
            assert ast.get_docstring(tree.body[0]) in user["content"]
            if split == "val":  # a held-out module is held out of the Python source too
                assert row["source_path"] not in python_train


def test_mine_pairs_exact_source_and_filters():
    src = textwrap.dedent('''\
        import functools

        @functools.lru_cache()
        def area(width: float, height: float = 1.0) -> float:
            """Return the area of a rectangle of the given size."""
            return width * height

        def todo(x):
            """This one is not implemented yet, skip it."""
            raise NotImplementedError

        def short(x):
            """Too short."""
            return x

        class Box:
            def volume(self, depth):
                """Volume of the box for a given depth."""
                return self.w * self.h * depth

            def __repr__(self):
                """Dunder methods are not interview questions."""
                return "Box"
        ''')
    rows = mine_pairs(src, "stdlib/demo.py")
    assert [r["messages"][0]["content"] for r in rows] == [
        "Write a Python function `area(width: float, height: float=1.0) -> float` that: "
        "Return the area of a rectangle of the given size.",
        "Write a Python method `Box.volume(self, depth)` that: Volume of the box for a given depth.",
    ]
    assert rows[0]["messages"][1]["content"] in src
    assert rows[0]["messages"][1]["content"].startswith("@functools.lru_cache()\ndef area(")
    assert rows[1]["messages"][1]["content"].startswith("def volume(self, depth):\n    \"\"\"Volume")
    assert mine_pairs("def broken(:\n", "x.py") == []


def test_module_docstrings_in_source_order():
    src = 'r"""Module doc with enough words."""\nclass A:\n    """Class doc with enough words."""\n' \
          '    def f(self):\n        """Method doc with enough words."""\n'
    assert module_docstrings(src) == ("Module doc with enough words.\n\nClass doc with enough words.\n\n"
                                      "Method doc with enough words.")
    assert module_docstrings("x = 1\n") is None


def test_bad_files_are_skipped_and_counted(tmp_path):
    stdlib, site = tmp_path / "stdlib", tmp_path / "site"
    (stdlib / "pkg").mkdir(parents=True)
    site.mkdir()
    good = 'def double(x):\n    """Return twice the value of x."""\n    return 2 * x\n'
    (stdlib / "pkg" / "good.py").write_text(good)
    (stdlib / "pkg" / "copy.py").write_text(good)                       # exact duplicate
    (stdlib / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))  # not UTF-8
    (stdlib / "huge.py").write_text("x = 1\n" * 50_000)                 # over max_file_bytes
    (site / "lib.h").write_bytes(b"int f(void);\0\0binary")             # NUL bytes
    (site / "ok.h").write_text("int f(void);\n")
    (site / "blank.c").write_text("\n\n   \n")
    license_text = "Permission is hereby granted, free of charge, to any person.\n"
    (site / "LICENSE").write_text(license_text)
    (site / "README.md").write_text("# demo\n\nA package that doubles numbers.\n")
    cfg = CorpusConfig(max_file_bytes=100_000, include_system_dirs=False, train_shards=2, val_shards=1)
    manifest = build_corpus(tmp_path / "out", cfg, roots={"stdlib": stdlib, "site-packages": site},
                            log=lambda *a: None)
    s = manifest["sources"]
    assert s["python"]["skipped"] == {"duplicate": 1, "too_large": 1, "undecodable": 1}
    assert s["python"]["docs"]["train"] + s["python"]["docs"]["val"] == 1
    assert s["code"]["skipped"] == {"binary": 1, "empty": 1}
    assert s["nl"]["kinds"] == {"package_license": {"docs": 1, "bytes": len(license_text)}}
    assert s["instruct"]["docs"]["train"] + s["instruct"]["docs"]["val"] == 1


def test_generated_files_and_near_duplicates_are_skipped_unless_kept(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    body = "".join(f"int op_{i}(int x) {{ return x * {i} + {i * 7}; }}\n" for i in range(40))
    (site / "ops.h").write_text(body)
    (site / "ops_copy.h").write_text(body.replace("op_3(", "op_three("))        # one name changed: a near-duplicate
    (site / "gen.h").write_text("// @generated by torchgen/gen.py\n" + body.replace("op_", "gen_"))
    (site / "other.h").write_text("struct point { double x, y; };\ndouble norm(struct point p);\n")
    (site / "LICENSE").write_text("Permission is hereby granted, free of charge, to any person.\n")
    (site / "README.md").write_text("# demo\n\nA package that doubles numbers.\n")
    roots = {"stdlib": tmp_path / "stdlib", "site-packages": site}
    roots["stdlib"].mkdir()
    (roots["stdlib"] / "m.py").write_text('def double(x):\n    """Return twice the value of x."""\n    return 2 * x\n')
    cfg = CorpusConfig(include_system_dirs=False, train_shards=1, val_shards=1, val_per_mille=1)

    def code_paths(manifest, out):
        return sorted(r["path"] for split in ("train", "val") if manifest["sources"]["code"]["shards"][split]
                      for r in _rows(out, "code", split))

    deduplicated = build_corpus(tmp_path / "dedup", cfg, roots=roots, log=lambda *a: None)
    assert deduplicated["sources"]["code"]["skipped"] == {"generated": 1, "near_duplicate": 1}
    assert len(code_paths(deduplicated, tmp_path / "dedup")) == 2
    kept = build_corpus(tmp_path / "kept", dataclasses.replace(cfg, near_dedup=False), roots=roots,
                        log=lambda *a: None)
    assert kept["sources"]["code"]["skipped"] == {}
    assert [p.rsplit("/", 1)[1] for p in code_paths(kept, tmp_path / "kept")] == \
        ["gen.h", "ops.h", "ops_copy.h", "other.h"]


def test_read_text_reasons(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(Skip, match="undecodable"):
        _read_text(f, 100)
    f.write_bytes(b"x" * 101)
    with pytest.raises(Skip, match="too_large"):
        _read_text(f, 100)


def test_refuses_to_overwrite_a_non_corpus_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a corpus"):
        build_corpus(tmp_path, SMALL, log=lambda *a: None)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        CorpusConfig(source_bytes={"web": 10}).validate()
    with pytest.raises(ValueError, match="val_per_mille"):
        CorpusConfig(val_per_mille=0).validate()


def test_two_processes_racing_build_once(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from codellama_recipe.data.embedded.corpus import CorpusConfig, SOURCES
        from codellama_recipe.data.embedded.cache import ensure_embedded
        cfg = CorpusConfig(source_bytes={{s: 60_000 for s in SOURCES}}, train_shards=2, val_shards=1)
        p = ensure_embedded({str(tmp_path)!r}, corpus_cfg=cfg)
        print("RESULT", p.corpus_dir, p.tokenizer_path)
        """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("building the embedded corpus") for o in outs) == 1
    assert sum(o.count("trained the embedded tokenizer") for o in outs) == 1
    results = {line for o in outs for line in o.splitlines() if line.startswith("RESULT")}
    assert len(results) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    tok = Tokenizer(tmp_path / f"tokenizer-v{TOKENIZER_VERSION}.model")
    assert tok.has_infilling


def test_default_embedded_corpus_and_tokenizer():
    """The real default (shared by every test via $CODELLAMA_CACHE; built once per checkout)."""
    paths = ensure_embedded(log=lambda *a: None)
    manifest = json.loads((paths.corpus_dir / "manifest.json").read_text())
    total = sum(m["bytes"]["train"] + m["bytes"]["val"] for m in manifest["sources"].values())
    assert 10_000_000 < total < 100_000_000
    for source, m in manifest["sources"].items():
        assert m["docs"]["train"] > 0 and m["docs"]["val"] > 0, source
        assert len(m["shards"]["train"]) >= 4, source
    files = corpus_train_files(paths.corpus_dir)
    assert [f.parent.name for f in files[:len(SOURCES)]] == list(SOURCES)  # interleaved by source
    tok = Tokenizer(paths.tokenizer_path)
    assert tok.vocab_size == 4096 and tok.has_infilling
    for source in SOURCES:
        for row in list(_rows(paths.corpus_dir, source, "val"))[:10]:
            for text in ([row["text"]] if "text" in row else [m["content"] for m in row["messages"]]):
                if "▁" not in text:  # SentencePiece's meta space; see tests/test_tokenizer.py
                    assert tok.decode(tok.encode(text)) == text


def test_cli_builds_with_caps(tmp_path):
    from codellama_recipe.data.embedded.corpus import main
    caps = [f"{s}=0.05" for s in SOURCES]
    assert main([str(tmp_path / "c"), "--source-mb", *caps, "--train-shards", "2", "--no-system-dirs",
                 "--keep-duplicates"]) == 0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert all(len(m["shards"]["train"]) == 2 for m in manifest["sources"].values())
    assert manifest["config"]["include_system_dirs"] is False
    assert manifest["config"]["near_dedup"] is False
    assert main([str(tmp_path / "d"), "--source-mb", "web=1"]) == 2


def test_code_is_pinned_deduplicated_and_cut_into_pieces_with_a_held_out_infilling_set(small_corpus):
    from codellama_recipe.data.near_dedup import NearDuplicateIndex, looks_generated
    from codellama_recipe.data.pieces import split_into_pieces

    out, manifest = small_corpus
    assert set(manifest["distributions"]) == {"torch"}
    code = [r for split in ("train", "val") for r in _rows(out, "code", split)]
    assert all(r["path"].startswith(("site-packages/torch/", "include/")) for r in code)   # only what is pinned
    assert not any(looks_generated(r["text"]) for r in code)
    assert manifest["sources"]["code"]["skipped"]["generated"] > 0      # torchgen's operator headers
    index = NearDuplicateIndex()
    assert all(index.add(r["text"]) for r in code)                       # no two near-duplicates kept
    for split in ("train", "val"):                                       # pieces: the same files, cut
        pieces = list(_rows(out, "code", f"{split}_pieces"))
        files = {r["path"]: r["text"] for r in _rows(out, "code", split)}
        by_file = {}
        for p in pieces:
            path, _, number = p["path"].rpartition("#")
            by_file.setdefault(path, []).append((int(number), p["text"]))
        assert set(by_file) == set(files)
        for path, numbered in by_file.items():
            assert [t for _, t in sorted(numbered)] == split_into_pieces(files[path], 1500)
    heldout = list(_rows(out, "infilling", "heldout"))
    assert heldout and manifest["infilling"]["docs"] == len(heldout)
    train_index = NearDuplicateIndex()
    for source in ("code", "python"):
        for p in _rows(out, source, "train_pieces"):
            train_index.add(p["text"])
    val_pieces = {f"{s}/{p['path']}": p["text"] for s in ("code", "python") for p in _rows(out, s, "val_pieces")}
    for row in heldout:
        assert val_pieces[row["path"]] == row["text"]                      # a piece of a held-out file ...
        assert train_index.match(row["text"])[0] is None                   # ... unlike any training piece
        assert sum(1 for line in row["text"].splitlines() if line.strip()) >= 3
