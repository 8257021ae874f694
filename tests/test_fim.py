"""Infilling exactly as the paper's §2.3 (docs/recipe.md#infilling): layouts, cut points, rates, eligibility, no
straddling."""
import pathlib
import sys

import numpy as np
import pytest
import sentencepiece

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import BYTE0, ByteTokenizer, data_cfg, make_corpus, text_of, write_jsonl  # noqa: E402
from helpers_tokenizer import small_tokenizer, small_tokenizer_path  # noqa: E402

from codellama_recipe.core.config import typed  # noqa: E402
from codellama_recipe.core.schema import FimConfig  # noqa: E402
from codellama_recipe.data.fim import FimBuilder, FimPlan, fim_plan, fim_prompt, fim_tokens  # noqa: E402
from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.core.schema import SourceConfig  # noqa: E402
from codellama_recipe.data.source_files import Location  # noqa: E402
from codellama_recipe.data.sources import SourceReader  # noqa: E402
from codellama_recipe.core.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

B, E, PRE, SUF, MID, EOT = 1, 2, 3, 4, 5, 6
SP = BYTE0 + 0x20  # the implicit leading space of Enc()


def b(s: str) -> list[int]:
    """Byte tokens of s, written out independently of the tokenizer."""
    return [BYTE0 + x for x in s.encode("utf-8")]


# ---------------------------------------------------------------- hand-worked token sequences
@pytest.mark.parametrize("text, lo, hi, psm, spm", [
    # prefix "ab", middle "cd", suffix "ef"
    ("abcdef", 2, 4,
     [B, PRE, SP, *b("ab"), SUF, *b("ef"), MID, *b("cd"), EOT, E],
     [B, PRE, SUF, *b("ef"), MID, SP, *b("abcd"), EOT, E]),
    # empty prefix: Enc("") has no leading space either
    ("abcdef", 0, 3,
     [B, PRE, SUF, *b("def"), MID, *b("abc"), EOT, E],
     [B, PRE, SUF, *b("def"), MID, SP, *b("abc"), EOT, E]),
    # empty middle
    ("abcdef", 3, 3,
     [B, PRE, SP, *b("abc"), SUF, *b("def"), MID, EOT, E],
     [B, PRE, SUF, *b("def"), MID, SP, *b("abc"), EOT, E]),
    # empty suffix
    ("abcdef", 1, 6,
     [B, PRE, SP, *b("a"), SUF, MID, *b("bcdef"), EOT, E],
     [B, PRE, SUF, MID, SP, *b("abcdef"), EOT, E]),
    # everything in the middle
    ("xy", 0, 2,
     [B, PRE, SUF, MID, *b("xy"), EOT, E],
     [B, PRE, SUF, MID, SP, *b("xy"), EOT, E]),
    # unicode: cuts fall between code points, never inside a UTF-8 sequence
    ("aé€😀b", 1, 3,
     [B, PRE, SP, BYTE0 + 0x61, SUF, BYTE0 + 0xF0, BYTE0 + 0x9F, BYTE0 + 0x98, BYTE0 + 0x80, BYTE0 + 0x62,
      MID, BYTE0 + 0xC3, BYTE0 + 0xA9, BYTE0 + 0xE2, BYTE0 + 0x82, BYTE0 + 0xAC, EOT, E],
     [B, PRE, SUF, BYTE0 + 0xF0, BYTE0 + 0x9F, BYTE0 + 0x98, BYTE0 + 0x80, BYTE0 + 0x62, MID, SP,
      BYTE0 + 0x61, BYTE0 + 0xC3, BYTE0 + 0xA9, BYTE0 + 0xE2, BYTE0 + 0x82, BYTE0 + 0xAC, EOT, E]),
])
def test_hand_worked_layouts(text, lo, hi, psm, spm):
    tok = ByteTokenizer()
    assert fim_tokens(tok, text, FimPlan(False, lo, hi)) == psm
    assert fim_tokens(tok, text, FimPlan(True, lo, hi)) == spm
    # BOS / EOS are configurable (OPEN in the paper); <EOT> always stays
    assert fim_tokens(tok, text, FimPlan(False, lo, hi), bos=False, eos=False) == psm[1:-1]
    assert fim_tokens(tok, text, FimPlan(True, lo, hi), bos=False, eos=True) == spm[1:]


def test_max_tokens_cuts_short():
    tok = ByteTokenizer()
    full = fim_tokens(tok, "abcdef", FimPlan(False, 2, 4))
    assert fim_tokens(tok, "abcdef", FimPlan(False, 2, 4), max_tokens=len(full)) == full
    assert fim_tokens(tok, "abcdef", FimPlan(False, 2, 4), max_tokens=len(full) - 1) is None


def test_real_tokenizer_layout_round_trips():
    """With the SentencePiece tokenizer: the parts decode back to prefix / middle / suffix (leading
    space suppressed on middle and suffix), and literal "<PRE>" text never yields the control piece."""
    tok = small_tokenizer()
    sentinels = {tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id}
    texts = ["def f(x):\n    return x + 1\n", "  indented <PRE> literal <EOT>\n", "größe = 'ü€😀'\nprint(größe)"]
    rng = np.random.default_rng(0)
    for text in texts:
        for _ in range(20):
            lo, hi = sorted(rng.integers(0, len(text) + 1, size=2))
            prefix, middle, suffix = text[:lo], text[lo:hi], text[hi:]
            psm = fim_tokens(tok, text, FimPlan(False, lo, hi))
            assert psm[:2] == [tok.bos_id, tok.prefix_id] and psm[-2:] == [tok.eot_id, tok.eos_id]
            i_suf, i_mid = psm.index(tok.suffix_id), psm.index(tok.middle_id)
            assert tok.decode(psm[2:i_suf]) == prefix
            assert tok.decode_no_space(psm[i_suf + 1:i_mid]) == suffix
            assert tok.decode_no_space(psm[i_mid + 1:-2]) == middle
            assert psm[i_mid + 1:-2] == tok.encode_no_space(middle)
            spm = fim_tokens(tok, text, FimPlan(True, lo, hi))
            assert spm[:3] == [tok.bos_id, tok.prefix_id, tok.suffix_id] and spm[-2:] == [tok.eot_id, tok.eos_id]
            j_mid = spm.index(tok.middle_id)
            assert tok.decode_no_space(spm[3:j_mid]) == suffix
            assert spm[j_mid + 1:-2] == tok.encode(prefix + middle)  # encoded together: no split token
            assert tok.decode(spm[j_mid + 1:-2]) == prefix + middle
            body = psm[2:i_suf] + psm[i_suf + 1:i_mid] + psm[i_mid + 1:-2]
            assert not sentinels & set(body)


# ---------------------------------------------------------------- inference prompts (also used by evaluation)
@pytest.mark.parametrize("prefix, suffix, psm, spm", [
    # PSM: [BOS, PRE] + Enc(prefix) + [SUF] + EncNoSpace(suffix) + [MID]
    # SPM: [BOS, PRE, SUF] + EncNoSpace(suffix) + [MID] + Enc(prefix)
    ("a = ", "\nb",
     [B, PRE, SP, *b("a = "), SUF, *b("\nb"), MID],
     [B, PRE, SUF, *b("\nb"), MID, SP, *b("a = ")]),
    # a suffix that starts with a space keeps exactly that one space
    ("x", " y",
     [B, PRE, SP, *b("x"), SUF, *b(" y"), MID],
     [B, PRE, SUF, *b(" y"), MID, SP, *b("x")]),
    # empty prefix / empty suffix
    ("", "z", [B, PRE, SUF, *b("z"), MID], [B, PRE, SUF, *b("z"), MID]),
    ("def f():", "", [B, PRE, SP, *b("def f():"), SUF, MID], [B, PRE, SUF, MID, SP, *b("def f():")]),
])
def test_hand_worked_prompts(prefix, suffix, psm, spm):
    tok = ByteTokenizer()
    assert fim_prompt(tok, prefix, suffix) == psm
    assert fim_prompt(tok, prefix, suffix, spm=True) == spm


def test_prompts_on_a_sentencepiece_model_match_the_reference_layout():
    """The reference built with SentencePiece directly: its sentinel trick for EncNoSpace, ids by piece name."""
    sp = sentencepiece.SentencePieceProcessor(model_file=small_tokenizer_path())
    sentinel = sp.encode("☺")

    def no_space(s):
        ids = sp.encode("☺" + s)
        assert ids[:len(sentinel)] == sentinel
        return ids[len(sentinel):]
    ids = {name: sp.piece_to_id(f"▁<{name}>") for name in ("PRE", "SUF", "MID")}
    prefix, suffix = "def f(x):\n    y = ", "\n    return y\n"
    psm = [sp.bos_id(), ids["PRE"]] + sp.encode(prefix) + [ids["SUF"]] + no_space(suffix) + [ids["MID"]]
    spm_ = [sp.bos_id(), ids["PRE"], ids["SUF"]] + no_space(suffix) + [ids["MID"]] + sp.encode(prefix)
    tok = small_tokenizer()
    assert fim_prompt(tok, prefix, suffix) == psm
    assert fim_prompt(tok, prefix, suffix, spm=True) == spm_
    assert no_space(suffix) != sp.encode(suffix)   # the suffix really is encoded without the leading space


def test_prompt_needs_the_infilling_pieces():
    with pytest.raises(ValueError, match="no infilling pieces"):
        fim_prompt(ByteTokenizer(infilling=False), "a", "b")


def _tricky_texts(rng, n):
    alphabet = list("ab_(): =") + ["\n", "\n", "    ", " ", "\t", "é", "€", "😀", "<PRE>", "\n\n", "☺"]
    out = ["\n", "\n\nx", "x\n", "  \n  ", "a\nb", "😀\n😀"]
    for _ in range(n):
        out.append("".join(rng.choice(alphabet, size=int(rng.integers(1, 80)))))
    return out


@pytest.mark.parametrize("tokenizer", ["sentencepiece", "bytes", "no_fast_path"])
def test_fast_builder_equals_the_reference(tokenizer):
    """The pipeline derives FIM tokens from the plain encoding (one encode per document); it must be
    identical to the reference construction for every cut, including cuts at or next to newlines."""
    if tokenizer == "sentencepiece":
        tok = small_tokenizer()
    elif tokenizer == "bytes":
        tok = ByteTokenizer()
    else:
        class NewlinePiece(ByteTokenizer):  # a vocabulary with a "\n" piece: the builder must not assume locality
            def piece(self, i):
                return "\n" if i == BYTE0 + 10 else super().piece(i)
        tok = NewlinePiece()
    builder = FimBuilder(tok)
    assert (builder.newline is None) == (tokenizer == "no_fast_path")
    rng = np.random.default_rng(1)
    checked = 0
    for text in _tricky_texts(rng, 60):
        plain = np.asarray(tok.encode(text), np.int32)
        at_newlines = sorted({i + d for i, ch in enumerate(text) if ch == "\n" for d in (0, 1)})
        cuts = {0, len(text)} | set(rng.choice(at_newlines, size=min(3, len(at_newlines)), replace=False).tolist()
                                    if at_newlines else [])
        cuts = sorted(cuts | set(rng.integers(0, len(text) + 1, size=2).tolist()))
        for lo in cuts:
            for hi in cuts:
                if hi < lo:
                    continue
                for spm in (False, True):
                    plan = FimPlan(spm, lo, hi)
                    want = fim_tokens(tok, text, plan)
                    got = builder.build(text, plain, plan, bos=True, eos=True)
                    assert got.tolist() == want, (text, plan)
                    assert builder.build(text, plain, plan, bos=False, eos=True, max_tokens=len(want) - 2) is None
                    checked += 1
    assert checked > 1500


# ---------------------------------------------------------------- randomness
def test_plan_is_pure_and_cut_points_uniform():
    assert fim_plan(3, "code", (0, 1, 2), 100, 0.9, 0.5) == fim_plan(3, "code", (0, 1, 2), 100, 0.9, 0.5)
    n, trials = 10, 20000
    plans = [fim_plan(0, "code", (0, 0, k), n, 1.0, 0.5) for k in range(trials)]
    lo = np.array([p.lo for p in plans])
    hi = np.array([p.hi for p in plans])
    assert (lo <= hi).all() and lo.min() == 0 and hi.max() == n
    # min and max of two independent uniforms on {0..n}: P(lo >= k) = ((n+1-k)/(n+1))^2
    for k in (1, 3, 5, 8):
        want = ((n + 1 - k) / (n + 1)) ** 2
        assert abs((lo >= k).mean() - want) < 0.015, k
        assert abs((hi < k).mean() - (k / (n + 1)) ** 2) < 0.015, k
    # rate 0 never transforms; decisions change with the seed
    assert all(fim_plan(0, "code", (0, 0, k), n, 0.0, 0.5) is None for k in range(200))
    assert [fim_plan(1, "code", (0, 0, k), n, 1.0, 0.5) for k in range(50)] != plans[:50]


def _loader_docs(cfg, tok, batches, with_masks=False):
    """Rows (input_ids, is_fim, doc_ids, source_ids) of a finite single-stream run [and loss masks]."""
    loader = build_train_loader(cfg, tok, 0, 1, 4)
    batches = list(loader)
    rows = [row for batch in batches for row in zip(*(batch[k].numpy() for k in ("input_ids", "is_fim", "doc_ids",
                                                                                  "source_ids")))]
    if with_masks:
        return loader, rows, [b["loss_mask"].numpy() for b in batches]
    return loader, rows


def _fim_runs(rows):
    """Every maximal run of FIM tokens inside one row and one document."""
    runs = []
    for ids, fim, dids, _ in rows:
        for d in np.unique(dids[fim]):
            runs.append(ids[fim & (dids == d)].tolist())
    return runs


def _expected(corpus_file_texts, tok, seq_len, rate=0.9, spm_rate=0.5, plans=None):
    """Independent reference: which documents must be transformed, and to what."""
    want = []
    for file_index, texts in enumerate(corpus_file_texts):
        for record, text in enumerate(texts):
            plan = fim_plan(0, "code", (0, file_index, record), len(text), rate, spm_rate)
            if plan is None:
                continue
            toks = fim_tokens(tok, text, plan)
            if len(toks) <= seq_len:
                want.append(toks)
                if plans is not None:
                    plans.append(plan)
    return want


def test_rate_and_spm_share_over_5000_eligible_documents(tmp_path):
    tok = ByteTokenizer()
    files = []
    for f in range(5):
        texts = [text_of(f * 1000 + k, "code", min_len=8, spread=30) for k in range(1000)]
        write_jsonl(tmp_path / "code" / f"train-{f:05d}.jsonl", texts)
        files.append(texts)
    cfg = data_cfg(tmp_path, {"code": 1.0}, seq_len=512, max_epochs=1, fim={"enabled": True})
    loader, rows = _loader_docs(cfg, tok, None)
    runs = _fim_runs(rows)
    assert all(len(tok.encode(t)) + 6 < 512 for texts in files for t in texts)  # all 5,000 are eligible
    plans = []
    assert sorted(runs) == sorted(_expected(files, tok, 512, plans=plans))
    rate = len(runs) / 5000
    spm = sum(p.spm for p in plans) / len(plans)  # (a PSM with empty prefix looks like SPM from its tokens)
    assert abs(rate - 0.90) <= 0.02, rate
    assert abs(spm - 0.50) <= 0.03, spm
    m = loader.metrics()
    assert m["data/fim_share"] == pytest.approx(rate) and m["data/spm_share"] == pytest.approx(spm)
    assert m["data/pad_share"] < 0.01


def test_only_whole_documents_are_transformed_and_never_straddle(tmp_path):
    """Documents around and above the sequence length: exactly those whose FIM form fits are
    transformed, each FIM document lies inside one row, and nothing else is padded."""
    tok = ByteTokenizer()
    seq_len = 96
    rng = np.random.default_rng(5)
    texts = ["".join(rng.choice(list("abcdefgh ()\n"), size=int(n))) + f"#{i}" for i, n in
             enumerate(rng.integers(1, 220, size=600))]
    write_jsonl(tmp_path / "code" / "train-00000.jsonl", texts)
    cfg = data_cfg(tmp_path, {"code": 1.0}, seq_len=seq_len, max_epochs=1, fim={"enabled": True, "rate": 0.9})
    loader, rows, masks = _loader_docs(cfg, tok, None, with_masks=True)
    runs = _fim_runs(rows)
    for run in runs:  # whole documents: each run is a complete FIM document
        assert run[:2] == [B, PRE] and run[-2:] == [EOT, E] and len(run) <= seq_len
    assert sorted(runs) == sorted(_expected([texts], tok, seq_len))
    long_ones = [t for t in texts if len(tok.encode(t)) + 2 > seq_len + 10]
    assert long_ones, "the corpus must contain documents longer than a row"
    assert loader.metrics()["data/fim_too_long"] > 0
    # every document appears once, in its FIM form when that fits and drawn, else plain: every token
    # but its first (BOS) is a trained label exactly once
    expected_labels = 0
    for record, text in enumerate(texts):
        plan = fim_plan(0, "code", (0, 0, record), len(text), 0.9, 0.5)
        toks = fim_tokens(tok, text, plan) if plan else None
        expected_labels += (len(toks) if toks is not None and len(toks) <= seq_len else len(tok.encode(text)) + 2) - 1
    assert sum(int(m.sum()) for m in masks) == expected_labels


def test_per_source_switch_and_missing_pieces(tmp_path):
    tok = ByteTokenizer()
    make_corpus(tmp_path, {"code": (1, 50), "nl": (1, 50)}, spread=10)
    cfg = data_cfg(tmp_path, {"code": 0.5, "nl": 0.5}, seq_len=256, max_epochs=1, fim={"enabled": True, "rate": 1.0})
    cfg["sources"]["nl"]["fim"] = False
    loader = build_train_loader(cfg, tok, 0, 1, 2)
    for batch in loader:
        fim, src = batch["is_fim"], batch["source_ids"]
        assert not fim[src == 1].any()
        assert fim[src == 0].any()
    with pytest.raises(ConfigError, match="infilling pieces"):
        build_train_loader(cfg, ByteTokenizer(infilling=False), 0, 1, 2)
    with pytest.raises(ConfigError, match="data.fim.rate"):
        build_train_loader({**cfg, "fim": {"enabled": True, "rate": 1.5}}, tok, 0, 1, 2)


def test_fim_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown"):
        typed(FimConfig, {"enabled": True, "psm_rate": 0.5}, "data.fim")


def test_document_keys_do_not_depend_on_stream_count(tmp_path):
    make_corpus(tmp_path, {"code": (3, 20)})
    spec = SourceConfig(weight=1, paths=[str(tmp_path / "code" / "*.jsonl")]).validate("code")
    loc = Location(spec)
    from collections import Counter

    def keys(num_streams):
        out = {}
        for s in range(num_streams):
            reader = SourceReader(spec, loc, seed=0, stream=s, num_streams=num_streams, max_doc_chars=10**6,
                                  strict=False, counters=Counter(), epochs=1)
            while (doc := reader.next_document()) is not None:
                out[doc.text] = doc.key
        return out
    assert keys(1) == keys(2) == keys(5)
