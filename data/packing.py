"""Packing encoded documents into fixed-length training rows with next-token labels.

The documents are laid end to end into one token stream; row k is stream[k*L : (k+1)*L] as input
and stream[k*L+1 : (k+1)*L+1] as labels (so consecutive rows overlap by one token and every stream
token is a label exactly once). Long documents simply continue into the next row; there is no
padding, except at the very end of a finite stream and in the bounded fallback below.

A label is trained (loss_mask True) when its token is a target of its document (all tokens of plain
and FIM documents; answers + EOS of chat documents) and it belongs to the same document as the input
token that predicts it (the first token of a document, BOS, is never predicted from the previous one).
Segments given to the packer are documents or pieces of one (same `uid`): adjacent pieces of one
document count as one document (one doc id, labels across the joint trained).

FIM documents must not straddle two rows (paper §2.3: only documents not cut across contexts are transformed).
When one does not fit in what is left of the current row it waits in a deferral queue while the row
is filled with splittable documents; after every document, queued FIM documents that now fit are
placed first-fit in arrival order. Bounded-queue fallback: when more than `max_deferred` documents
wait (a stream with too few splittable documents, e.g. FIM rate 1.0 on short files), the rest of the
current row is padded (pad tokens, loss off, source id -1) and the queue is placed into fresh rows.
That padding is counted (metric data/pad_share) and is the only padding a training stream has.
"""
from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

PAD_SOURCE = -1


@dataclasses.dataclass
class Segment:
    """One encoded document."""
    tokens: np.ndarray                 # int32
    source: int                        # index into the source names; PAD_SOURCE for padding
    fim: bool = False
    targets: np.ndarray | None = None  # bool per token: may be a label (None: every token)
    uid: int = -1                      # pieces of one document share it (>= 0); -1: a document of its own

    def __len__(self):
        return len(self.tokens)

    def split(self, n: int) -> tuple["Segment", "Segment"]:
        """The first n tokens and the rest, as pieces of the same document."""
        t = self.targets
        return (Segment(self.tokens[:n], self.source, self.fim, None if t is None else t[:n], self.uid),
                Segment(self.tokens[n:], self.source, self.fim, None if t is None else t[n:], self.uid))

    def to_state(self) -> dict:
        return {"tokens": self.tokens, "source": self.source, "fim": self.fim, "targets": self.targets, "uid": self.uid}

    @classmethod
    def from_state(cls, d: dict) -> "Segment":
        return cls(np.asarray(d["tokens"], dtype=np.int32), int(d["source"]), bool(d["fim"]),
                   None if d["targets"] is None else np.asarray(d["targets"], dtype=bool), int(d.get("uid", -1)))


class Packer:
    def __init__(self, seq_len: int, pad_id: int, num_sources: int, max_deferred: int = 16):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.seq_len, self.pad_id, self.num_sources, self.max_deferred = seq_len, pad_id, num_sources, max_deferred
        self._pending: list[list] = []     # [segment, start offset] covering stream[row_start : end]
        self._pending_len = 0
        self._deferred: list[Segment] = []
        self._rows: deque = deque()
        self.stats = {"rows": 0, "pad_tokens": 0, "fim_docs": 0, "docs": 0, "pad_fallbacks": 0, "max_deferred_seen": 0}
        self.source_tokens = np.zeros(num_sources, dtype=np.int64)

    # -- feeding ------------------------------------------------------------------------------
    def last_uid(self) -> int:
        """uid of the segment the stream currently ends with (-1: none, or a whole document)."""
        return self._pending[-1][0].uid if self._pending else -1

    def remaining(self) -> int:
        """Room left in the row the next token goes to."""
        return self.seq_len - (self._pending_len % self.seq_len)

    def add(self, seg: Segment) -> None:
        if seg.fim:
            if len(seg) > self.seq_len:
                raise ValueError(f"a FIM document of {len(seg)} tokens cannot fit a {self.seq_len}-token row")
            if len(seg) <= self.remaining() and not self._deferred:
                self._append(seg)
            else:
                self._deferred.append(seg)
                self.stats["max_deferred_seen"] = max(self.stats["max_deferred_seen"], len(self._deferred))
            while len(self._deferred) > self.max_deferred:
                self._pad_row()
                self._place_deferred()
        else:
            self._append(seg)
        self._place_deferred()

    def finish(self) -> None:
        """End of a finite stream: place what waits, pad the last row, make it available."""
        while self._deferred:
            self._place_deferred()
            if self._deferred:
                self._pad_row()
        # A last row is emitted only if it holds a trainable label: its single overlap token, if that is
        # all, was already the label of the previous row and would predict nothing but padding.
        if self._pending_len >= 2 and self._real_tokens_pending():
            self._append(Segment(np.full(self.seq_len + 1 - self._pending_len, self.pad_id, np.int32), PAD_SOURCE,
                                 targets=np.zeros(self.seq_len + 1 - self._pending_len, bool)), pad=True)
        self._pending, self._pending_len = [], 0

    def _real_tokens_pending(self) -> bool:
        return any(seg.source != PAD_SOURCE for seg, _ in self._pending)

    def _place_deferred(self) -> None:
        placed = True
        while placed and self._deferred:
            placed = False
            room = self.remaining()
            for i, seg in enumerate(self._deferred):
                if len(seg) <= room:
                    del self._deferred[i]
                    self._append(seg)
                    placed = True
                    break

    def _pad_row(self) -> None:
        room = self.remaining()
        if room < self.seq_len:
            self.stats["pad_fallbacks"] += 1
            self._append(Segment(np.full(room, self.pad_id, np.int32), PAD_SOURCE, targets=np.zeros(room, bool)), pad=True)

    def _append(self, seg: Segment, pad: bool = False) -> None:
        if not pad:
            self.stats["docs"] += 1
            self.stats["fim_docs"] += int(seg.fim)
        self._pending.append([seg, 0])
        self._pending_len += len(seg)
        while self._pending_len >= self.seq_len + 1:
            self._rows.append(self._take_row())

    # -- rows ---------------------------------------------------------------------------------
    def _take_row(self) -> dict:
        """Row from the first seq_len + 1 pending tokens (numpy slices; no per-token Python)."""
        L = self.seq_len
        need = L + 1
        toks, tgts, srcs, fims, lens, newdoc = [], [], [], [], [], []
        any_targets = False
        prev_uid = -1
        for seg, start in self._pending:
            n = min(len(seg) - start, need)
            toks.append(seg.tokens[start:start + n])
            tgts.append(seg.targets if seg.targets is None else seg.targets[start:start + n])
            any_targets = any_targets or seg.targets is not None
            srcs.append(seg.source)
            fims.append(seg.fim)
            lens.append(n)
            newdoc.append(seg.uid < 0 or seg.uid != prev_uid)  # adjacent pieces of one document: one doc id
            prev_uid = seg.uid
            need -= n
            if need == 0:
                break
        window = np.concatenate(toks)
        docnum = np.repeat(np.cumsum(newdoc) - 1, lens)
        source = np.repeat(np.asarray(srcs, dtype=np.int64), lens)
        is_fim = np.repeat(np.asarray(fims, dtype=bool), lens)
        loss_mask = docnum[1:] == docnum[:-1]
        if any_targets:
            targets = np.concatenate([np.ones(n, bool) if t is None else t for t, n in zip(tgts, lens)])
            loss_mask &= targets[1:]
        labels = np.where(loss_mask, window[1:], -100)
        src = source[:L]
        real = src >= 0
        n_real = int(real.sum())
        self.source_tokens += np.bincount(src[real] if n_real < L else src, minlength=self.num_sources)
        self.stats["pad_tokens"] += L - n_real
        self.stats["rows"] += 1
        self._drop(L)
        return {"input_ids": window[:L], "labels": labels, "loss_mask": loss_mask, "source_ids": src,
                "doc_ids": docnum[:L], "is_fim": is_fim[:L]}

    def _drop(self, n: int) -> None:
        self._pending_len -= n
        while n:
            entry = self._pending[0]
            left = len(entry[0]) - entry[1]
            if left <= n:
                self._pending.pop(0)
                n -= left
            else:
                entry[1] += n
                n = 0

    def rows_ready(self) -> int:
        return len(self._rows)

    def pop_row(self) -> dict:
        return self._rows.popleft()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything not yet emitted as a row (rows already built but not yet popped included)."""
        return {
            "pending": [{"segment": seg.to_state(), "start": start} for seg, start in self._pending],
            "deferred": [seg.to_state() for seg in self._deferred],
            "rows": [dict(r) for r in self._rows],
            "stats": dict(self.stats),
            "source_tokens": self.source_tokens.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = [[Segment.from_state(p["segment"]), int(p["start"])] for p in state["pending"]]
        self._pending_len = sum(len(seg) - start for seg, start in self._pending)
        self._deferred = [Segment.from_state(d) for d in state["deferred"]]
        self._rows = deque({k: np.asarray(v) for k, v in r.items()} for r in state["rows"])
        self.stats = dict(state["stats"])
        self.source_tokens = np.asarray(state["source_tokens"], dtype=np.int64)
