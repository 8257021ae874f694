"""Test helpers for the data pipeline: a byte-level stand-in tokenizer and small corpora on disk.

ByteTokenizer mimics SentencePiece's conventions that matter here, exactly and fast:
encode(s) = one token per UTF-8 byte of " " + s (the implicit leading space), encode_no_space(s) =
the bytes of s, decode drops the leading space. Ids: unk 0, BOS 1, EOS 2, <PRE> 3, <SUF> 4, <MID> 5,
<EOT> 6, byte b -> 7 + b. Expected token sequences can therefore be written by hand.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np

BYTE0 = 7


class ByteTokenizer:
    vocab_size = BYTE0 + 256
    unk_id, bos_id, eos_id, pad_id = 0, 1, 2, 2
    prefix_id, suffix_id, middle_id, eot_id = 3, 4, 5, 6
    has_infilling = True
    path = None
    _SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 3: "▁<PRE>", 4: "▁<SUF>", 5: "▁<MID>", 6: "▁<EOT>"}

    def __init__(self, infilling: bool = True):
        if not infilling:
            self.has_infilling = False
            self.prefix_id = self.suffix_id = self.middle_id = self.eot_id = None

    @staticmethod
    def _bytes(s: str) -> list[int]:
        return (np.frombuffer(s.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE0).tolist()

    def encode(self, s: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._bytes(" " + s) if s else []
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_no_space(self, s: str) -> list[int]:
        return self._bytes(s)

    def decode(self, ids) -> str:
        text = self.decode_no_space(ids)
        return text[1:] if text.startswith(" ") else text

    def decode_no_space(self, ids) -> str:
        return bytes(i - BYTE0 for i in ids if i >= BYTE0).decode("utf-8", errors="replace")

    def piece(self, i: int) -> str:
        i = int(i)
        if i in self._SPECIAL:
            return self._SPECIAL[i]
        b = i - BYTE0
        return "▁" if b == 32 else (chr(b) if 32 < b < 127 else f"<0x{b:02X}>")


def text_of(i: int, source: str = "doc", min_len: int = 20, spread: int = 200) -> str:
    """A distinct, deterministic document of varying length."""
    rng = np.random.default_rng(i + 7919 * len(source))
    n = min_len + int(rng.integers(0, spread))
    words = ["def", "return", "x", "for", "in", "range", "print", "class", "self", "==", "(", ")", ":", "\n    "]
    body = " ".join(words[j] for j in rng.integers(0, len(words), size=n // 4 + 1))
    return f"# {source} {i}\n{body}"


def write_jsonl(path: pathlib.Path, texts, field: str = "text") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t}) + "\n")
    return path


def make_corpus(root: pathlib.Path, sources: dict[str, tuple[int, int]], spread: int = 200) -> dict[str, list[str]]:
    """{source: (num_files, docs_per_file)} -> files root/<source>/train-NNNNN.jsonl; returns the texts."""
    out = {}
    for name, (num_files, per_file) in sources.items():
        texts = []
        for f in range(num_files):
            chunk = [text_of(f * per_file + k, name, spread=spread) for k in range(per_file)]
            write_jsonl(root / name / f"train-{f:05d}.jsonl", chunk)
            texts += chunk
        out[name] = texts
    return out


def data_cfg(root: pathlib.Path, weights: dict[str, float], **overrides) -> dict:
    cfg = {
        "seq_len": 64, "seed": 0, "num_workers": 0, "max_doc_chars": 100_000, "strict": False,
        "fim": {"enabled": False},
        "sources": {name: {"weight": w, "paths": [str(root / name / "train-*.jsonl")]} for name, w in weights.items()},
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def digest(tokens) -> str:
    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()


def split_documents(batches, bos_id: int = 1) -> list[list[int]]:
    """Token sequences of the documents in packed batches of one logical stream, in stream order:
    the rows' input tokens laid end to end, padding dropped, cut before every BOS (every plain and
    FIM document starts with one)."""
    docs = []
    for batch in batches:
        ids, srcs = batch["input_ids"].numpy(), batch["source_ids"].numpy()
        for row_ids, row_srcs in zip(ids, srcs):
            for t in row_ids[row_srcs >= 0].tolist():
                if t == bos_id or not docs:
                    docs.append([])
                docs[-1].append(t)
    return docs


def make_mixed_corpus(root: pathlib.Path) -> dict:
    """Every kind of source at once; returns data.sources for them.
    code: 6 .jsonl files (some documents longer than a 64-token row); nl: 2 .jsonl.gz files;
    nl_code: 1 parquet file in 2 row groups with a `lang` column (filter keeps "en");
    instruct: chat rows (single and multi-turn, some with a system prompt); prose: 5 plain .txt files."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in range(6):
        write_jsonl(root / "code" / f"train-{f:05d}.jsonl",
                    [text_of(f * 40 + k, "code", min_len=4, spread=120 if k % 5 else 400) for k in range(40)])
    (root / "nl").mkdir(parents=True, exist_ok=True)
    for f in range(2):
        with gzip.open(root / "nl" / f"train-{f:05d}.jsonl.gz", "wt", encoding="utf-8") as out:
            for k in range(30):
                out.write(json.dumps({"text": text_of(f * 30 + k, "nl", min_len=4, spread=60)}) + "\n")
    (root / "nl_code").mkdir(parents=True, exist_ok=True)
    rows = [{"text": text_of(k, "nl_code", min_len=4, spread=80), "lang": "en" if k % 3 else "fr"} for k in range(50)]
    pq.write_table(pa.Table.from_pylist(rows), root / "nl_code" / "train-00000.parquet", row_group_size=25)
    dialogs = []
    for k in range(30):
        msgs = [{"role": "user", "content": f"question {k}: {text_of(k, 'q', min_len=2, spread=10)}"},
                {"role": "assistant", "content": text_of(k, "a", min_len=2, spread=30)}]
        if k % 3 == 0:
            msgs += [{"role": "user", "content": f"and then {k}?"}, {"role": "assistant", "content": f"then {k}."}]
        if k % 4 == 0:
            msgs = [{"role": "system", "content": "be brief"}] + msgs
        dialogs.append(json.dumps({"messages": msgs}))
    (root / "instruct").mkdir(parents=True, exist_ok=True)
    (root / "instruct" / "train-00000.jsonl").write_text("\n".join(dialogs) + "\n")
    (root / "prose").mkdir(parents=True, exist_ok=True)
    for f in range(5):
        (root / "prose" / f"doc{f}.txt").write_text(text_of(f, "prose", min_len=4, spread=30))
    return {
        "code": {"weight": 0.5, "paths": [str(root / "code" / "*.jsonl")]},
        "nl": {"weight": 0.1, "paths": [str(root / "nl" / "*.jsonl.gz")]},
        "nl_code": {"weight": 0.15, "paths": [str(root / "nl_code" / "*.parquet")],
                    "filters": [{"field": "lang", "values": ["en"]}]},
        "instruct": {"weight": 0.2, "format": "chat", "paths": [str(root / "instruct" / "*.jsonl")]},
        "prose": {"weight": 0.1, "paths": [str(root / "prose" / "*.txt")]},
    }
