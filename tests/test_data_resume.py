"""Exact resume: a fresh pipeline loaded from a saved state yields the same batches bit for bit."""
import json
import pathlib
import sys
from collections import Counter

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, make_mixed_corpus  # noqa: E402
from helpers_tokenizer import small_tokenizer  # noqa: E402

from data.pipeline import build_train_loader  # noqa: E402
from data.sources import Location, SourceReader, parse_sources  # noqa: E402
from train.errors import ConfigError  # noqa: E402

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


@pytest.mark.parametrize("num_workers, world_size, tokenizer", [
    (0, 1, "bytes"), (2, 1, "bytes"), (2, 1, "sentencepiece"), (0, 2, "bytes"), (2, 2, "bytes")])
def test_resume_is_bit_exact(tmp_path, num_workers, world_size, tokenizer):
    tok = ByteTokenizer() if tokenizer == "bytes" else small_tokenizer()
    cfg = mixed_cfg(tmp_path, num_workers=num_workers)
    for rank in range(world_size):
        first = build_train_loader(cfg, tok, rank, world_size, 3)
        take(first, 7)  # odd: with 2 workers the next batch is worker 1's
        state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
        expected = take(first, 25)  # long enough for epochs to roll over in the small sources
        resumed = build_train_loader(cfg, tok, rank, world_size, 3)
        resumed.load_state_dict(state)
        assert_same_batches(take(resumed, 25), expected)
        assert resumed.state_dict() == first.state_dict()
        assert resumed.metrics() == first.metrics()
        m = first.metrics()
        assert m["data/epoch/prose"] >= 1 and m["data/filtered/nl_code"] > 0 and m["data/fim_share"] > 0


def test_resume_does_not_replay_consumed_input(tmp_path):
    """After the state is saved, every byte already consumed is overwritten (same length, so sizes and
    offsets are unchanged): the resumed stream must not notice, i.e. it seeks instead of replaying."""
    cfg = mixed_cfg(tmp_path)
    cfg["sources"] = {"code": cfg["sources"]["code"]}
    tok = ByteTokenizer()
    first = build_train_loader(cfg, tok, 0, 1, 2)
    take(first, 20)
    state = json.loads(json.dumps(first.state_dict()))
    expected = take(first, 10)
    reader_state = state["workers"][0]["readers"][0]
    assert reader_state["epoch"] == 0 and reader_state["offset"] > 0
    spec = parse_sources(cfg["sources"])[0]
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
