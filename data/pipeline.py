"""From configured sources to training batches: read -> tokenize (BOS/EOS per document) -> FIM -> mix -> pack.

    loader = build_train_loader(data, tokenizer, rank, world_size, micro_batch_size)
    for batch in loader: ...          # infinite; dict of [B, seq_len] tensors (BATCH_KEYS below)
    loader.state_dict() / loader.load_state_dict(sd) / loader.metrics()

Streams. Each rank runs num_workers logical streams (one per DataLoader worker; one in-process stream
when num_workers == 0). Logical stream (rank, w) reads its shard of every source (data/sources.py),
mixes them by tokens (data/mixture.py), encodes documents (data/fim.py, data/chat.py) and packs
them (data/packing.py) into whole micro-batches. Tokenization happens in the worker processes.

Exact resume. A worker yields each batch together with its logical id and its complete state after
that batch (source positions and epochs, mixture counters, packing buffer and deferral queue,
counters). The main process keeps the latest state per logical worker and the id of the worker whose
batch it handed out last. torch's DataLoader hands out batches round-robin over workers in order, so
on resume physical worker p runs logical stream (p + last + 1) mod num_workers: the round-robin
continues exactly where it stopped, and each stream continues from its own state — nothing is
replayed, and the cost of restoring a position is bounded by one shard (see data/sources.py).
The state records a fingerprint (rank, world size, workers, micro-batch, seq_len, seed, sources,
FIM settings, tokenizer); loading a state with another fingerprint is refused.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
from collections import Counter
from typing import Iterator, Mapping

import numpy as np
import torch

from codellama_recipe.data.fim import FimBuilder, check_tokenizer, fim_plan
from codellama_recipe.data.mixture import TokenMixture
from codellama_recipe.data.packing import PAD_SOURCE, Packer, Segment
from codellama_recipe.data.record_readers import SKIP_REASONS, Document
from codellama_recipe.data.source_files import Location
from codellama_recipe.data.sources import SourceReader
from codellama_recipe.data.chat import encode_dialog
from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import InputError
from codellama_recipe.core.schema import DataConfig, FimConfig, SourceConfig

STATE_VERSION = 1
BATCH_KEYS = ("input_ids", "labels", "loss_mask", "source_ids", "doc_ids", "is_fim")
_BATCH_DTYPES = {"input_ids": torch.long, "labels": torch.long, "loss_mask": torch.bool, "source_ids": torch.long,
                 "doc_ids": torch.long, "is_fim": torch.bool}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

def data_config(data) -> DataConfig:
    """The data settings of a `data` node (a DataConfig, a mapping or an OmegaConf node of its keys), typed
    and validated: what every loader reads."""
    return typed(DataConfig, data, "data").validate()


# ----------------------------------------------------------------------------------------------
# Documents -> token segments
# ----------------------------------------------------------------------------------------------

class DocumentEncoder:
    """BOS + Enc(text) + EOS, or the FIM layout (data/fim.py), or the chat format (data/chat.py)."""

    def __init__(self, tokenizer, fim: FimConfig, seq_len: int, seed: int, apply_fim: bool, counters: Counter):
        self.tokenizer, self.fim, self.seq_len, self.seed = tokenizer, fim, seq_len, seed
        self.apply_fim = apply_fim and fim.enabled
        self.counters = counters
        self.builder = FimBuilder(tokenizer) if self.apply_fim else None

    def encode(self, doc: Document, spec: SourceConfig, source: int) -> Segment:
        tok = self.tokenizer
        if doc.messages is not None:
            tokens, mask = encode_dialog(tok, doc.messages)
            return Segment(np.asarray(tokens, np.int32), source, False, np.asarray(mask, bool))
        text = doc.text
        with_ends = np.asarray(tok.encode(text, bos=True, eos=True), np.int32)
        if self.apply_fim and spec.fim:
            self.counters["fim/considered"] += 1
            plan = fim_plan(self.seed, spec.name, doc.key, len(text), self.fim.rate, self.fim.spm_rate)
            if plan is not None:
                tokens = self.builder.build(text, with_ends[1:-1], plan, bos=self.fim.bos, eos=self.fim.eos,
                                            max_tokens=self.seq_len)
                if tokens is not None:
                    self.counters["fim/transformed"] += 1
                    self.counters["fim/spm"] += int(plan.spm)
                    return Segment(tokens, source, True)
                self.counters["fim/too_long"] += 1
        return Segment(with_ends, source)


# ----------------------------------------------------------------------------------------------
# One logical stream
# ----------------------------------------------------------------------------------------------

class RowStream:
    """Sources -> mixture -> encoder -> packer, for logical stream `stream` of `num_streams`."""

    def __init__(self, plan: DataConfig, tokenizer, locations: list[Location], *, stream: int, num_streams: int,
                 source_indices: list[int] | None = None, num_sources: int | None = None, apply_fim: bool = True,
                 epochs: int | None = None, shuffle: bool = True):
        specs = [loc.spec for loc in locations]
        self.specs = specs
        self.source_indices = source_indices or list(range(len(specs)))
        self.counters: Counter = Counter()
        self.readers = [
            SourceReader(spec, loc, seed=plan.seed, stream=stream, num_streams=num_streams,
                         max_doc_chars=plan.max_doc_chars, strict=plan.strict, counters=self.counters,
                         shuffle=shuffle, epochs=epochs)
            for spec, loc in zip(specs, locations)]
        self.mixture = TokenMixture([s.name for s in specs], [s.weight for s in specs])
        self.encoder = DocumentEncoder(tokenizer, plan.fim, plan.seq_len, plan.seed, apply_fim, self.counters)
        self.packer = Packer(plan.seq_len, tokenizer.pad_id, num_sources or len(specs), plan.fim.max_deferred)
        self.seq_len = plan.seq_len
        self.open: list[tuple[Segment, int] | None] = [None] * len(specs)  # long document + next offset, per source
        self.next_uid = 0
        self.finished = False

    def _fill(self, rows: int) -> None:
        """Documents up to seq_len tokens go to the packer whole; longer ones in pieces that fill the
        current row, the rest waiting (per source) until the mixture picks that source again. So a
        mixture step moves at most seq_len tokens and token shares stay within about one row of the
        weights whatever the document sizes (one 200 kB source file would otherwise skew them).
        A piece that does not directly follow the previous piece of its document starts with that
        piece's last token again, as context only (no loss on it): every token of the document is
        still predicted exactly once, from its true predecessor."""
        packer = self.packer
        while packer.rows_ready() < rows and not self.finished:
            done = {j for j, r in enumerate(self.readers) if r.exhausted and self.open[j] is None}
            if len(done) == len(self.readers):  # finite stream (max_epochs): every source is done
                packer.finish()
                self.finished = True
                break
            i = self.mixture.pick(exclude=done)
            if self.open[i] is None:
                doc = self.readers[i].next_document()
                if doc is None:
                    continue
                try:
                    seg = self.encoder.encode(doc, self.specs[i], self.source_indices[i])
                except Exception as exc:  # noqa: BLE001 - a record the tokenizer cannot take is skipped, counted
                    self.readers[i].skip_at(doc.where, "tokenize_error", f"{type(exc).__name__}: {exc}"[:300])
                    continue
                if len(seg) <= self.seq_len:
                    self.mixture.add(i, len(seg))
                    packer.add(seg)
                    continue
                seg.uid, self.next_uid = self.next_uid, self.next_uid + 1
                self.open[i] = (seg, 0)
            seg, offset = self.open[i]
            start = offset if offset == 0 or packer.last_uid() == seg.uid else offset - 1
            end = min(len(seg), start + packer.remaining())
            targets = np.ones(end - start, bool) if seg.targets is None else seg.targets[start:end].copy()
            targets[:offset - start] = False  # the repeated context token
            piece = Segment(seg.tokens[start:end], seg.source, False, targets, seg.uid)
            self.open[i] = (seg, end) if end < len(seg) else None
            self.mixture.add(i, len(piece))
            packer.add(piece)

    def next_batch(self, batch_size: int) -> dict[str, np.ndarray] | None:
        """`batch_size` rows stacked ([B, T] arrays); fewer at the end of a finite stream; None after it."""
        self._fill(batch_size)
        n = min(batch_size, self.packer.rows_ready())
        if n == 0:
            return None
        rows = [self.packer.pop_row() for _ in range(n)]
        return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}

    def state_dict(self) -> dict:
        return {"readers": [r.state_dict() for r in self.readers], "mixture": self.mixture.state_dict(),
                "packer": self.packer.state_dict(), "counters": dict(self.counters), "finished": self.finished,
                "open": [None if o is None else self._open_state(*o) for o in self.open], "next_uid": self.next_uid}

    @staticmethod
    def _open_state(seg: Segment, offset: int) -> dict:
        keep = max(0, offset - 1)  # tokens before the one that may be repeated are not needed again
        return {"segment": seg.split(keep)[1].to_state(), "offset": offset - keep}

    def load_state_dict(self, state: dict) -> None:
        for reader, s in zip(self.readers, state["readers"], strict=True):
            reader.load_state_dict(s)
        self.mixture.load_state_dict(state["mixture"])
        self.packer.load_state_dict(state["packer"])
        self.counters.clear()
        self.counters.update(state["counters"])
        self.finished = bool(state["finished"])
        self.open = [None if o is None else (Segment.from_state(o["segment"]), int(o["offset"])) for o in state["open"]]
        self.next_uid = int(state["next_uid"])


def to_tensors(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(batch[k])).to(_BATCH_DTYPES[k]) for k in BATCH_KEYS}


# ----------------------------------------------------------------------------------------------
# JSON form of states (numpy arrays as base64)
# ----------------------------------------------------------------------------------------------

def to_jsonable(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.dtype.str, "shape": list(obj.shape),
                "b64": base64.b64encode(np.ascontiguousarray(obj).tobytes()).decode("ascii")}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def from_jsonable(obj):
    if isinstance(obj, Mapping):
        if "__ndarray__" in obj:
            arr = np.frombuffer(base64.b64decode(obj["b64"]), dtype=np.dtype(obj["__ndarray__"]))
            return arr.reshape(obj["shape"]).copy()
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# DataLoader plumbing
# ----------------------------------------------------------------------------------------------

def _identity(x):
    return x


def _leave_stop_signals_to_the_rank(worker_id: int) -> None:
    """worker_init_fn of every DataLoader worker: SIGTERM / SIGUSR1 are ignored here. The rank (the main process)
    decides what a stop signal means: it checkpoints at the next step boundary (train/stop_flag.py). torchrun
    forwards a SIGTERM to the whole process group of each rank (os.killpg), so without this the worker died first
    and the rank failed with 'DataLoader worker … killed by signal: Terminated' instead of checkpointing. The
    workers still end with their rank: it ends them with SIGKILL (_WorkerProcess), or they see their parent gone."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


_PLATFORM_CONTEXT = multiprocessing.get_context()


class _WorkerProcess(_PLATFORM_CONTEXT.Process):
    """A DataLoader worker that its rank ends with SIGKILL: it ignores SIGTERM (above), and both the DataLoader's
    shutdown and multiprocessing's exit handler end a daemonic child with SIGTERM, then wait for it forever."""

    @staticmethod
    def _Popen(process_obj):
        popen = _PLATFORM_CONTEXT.Process._Popen(process_obj)
        popen.terminate = popen.kill   # the workers only read data: nothing to flush
        return popen


class _WorkerContext(type(_PLATFORM_CONTEXT)):
    Process = _WorkerProcess


class _WorkerStreams(torch.utils.data.IterableDataset):
    """What each DataLoader worker runs: its logical stream, from its saved state, batch by batch."""

    def __init__(self, loader: "TrainLoader", states: list, first_logical: int):
        self.loader, self.states, self.first_logical = loader, states, first_logical

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        physical, n = (info.id, info.num_workers) if info is not None else (0, 1)
        logical = (physical + self.first_logical) % n
        stream = self.loader._build_stream(logical)
        if self.states[logical] is not None:
            stream.load_state_dict(self.states[logical])
        while True:
            batch = stream.next_batch(self.loader.micro_batch_size)
            if batch is None:
                return
            yield to_tensors(batch), logical, stream.state_dict()


def _tokenizer_identity(tokenizer) -> dict:
    model_bytes = getattr(tokenizer, "_model_bytes", None)
    path = getattr(tokenizer, "path", None)
    if model_bytes is None and path and os.path.isfile(str(path)):
        with open(path, "rb") as f:
            model_bytes = f.read()
    ident = {"vocab_size": int(tokenizer.vocab_size), "bos": tokenizer.bos_id, "eos": tokenizer.eos_id}
    ident["sha256"] = hashlib.sha256(model_bytes).hexdigest()[:16] if model_bytes else type(tokenizer).__name__
    return ident


class TrainLoader:
    """Infinite iterator of training batches for one rank, with exact state (see module docstring)."""

    def __init__(self, plan: DataConfig, tokenizer, rank: int, world_size: int, micro_batch_size: int):
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"rank={rank} / world_size={world_size}: need 0 <= rank < world_size")
        if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
            raise ValueError(f"micro_batch_size={micro_batch_size!r}: expected an integer >= 1")
        if plan.fim.enabled:
            check_tokenizer(tokenizer)
        self.plan, self.tokenizer = plan, tokenizer
        self.rank, self.world_size, self.micro_batch_size = rank, world_size, micro_batch_size
        self.source_names = plan.source_names
        self.locations = [Location(spec, "train") for spec in plan.sources.values()]
        for loc in self.locations:
            loc.check_fields()
        self.num_logical = max(1, plan.num_workers)
        self._states: list = [None] * self.num_logical
        self._last_worker = self.num_logical - 1
        self._batches = 0
        self._fingerprint = self._make_fingerprint()
        self.pin_memory = False   # the trainer sets it on CUDA: page-locked batches, copied to the GPU asynchronously

    # -- streams ------------------------------------------------------------------------------
    def _build_stream(self, logical: int) -> RowStream:
        return RowStream(self.plan, self.tokenizer, self.locations, stream=self.rank * self.num_logical + logical,
                         num_streams=self.world_size * self.num_logical, epochs=self.plan.max_epochs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Continues from the current state (a fresh loader: from the start)."""
        first = (self._last_worker + 1) % self.num_logical
        dataset = _WorkerStreams(self, list(self._states), first)
        if self.plan.num_workers == 0:
            source = iter(dataset)
        else:
            source = iter(torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=self.plan.num_workers, collate_fn=_identity,
                worker_init_fn=_leave_stop_signals_to_the_rank, multiprocessing_context=_WorkerContext(),
                prefetch_factor=self.plan.prefetch_factor, persistent_workers=False, pin_memory=self.pin_memory))
        for batch, logical, state in source:
            if self.pin_memory and self.plan.num_workers == 0:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            self._states[logical] = state
            self._last_worker = logical
            self._batches += 1
            yield batch

    # -- state --------------------------------------------------------------------------------
    def _make_fingerprint(self) -> dict:
        sources = []
        for spec, loc in zip(self.plan.sources.values(), self.locations):
            d = spec.describe()
            for k in ("paths", "hub", "val_paths", "val_hub"):  # where the files live may change; what they are may not
                d.pop(k)
            d["data"] = loc.identity()
            sources.append(d)
        return json.loads(json.dumps({
            "version": STATE_VERSION, "rank": self.rank, "world_size": self.world_size,
            "num_workers": self.plan.num_workers, "micro_batch_size": self.micro_batch_size,
            "seq_len": self.plan.seq_len, "seed": self.plan.seed, "max_doc_chars": self.plan.max_doc_chars,
            "max_epochs": self.plan.max_epochs, "fim": dataclasses.asdict(self.plan.fim), "sources": sources,
            "tokenizer": _tokenizer_identity(self.tokenizer)}))

    def state_dict(self) -> dict:
        """JSON-serialisable position after the last batch this loader handed out."""
        return {"version": STATE_VERSION, "fingerprint": self._fingerprint, "batches": self._batches,
                "last_worker": self._last_worker, "workers": [to_jsonable(s) for s in self._states]}

    def load_state_dict(self, state: Mapping) -> None:
        state = json.loads(json.dumps(state))
        if state.get("version") != STATE_VERSION:
            raise InputError("data state version", state.get("version"), f"this code reads version {STATE_VERSION}")
        saved, current = state["fingerprint"], self._fingerprint
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            detail = "; ".join(f"{k}: saved {json.dumps(saved.get(k))[:200]} vs now {json.dumps(current.get(k))[:200]}"
                               for k in diff)
            raise InputError("data state", diff, "the checkpoint's data stream was made with a different data "
                                                  f"setup ({detail}). Resume with the same data config, world size, "
                                                  "num_workers and tokenizer, or start the data stream afresh")
        if len(state["workers"]) != self.num_logical:
            raise InputError("data state", len(state["workers"]), f"expected {self.num_logical} worker states")
        self._states = [from_jsonable(s) for s in state["workers"]]
        self._last_worker = int(state["last_worker"])
        self._batches = int(state["batches"])

    # -- metrics ------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        return stream_metrics(self.source_names, [s for s in self._states if s is not None], self.plan.seq_len)


def stream_metrics(source_names: list[str], states: list[dict], seq_len: int) -> dict[str, float]:
    """data/share/<src> (realized token shares of emitted rows), data/tokens/<src>, data/epoch/<src>
    (epochs completed by the most advanced stream), data/skipped/<reason>, data/filtered/<src>,
    data/fim_share (transformed / FIM-enabled documents), data/spm_share, data/fim_too_long (drawn for FIM
    but longer than a row), data/pad_share (padding of the bounded deferral fallback, data/packing.py).
    Shares are per rank; the trainer averages them over ranks and sums the counts."""
    tokens = np.zeros(len(source_names), dtype=np.int64)
    counters: Counter = Counter()
    stats: Counter = Counter()
    epochs = [0] * len(source_names)
    for s in states:
        tokens += np.asarray(s["packer"]["source_tokens"], dtype=np.int64)
        counters.update(s["counters"])
        stats.update({k: v for k, v in s["packer"]["stats"].items() if k != "max_deferred_seen"})
        stats["max_deferred_seen"] = max(stats["max_deferred_seen"], s["packer"]["stats"]["max_deferred_seen"])
        for i, r in enumerate(s["readers"]):
            epochs[i] = max(epochs[i], int(r["epoch"]))
    total = int(tokens.sum())
    out: dict[str, float] = {}
    for i, name in enumerate(source_names):
        out[f"data/share/{name}"] = float(tokens[i] / total) if total else 0.0
        out[f"data/tokens/{name}"] = float(tokens[i])
        out[f"data/epoch/{name}"] = float(epochs[i])
    for reason in SKIP_REASONS:
        out[f"data/skipped/{reason}"] = float(counters.get(f"skipped/{reason}", 0))
    for key, value in counters.items():
        if key.startswith("filtered/"):
            out[f"data/{key}"] = float(value)
    considered = counters.get("fim/considered", 0)
    if considered:
        out["data/fim_share"] = counters.get("fim/transformed", 0) / considered
        out["data/fim_too_long"] = float(counters.get("fim/too_long", 0))
        out["data/spm_share"] = counters.get("fim/spm", 0) / max(1, counters.get("fim/transformed", 0))
    rows = stats.get("rows", 0)
    out["data/pad_share"] = stats.get("pad_tokens", 0) / (rows * seq_len) if rows else 0.0
    return out


def build_train_loader(data, tokenizer, rank: int, world_size: int, micro_batch_size: int) -> TrainLoader:
    return TrainLoader(data_config(data), tokenizer, rank, world_size, micro_batch_size)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

class ValLoader:
    """Finite, deterministic batches of one source's validation split for one rank.

    The split is read in sorted file order, once, without FIM unless data.fim.in_val (then with the
    same per-document decisions as training would make). Rows are numbered globally; batch b of rank
    r holds global rows [(b*W + r)*B, (b*W + r + 1)*B), so the rows evaluated do not depend on the
    world size, and every rank yields the same number of batches (rows after the end of the split are
    all padding with loss off), which keeps collectives in step. Only the last real row is padded.
    Each rank reads the whole split (validation splits are small), and `iter()` restarts from the start.
    """

    def __init__(self, plan: DataConfig, tokenizer, location: Location, source_index: int, num_sources: int,
                 rank: int, world_size: int, micro_batch_size: int, max_batches: int | None):
        self.plan, self.tokenizer, self.location = plan, tokenizer, location
        self.source_index, self.num_sources = source_index, num_sources
        self.rank, self.world_size, self.micro_batch_size, self.max_batches = rank, world_size, micro_batch_size, max_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream = RowStream(self.plan, self.tokenizer, [self.location], stream=0, num_streams=1,
                           source_indices=[self.source_index], num_sources=self.num_sources,
                           apply_fim=self.plan.fim.in_val, epochs=1, shuffle=False)
        B, W, r = self.micro_batch_size, self.world_size, self.rank
        produced = 0
        while self.max_batches is None or produced < self.max_batches:
            group = stream.next_batch(B * W)
            if group is None:
                return
            n = len(group["input_ids"])
            if n < B * W:
                group = {k: np.concatenate([v, self._pad_rows(k, B * W - n)]) for k, v in group.items()}
            yield to_tensors({k: v[r * B:(r + 1) * B] for k, v in group.items()})
            produced += 1

    def _pad_rows(self, key: str, n: int) -> np.ndarray:
        L = self.plan.seq_len
        fill = {"input_ids": self.tokenizer.pad_id, "labels": -100, "loss_mask": False, "source_ids": PAD_SOURCE,
                "doc_ids": 0, "is_fim": False}[key]
        dtype = bool if key in ("loss_mask", "is_fim") else np.int64
        return np.full((n, L), fill, dtype=dtype)


def build_val_loaders(data, tokenizer, rank: int, world_size: int, micro_batch_size: int,
                      max_batches: int | None) -> dict[str, ValLoader]:
    """{source name: finite loader} for the sources that have val_paths or val_hub."""
    plan = data_config(data)
    if plan.fim.enabled and plan.fim.in_val:
        check_tokenizer(tokenizer)
    loaders = {}
    for i, spec in enumerate(plan.sources.values()):
        if not (spec.val_paths or spec.val_hub):
            continue
        location = Location(spec, "val")
        location.check_fields()
        loaders[spec.name] = ValLoader(plan, tokenizer, location, i, len(plan.sources), rank, world_size,
                                       micro_batch_size, max_batches)
    return loaders
