"""Exact resume: a fresh pipeline loaded from a saved state yields the same batches bit for bit."""
import json
import pathlib
import sys
from collections import Counter

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, make_mixed_corpus  # noqa: E402
from helpers_tokenizer import small_tokenizer  # noqa: E402

from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.core.schema import SourceConfig  # noqa: E402
from codellama_recipe.data.source_files import Location  # noqa: E402
from codellama_recipe.data.sources import SourceReader  # noqa: E402
from codellama_recipe.core.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def mixed_cfg(root, **over):
    cfg = {"seq_len": 64, "seed": 3, "num_workers": 0, "max_doc_chars": 100_000,
           "fim": {"enabled": True, "rate": 0.9, "spm_rate": 0.5, "max_deferred": 4},
           "sources": make_mixed_corpus(root)}
    cfg.update(over)
    return cfg


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and bool((x[k] == y[k]).all()), k


def run_with_states(loader, n):
    """n batches from ONE uninterrupted iteration, and the loader's JSON state after each."""
    it = iter(loader)
    batches, states = [], []
    for _ in range(n):
        batches.append(next(it))
        states.append(json.loads(json.dumps(loader.state_dict())))  # checkpoints store it as JSON
    return batches, states


def first_state(states, predicate, what):
    for i, st in enumerate(states):
        if any(w is not None and predicate(w) for w in st["workers"]):
            return i
    raise AssertionError(f"no saved state has {what}: the test does not exercise it")


@pytest.mark.parametrize("num_workers, world_size, tokenizer", [
    (0, 1, "bytes"), (2, 1, "bytes"), (2, 1, "sentencepiece"), (0, 2, "bytes"), (2, 2, "bytes")])
def test_resume_is_bit_exact(tmp_path, num_workers, world_size, tokenizer):
    """Save points chosen where the state is hardest: mid-round-robin (odd batch count with 2 workers),
    FIM documents waiting in the deferral queue, long documents waiting in pieces, half-read .gz and
    parquet shards, after an epoch rolled over."""
    tok = ByteTokenizer() if tokenizer == "bytes" else small_tokenizer()
    cfg = mixed_cfg(tmp_path, num_workers=num_workers)
    names = list(cfg["sources"])
    nl, nl_code, prose = names.index("nl"), names.index("nl_code"), names.index("prose")
    total, follow = 80, 10
    for rank in range(world_size):
        batches, states = run_with_states(build_train_loader(cfg, tok, rank, world_size, 3), total)
        points = {
            6,
            first_state(states, lambda w: w["packer"]["deferred"], "deferred FIM documents"),
            first_state(states, lambda w: any(o is not None for o in w["open"]),
                        "a long document waiting in pieces"),
            first_state(states, lambda w: sum(o is not None for o in w["open"]) >= 2,
                        "two long documents waiting in pieces"),
            first_state(states, lambda w: w["readers"][nl]["record"] > 0, "a half-read .gz shard"),
            first_state(states, lambda w: w["readers"][nl_code]["record"] > 25, "a parquet shard past a row group"),
            first_state(states, lambda w: w["readers"][prose]["epoch"] >= 1, "a second epoch"),
        }
        assert max(points) < total - follow
        for i in sorted(points):
            resumed = build_train_loader(cfg, tok, rank, world_size, 3)
            resumed.load_state_dict(states[i])
            got, got_states = run_with_states(resumed, follow)
            assert_same_batches(got, batches[i + 1:i + 1 + follow])
            assert got_states[-1] == states[i + follow]
        m = build_train_loader(cfg, tok, rank, world_size, 3)
        m.load_state_dict(states[-1])
        metrics = m.metrics()
        assert metrics["data/filtered/nl_code"] > 0 and metrics["data/fim_share"] > 0


def test_resume_does_not_replay_consumed_input(tmp_path):
    """After the state is saved, every byte already consumed is overwritten (same length, so sizes and
    offsets are unchanged): the resumed stream must not notice, i.e. it seeks instead of replaying."""
    cfg = mixed_cfg(tmp_path)
    cfg["sources"] = {"code": cfg["sources"]["code"]}
    tok = ByteTokenizer()
    batches, states = run_with_states(build_train_loader(cfg, tok, 0, 1, 2), 30)
    state, expected = states[19], batches[20:]
    reader_state = state["workers"][0]["readers"][0]
    assert reader_state["epoch"] == 0 and reader_state["offset"] > 0
    spec = SourceConfig(**cfg["sources"]["code"]).validate("code")
    loc = Location(spec)
    order = SourceReader(spec, loc, seed=cfg["seed"], stream=0, num_streams=1, max_doc_chars=1,
                         strict=False, counters=Counter()).epoch_shards(0)
    done, current = order[:reader_state["cursor"]], order[reader_state["cursor"]]
    for index in done:
        path = pathlib.Path(loc.files[index])
        path.write_bytes(b"\xff" * path.stat().st_size)
    path = pathlib.Path(loc.files[current])
    data = path.read_bytes()
    path.write_bytes(b"\xff" * reader_state["offset"] + data[reader_state["offset"]:])
    resumed = build_train_loader(cfg, tok, 0, 1, 2)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 10), expected)
    assert resumed.metrics()["data/skipped/invalid_utf8"] == 0


def test_state_with_another_setup_is_refused(tmp_path):
    cfg = mixed_cfg(tmp_path)
    tok = ByteTokenizer()
    loader = build_train_loader(cfg, tok, 0, 1, 2)
    take(loader, 2)
    state = loader.state_dict()
    for other, key in [({**cfg, "num_workers": 1}, "num_workers"), ({**cfg, "seq_len": 128}, "seq_len"),
                       ({**cfg, "seed": 4}, "seed")]:
        with pytest.raises(ConfigError, match=key):
            build_train_loader(other, tok, 0, 1, 2).load_state_dict(state)
    with pytest.raises(ConfigError, match="rank"):
        build_train_loader(cfg, tok, 1, 2, 2).load_state_dict(state)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        build_train_loader(cfg, tok, 0, 1, 3).load_state_dict(state)
    with pytest.raises(ConfigError, match="tokenizer"):
        build_train_loader(cfg, small_tokenizer(), 0, 1, 2).load_state_dict(state)
    changed = dict(cfg)
    changed["sources"] = {**cfg["sources"], "code": {**cfg["sources"]["code"], "weight": 0.6}}
    with pytest.raises(ConfigError, match="sources"):
        build_train_loader(changed, tok, 0, 1, 2).load_state_dict(state)


def test_reiterating_continues_the_stream(tmp_path):
    cfg = mixed_cfg(tmp_path, num_workers=2)
    tok = ByteTokenizer()
    one = build_train_loader(cfg, tok, 0, 1, 2)
    whole = take(one, 12)
    two = build_train_loader(cfg, tok, 0, 1, 2)
    assert_same_batches(take(two, 5) + take(two, 7), whole)  # a second iter() goes on where the first stopped


@pytest.mark.parametrize("num_workers", [0, 2])
def test_hub_source_resumes_exactly(tmp_path, monkeypatch, num_workers):
    """A `hub` source goes through datasets streaming (here its local json builder, offline); small
    datasets batches make the saved position land on datasets' own state_dict."""
    from codellama_recipe.data import record_readers

    monkeypatch.setattr(record_readers, "HUB_BATCH", 4)
    from helpers_data import data_cfg, make_corpus

    make_corpus(tmp_path, {"code": (3, 20)}, spread=40)
    cfg = data_cfg(tmp_path, {"code": 1.0}, num_workers=num_workers, fim={"enabled": True})
    cfg["sources"]["code"] = {"weight": 1.0, "hub": {
        "path": "json", "data_files": sorted(str(p) for p in (tmp_path / "code").glob("*.jsonl"))}}
    tok = ByteTokenizer()
    batches, states = run_with_states(build_train_loader(cfg, tok, 0, 1, 2), 49)
    i = first_state(states[:-10], lambda w: w["readers"][0]["hub"] and w["readers"][0]["hub"]["state"],
                    "a position inside datasets' own state")
    state, expected = states[i], batches[i + 1:]
    assert any(w["readers"][0]["epoch"] >= 1 for w in states[-1]["workers"])
    resumed = build_train_loader(cfg, tok, 0, 1, 2)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, len(expected)), expected)
