"""Sharding: over one epoch, every document is read by exactly one (rank, worker)."""
import hashlib
import pathlib
import sys
from collections import Counter

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_data import ByteTokenizer, data_cfg, digest, make_corpus, split_documents  # noqa: E402

from data.pipeline import build_train_loader  # noqa: E402
from data.sources import Location, SourceReader, parse_sources  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def sha(text):
    return hashlib.sha1(text.encode()).hexdigest()


@pytest.mark.parametrize("num_files, mode", [(9, "files"), (2, "documents")])
def test_each_document_once_per_epoch_over_2_ranks_x_2_workers(tmp_path, num_files, mode):
    texts = make_corpus(tmp_path, {"code": (num_files, 31)})["code"]
    spec = parse_sources({"code": {"weight": 1, "paths": [str(tmp_path / "code" / "*.jsonl")]}})[0]
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
