"""Sharding: over one epoch, every document is read by exactly one (rank, worker)."""
import hashlib
import pathlib
import sys
from collections import Counter

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, data_cfg, digest, make_corpus, split_documents  # noqa: E402

from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.core.schema import SourceConfig  # noqa: E402
from codellama_recipe.data.source_files import Location  # noqa: E402
from codellama_recipe.data.sources import SourceReader  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.mark.parametrize("num_files, mode, hub", [(9, "files", False), (2, "documents", False),
                                                  (5, "files", True), (3, "documents", True)])
def test_each_document_once_per_epoch_over_2_ranks_x_2_workers(tmp_path, num_files, mode, hub):
    texts = make_corpus(tmp_path, {"code": (num_files, 31)})["code"]
    where = {"paths": [str(tmp_path / "code" / "*.jsonl")]}
    if hub:  # datasets streaming (its local json builder: offline), one datasets shard per file
        where = {"hub": {"path": "json", "data_files": sorted(str(p) for p in (tmp_path / "code").glob("*.jsonl"))}}
    spec = SourceConfig(weight=1, **where).validate("code")
    loc = Location(spec)
    for epoch in range(2):
        seen = Counter()
        for rank in range(2):
            for worker in range(2):
                reader = SourceReader(spec, loc, seed=0, stream=rank * 2 + worker, num_streams=4,
                                      max_doc_chars=10**6, strict=False, counters=Counter(), epochs=epoch + 1)
                assert reader.by_shard == (mode == "files")
                if epoch:
                    reader.load_state_dict({**reader.state_dict(), "epoch": epoch})
                while (doc := reader.next_document()) is not None:
                    assert doc.key[0] == epoch
                    seen[sha(doc.text)] += 1
        assert seen == Counter(sha(t) for t in texts), epoch


@pytest.mark.parametrize("num_files", [9, 2])
def test_whole_pipeline_2_ranks_x_2_workers_reads_every_document_once(tmp_path, num_files):
    """Through DataLoader worker processes and packing: the documents reassembled from the batches of
    all (rank, worker) streams are exactly the corpus, each once."""
    texts = make_corpus(tmp_path, {"code": (num_files, 31)})["code"]
    tok = ByteTokenizer()
    cfg = data_cfg(tmp_path, {"code": 1.0}, seq_len=48, num_workers=2, max_epochs=1)
    got = Counter()
    for rank in range(2):
        loader = build_train_loader(cfg, tok, rank, 2, 2)
        per_worker = {0: [], 1: []}
        for batch in loader:
            per_worker[loader._last_worker].append(batch)  # the logical worker that made this batch
        for batches in per_worker.values():
            got.update(digest(d) for d in split_documents(batches, tok.bos_id))
    assert got == Counter(digest(tok.encode(t, bos=True, eos=True)) for t in texts)


def test_validation_rows_are_split_over_ranks_independently_of_world_size(tmp_path):
    """Val loaders: finite, deterministic, every rank the same number of batches, rows interleaved by
    rank from one global sequence (so the rows evaluated do not depend on the world size), and only
    the last real row padded."""
    from codellama_recipe.data.pipeline import build_val_loaders

    texts = make_corpus(tmp_path, {"code": (3, 7)})["code"]
    for f in (tmp_path / "code").glob("train-*.jsonl"):
        f.rename(f.with_name(f.name.replace("train", "val")))
    tok = ByteTokenizer()
    cfg = data_cfg(tmp_path, {"code": 1.0}, seq_len=40, fim={"enabled": True, "rate": 1.0})
    cfg["sources"]["code"]["paths"] = [str(tmp_path / "code" / "val-*.jsonl")]  # (train paths must exist too)
    cfg["sources"]["code"]["val_paths"] = [str(tmp_path / "code" / "val-*.jsonl")]

    def rows(world_size, max_batches=None):
        per_rank = []
        for rank in range(world_size):
            loader = build_val_loaders(cfg, tok, rank, world_size, 2, max_batches)["code"]
            batches = list(loader)
            assert [b["input_ids"].tolist() for b in batches] == [b["input_ids"].tolist() for b in loader]  # again
            per_rank.append(batches)
        assert len({len(b) for b in per_rank}) == 1  # every rank the same number of batches
        out = []
        for step in range(len(per_rank[0])):
            for rank in range(world_size):
                b = per_rank[rank][step]
                out += [{k: v[i] for k, v in b.items()} for i in range(b["input_ids"].shape[0])]
        return out
    one, three = rows(1), rows(3)
    real = lambda rs: [r for r in rs if (r["source_ids"] >= 0).any()]  # noqa: E731
    assert [r["input_ids"].tolist() for r in real(one)] == [r["input_ids"].tolist() for r in real(three)]
    padded = [i for i, r in enumerate(real(one)) if (r["source_ids"] < 0).any()]
    assert padded == [len(real(one)) - 1]  # only the last real row has padding
    assert not any(r["is_fim"].any() for r in one)  # validation measures plain next-token loss (fim.in_val)
    stream = [t for r in real(one) for t in r["input_ids"][r["source_ids"] >= 0].tolist()]
    assert stream == [t for text in texts for t in tok.encode(text, bos=True, eos=True)]  # file order, all of it
    assert len(rows(2, max_batches=2)) == 2 * 2 * 2
