"""Packing: exact next-token rows, documents continuing across rows, loss masks, FIM deferral."""
import numpy as np
import pytest

from codellama_recipe.data.packing import PAD_SOURCE, Packer, Segment

pytestmark = pytest.mark.timeout(60)
PAD = 0


def seg(tokens, source=0, fim=False, targets=None):
    return Segment(np.asarray(tokens, np.int32), source, fim, None if targets is None else np.asarray(targets, bool))


def drain(packer):
    rows = []
    while packer.rows_ready():
        rows.append(packer.pop_row())
    return rows


def test_rows_are_the_stream_with_next_token_labels():
    rng = np.random.default_rng(0)
    L = 16
    packer = Packer(L, PAD, num_sources=2)
    docs, stream, doc_of, target = [], [], [], []
    token = 100
    for d in range(40):
        n = int(rng.integers(1, 40))  # many documents longer than a row
        toks = list(range(token, token + n))
        token += n
        docs.append(toks)
        stream += toks
        doc_of += [d] * n
        packer.add(seg(toks, source=d % 2))
    rows = drain(packer)
    packer.finish()
    rows += drain(packer)
    stream_len = len(stream)
    assert len(rows) == -(-(stream_len - 1) // L)  # ceil: every token but the first is a label once
    for k, row in enumerate(rows):
        lo = k * L
        window = stream[lo:lo + L]
        real = len(window)
        assert row["input_ids"][:real].tolist() == window
        assert (row["source_ids"][real:] == PAD_SOURCE).all()  # only the very last row is padded
        if real < L:
            assert k == len(rows) - 1
        for i in range(L):
            p = lo + i
            if p + 1 < stream_len and doc_of[p + 1] == doc_of[p]:
                assert row["labels"][i] == stream[p + 1] and row["loss_mask"][i]
            else:  # the next document's BOS is not predicted from this one; padding has no loss
                assert row["labels"][i] == -100 and not row["loss_mask"][i]
        srcs = [doc_of[p] % 2 for p in range(lo, lo + real)]
        assert row["source_ids"][:real].tolist() == srcs
        # doc_ids number the documents inside the row
        expected_ids = np.unique(np.asarray(doc_of[lo:lo + real]), return_inverse=True)[1]
        assert row["doc_ids"][:real].tolist() == expected_ids.tolist()


def test_targets_mask_only_marked_tokens():
    packer = Packer(8, PAD, 1)
    # a "chat" document: prompt 10 11 12 (no loss), answer 20 21 + EOS 2 (loss)
    packer.add(seg([1, 10, 11, 12, 20, 21, 2], targets=[0, 0, 0, 0, 1, 1, 1]))
    packer.add(seg([1, 30, 31, 2, 1, 40, 2], targets=[0, 0, 0, 0, 0, 1, 1]))
    packer.finish()
    rows = drain(packer)
    labels = np.concatenate([r["labels"] for r in rows])
    mask = np.concatenate([r["loss_mask"] for r in rows])
    assert labels[mask].tolist() == [20, 21, 2, 40, 2]
    assert (labels[~mask] == -100).all()


def test_fim_documents_wait_for_a_row_with_room():
    L = 10
    packer = Packer(L, PAD, 1, max_deferred=4)
    packer.add(seg(range(100, 107)))            # 7 plain tokens: 3 left in row 0
    packer.add(seg(range(200, 206), fim=True))  # 6 FIM tokens: must wait
    packer.add(seg(range(300, 305)))            # plain: fills row 0 and starts row 1 (2 tokens)
    packer.add(seg(range(400, 402), fim=True))  # fits in row 1 after the waiting one? 8 left: FIM 6 first
    packer.finish()
    rows = drain(packer)
    flat = np.concatenate([r["input_ids"] for r in rows]).tolist()
    assert flat[:10] == list(range(100, 107)) + [300, 301, 302]
    assert flat[10:20] == [303, 304] + list(range(200, 206)) + [400, 401]
    assert rows[1]["is_fim"].tolist() == [False] * 2 + [True] * 8
    assert packer.stats["pad_fallbacks"] == 0


def test_bounded_queue_falls_back_to_padding_and_never_straddles():
    rng = np.random.default_rng(1)
    L = 32
    packer = Packer(L, PAD, 1, max_deferred=3)
    fims = []
    for d in range(300):
        if rng.random() < 0.95:
            toks = list(range(1000 * d, 1000 * d + int(rng.integers(5, L + 1))))
            fims.append(toks)
            packer.add(seg(toks, fim=True))
        else:
            packer.add(seg(range(1000 * d, 1000 * d + int(rng.integers(1, 50)))))
        assert len(packer._deferred) <= 3
    packer.finish()
    rows = drain(packer)
    found = []
    for r in rows:
        for d in np.unique(r["doc_ids"][r["is_fim"]]):
            found.append(r["input_ids"][r["is_fim"] & (r["doc_ids"] == d)].tolist())
    assert sorted(found) == sorted(fims)  # every FIM document whole, inside one row
    assert packer.stats["pad_fallbacks"] > 0
    pad = sum(int((r["source_ids"] == PAD_SOURCE).sum()) for r in rows)
    assert pad == packer.stats["pad_tokens"] < 0.2 * len(rows) * L


def test_state_round_trip_mid_stream():
    rng = np.random.default_rng(2)
    segs = [seg(range(int(rng.integers(1, 30))), fim=bool(rng.random() < 0.7) and True) for _ in range(200)]
    segs = [s if not s.fim or len(s) <= 16 else seg(s.tokens[:16], fim=True) for s in segs]

    def run(packer, items):
        out = []
        for s in items:
            packer.add(s)
            out += drain(packer)
        return out
    a = Packer(16, PAD, 1, max_deferred=4)
    run(a, segs[:90])
    state = a.state_dict()
    rest_a = run(a, segs[90:])
    b = Packer(16, PAD, 1, max_deferred=4)
    b.load_state_dict(state)
    rest_b = run(b, segs[90:])
    assert len(rest_a) == len(rest_b) > 0
    for ra, rb in zip(rest_a, rest_b):
        for k in ra:
            assert np.array_equal(ra[k], rb[k]), k


def test_rejects_fim_document_longer_than_a_row():
    with pytest.raises(ValueError, match="cannot fit"):
        Packer(8, PAD, 1).add(seg(range(9), fim=True))
