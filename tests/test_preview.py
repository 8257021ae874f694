"""codellama-preview composes the training config and prints rows as the model sees them."""
import json
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import text_of, write_jsonl  # noqa: E402
from helpers_tokenizer import small_tokenizer, small_tokenizer_path  # noqa: E402

from codellama_recipe.data.preview import RowRenderer, main  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def fake_embedded_corpus(cache: pathlib.Path):
    for source in ("code", "nl_code", "nl"):
        write_jsonl(cache / "corpus-v2" / source / "train-00000.jsonl",
                    [text_of(k, source, min_len=4, spread=20) for k in range(30)])


def test_jsonl_rows_from_the_training_config(tmp_path, capsys):
    fake_embedded_corpus(tmp_path)
    rc = main(["model=tiny", "stage=code", f"cache_dir={tmp_path}", f"tokenizer_path={small_tokenizer_path()}",
               "data.seq_len=96", "data.num_workers=0", "preview.n=3", "preview.format=jsonl"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["row"] for r in lines] == [0, 1, 2]
    tok = small_tokenizer()
    for r in lines:
        assert len(r["tokens"]) == len(r["loss_mask"]) == len(r["source_ids"]) == 96
        assert r["source_names"] == ["code", "nl_code", "nl"]
    # the first row starts with the first document: BOS, and (FIM on for the tiny code stage) maybe <PRE>
    assert lines[0]["tokens"][0] == tok.bos_id and lines[0]["text"].startswith("<s>")
    assert any(r["is_fim"] for row in lines for r in [row] if any(row["is_fim"]))
    fim_row = next(r for r in lines if any(r["is_fim"]))
    assert "<PRE>" in fim_row["text"] and "<EOT>" in fim_row["text"]


def test_text_output_and_bad_config(tmp_path, capsys):
    fake_embedded_corpus(tmp_path)
    base = ["model=tiny", "stage=code", f"cache_dir={tmp_path}", f"tokenizer_path={small_tokenizer_path()}",
            "data.seq_len=64", "data.num_workers=0"]
    assert main(base + ["preview.n=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("=== row ") == 2 and "<s>" in out and "trained labels" in out
    assert main(base + ["data.sources.code.paths=[/nonexistent/*.jsonl]"]) == 2
    assert "data.sources.code.paths" in capsys.readouterr().err


def test_renderer_restores_text_and_names_pieces():
    tok = small_tokenizer()
    from codellama_recipe.data.fim import FimPlan, fim_tokens

    text = "def f(x):\n    return x\n"
    for spm in (False, True):
        ids = fim_tokens(tok, text, FimPlan(spm, 4, 12))
        shown = RowRenderer(tok).render(ids, [False] * len(ids))
        prefix, middle, suffix = text[:4], text[4:12], text[12:]
        if spm:
            assert shown == f"<s><PRE><SUF>{suffix}<MID>{prefix}{middle}<EOT></s>"
        else:
            assert shown == f"<s><PRE>{prefix}<SUF>{suffix}<MID>{middle}<EOT></s>"
    plain = tok.encode("print(1)", bos=True, eos=True)
    assert RowRenderer(tok).render(plain + [2, 2], [False] * len(plain) + [True, True]) == "<s>print(1)</s><pad>×2"
