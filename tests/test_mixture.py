"""Mixtures: realized token shares converge to the weights; exhausted sources start a reshuffled epoch."""
import pathlib
import sys
from collections import Counter

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, data_cfg, make_corpus  # noqa: E402
from helpers_tokenizer import small_tokenizer  # noqa: E402

from codellama_recipe.data.mixture import TokenMixture  # noqa: E402
from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.core.schema import SourceConfig  # noqa: E402
from codellama_recipe.data.source_files import Location  # noqa: E402
from codellama_recipe.data.sources import SourceReader  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CODE_MIX = {"code": 0.85, "nl_code": 0.08, "nl": 0.07}


def test_deficit_scheduling_stays_within_one_document():
    rng = np.random.default_rng(0)
    mix = TokenMixture(list(CODE_MIX), list(CODE_MIX.values()))
    max_doc = 2000
    total = 0
    while total < 1_000_000:
        i = mix.pick()
        n = int(rng.integers(1, max_doc))
        mix.add(i, n)
        total += n
        for t, w in zip(mix.tokens, mix.weights):  # the invariant behind the convergence
            assert t - w * total <= max_doc
    for name, share in mix.shares().items():
        assert abs(share - CODE_MIX[name]) < 0.002, name


def _shares_of(batches, names):
    counts = Counter()
    for batch in batches:
        src = batch["source_ids"].numpy()
        counts.update(src[src >= 0].tolist())
    total = sum(counts.values())
    return {name: counts[i] / total for i, name in enumerate(names)}, total


def test_code_mix_shares_over_one_million_tokens(tmp_path):
    """85/8/7 within one point over 1M tokens through the whole pipeline (byte tokenizer for speed);
    the small sources run out many times on the way."""
    make_corpus(tmp_path, {"code": (4, 400), "nl_code": (2, 60), "nl": (1, 50)})
    cfg = data_cfg(tmp_path, CODE_MIX, seq_len=1024, fim={"enabled": True})
    loader = build_train_loader(cfg, ByteTokenizer(), 0, 1, 8)
    it = iter(loader)
    batches = [next(it) for _ in range(123)]  # 123 * 8 * 1024 > 1M tokens
    shares, total = _shares_of(batches, loader.source_names)
    assert total >= 1_000_000
    for name, want in CODE_MIX.items():
        assert abs(shares[name] - want) <= 0.01, (name, shares)
        assert loader.metrics()[f"data/share/{name}"] == pytest.approx(shares[name])
    m = loader.metrics()
    assert m["data/epoch/nl"] >= 2 and m["data/epoch/nl_code"] >= 1  # exhausted sources started new epochs


def test_shares_with_the_real_tokenizer(tmp_path):
    make_corpus(tmp_path, {"code": (2, 100), "nl_code": (1, 30), "nl": (1, 30)})
    cfg = data_cfg(tmp_path, CODE_MIX, seq_len=512, fim={"enabled": True})
    loader = build_train_loader(cfg, small_tokenizer(), 0, 1, 8)
    it = iter(loader)
    shares, total = _shares_of([next(it) for _ in range(40)], loader.source_names)  # ~160K tokens
    for name, want in CODE_MIX.items():
        assert abs(shares[name] - want) <= 0.01, (name, shares)


def test_next_epoch_reshuffles_file_order(tmp_path):
    texts = make_corpus(tmp_path, {"nl": (8, 3)})["nl"]
    spec = SourceConfig(weight=1, paths=[str(tmp_path / "nl" / "*.jsonl")]).validate("nl")
    reader = SourceReader(spec, Location(spec), seed=0, stream=0, num_streams=1, max_doc_chars=10**6,
                          strict=False, counters=Counter(), epochs=3)
    epochs = [[], [], []]
    while (doc := reader.next_document()) is not None:
        epochs[doc.key[0]].append(doc.text)
    for e in epochs:
        assert sorted(e) == sorted(texts)  # every document once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # in another file order
    # documents keep their in-file order: a file is a unit of the shuffle
    first_files = [reader.epoch_shards(e)[0] for e in range(3)]
    assert len(set(first_files)) > 1


def test_zero_weight_disables_a_source(tmp_path):
    make_corpus(tmp_path, {"code": (1, 10), "nl": (1, 10)})
    cfg = data_cfg(tmp_path, {"code": 1.0, "nl": 0.0})
    cfg["sources"]["nl"]["paths"] = ["/nonexistent/*.jsonl"]  # not even looked at
    loader = build_train_loader(cfg, ByteTokenizer(), 0, 1, 2)
    assert loader.source_names == ["code"]
