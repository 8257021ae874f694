"""SentencePiece tokenizer with Code Llama's infilling pieces.

Three things live here:
- `Tokenizer`: a thin wrapper over a SentencePiece model with the interface the reference Code Llama
  tokenizer has (encode/decode, the suppressed-leading-space variants, BOS/EOS and infilling ids).
- `train_tokenizer`: trains the small BPE model of the embedded default, lossless on source code.
- `extend_with_infilling`: turns a Llama-2-style 32,000-piece model into Code Llama's 32,016-piece
  layout (▁<PRE>/▁<SUF>/▁<MID>/▁<EOT> at 32007..32010).

The infilling pieces are CONTROL pieces: SentencePiece never produces them from text, so a document
containing the literal text "<PRE>" encodes to ordinary pieces; the FIM code inserts them by id.
"""
from __future__ import annotations

import pathlib
import tempfile
import time
from typing import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from codellama_recipe.core.atomic import write_bytes_atomic
from codellama_recipe.core.errors import InputFileError

PREFIX_PIECE, SUFFIX_PIECE, MIDDLE_PIECE, EOT_PIECE = "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"
INFILLING_PIECES = (PREFIX_PIECE, SUFFIX_PIECE, MIDDLE_PIECE, EOT_PIECE)

# The reference suppresses SentencePiece's implicit leading space by encoding this sentinel in front
# of the text and dropping the sentinel's tokens (and decodes the inverse way).
NO_SPACE_SENTINEL = "☺"

LLAMA_VOCAB_SIZE = 32000
CODE_LLAMA_VOCAB_SIZE = 32016
CODE_LLAMA_INFILLING_IDS = {PREFIX_PIECE: 32007, SUFFIX_PIECE: 32008, MIDDLE_PIECE: 32009, EOT_PIECE: 32010}

_TYPE = sp_pb2.ModelProto.SentencePiece.Type


def _load_model_proto(model_path) -> sp_pb2.ModelProto:
    """Parse a SentencePiece model file; one clear ValueError when it is not one."""
    path = pathlib.Path(model_path)
    if not path.is_file():
        raise InputFileError(path, None, "tokenizer model does not exist (expected a SentencePiece .model file)")
    proto = sp_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError (and occasionally others) on garbage
        raise InputFileError(path, None, f"is not a SentencePiece model (protobuf parse failed: {exc})") from None
    if len(proto.pieces) == 0:
        raise InputFileError(path, None, "is not a SentencePiece model (no pieces in the file)")
    return proto


def _as_int_list(ids) -> list[int]:
    """Lists, tuples, numpy arrays and torch tensors of ids alike."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class Tokenizer:
    """SentencePiece model + Code Llama conventions.

    pad_id: the model's own pad piece when it has one; Llama and Code Llama have none (pad_id -1 in
    their trainer spec), and then pad_id == eos_id. Padded positions are never trained on (labels -100)
    and are masked in attention, so reusing EOS is safe and keeps embedding tables at vocab_size.
    """

    def __init__(self, model_path):
        self.path = str(model_path)
        proto = _load_model_proto(model_path)
        self._init_from_bytes(proto.SerializeToString())

    def _init_from_bytes(self, model_bytes: bytes) -> None:
        self._model_bytes = model_bytes
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_bytes)
        except Exception as exc:
            raise ValueError(f"{self.path!r} is not a usable SentencePiece model: {exc}") from None
        self._sp = sp
        self.vocab_size: int = sp.get_piece_size()
        self.bos_id: int = sp.bos_id()
        self.eos_id: int = sp.eos_id()
        self.unk_id: int = sp.unk_id()
        self.pad_id: int = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id
        self.prefix_id = self._piece_id_or_none(PREFIX_PIECE)
        self.suffix_id = self._piece_id_or_none(SUFFIX_PIECE)
        self.middle_id = self._piece_id_or_none(MIDDLE_PIECE)
        self.eot_id = self._piece_id_or_none(EOT_PIECE)
        self.has_infilling = None not in (self.prefix_id, self.suffix_id, self.middle_id, self.eot_id)
        self._sentinel_ids = sp.encode(NO_SPACE_SENTINEL)
        self._no_dummy_prefix_sp = None  # built lazily, only if the sentinel trick ever fails

    def _piece_id_or_none(self, piece: str):
        pid = self._sp.piece_to_id(piece)
        # piece_to_id answers unk_id for unknown pieces.
        return None if pid == self._sp.unk_id() and piece != self._sp.id_to_piece(pid) else pid

    # Tokenizers travel to DataLoader worker processes: pickle the model bytes, not the C++ object.
    def __getstate__(self):
        return {"path": self.path, "model_bytes": self._model_bytes}

    def __setstate__(self, state):
        self.path = state["path"]
        self._init_from_bytes(state["model_bytes"])

    def __repr__(self):
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, has_infilling={self.has_infilling})"

    def encode(self, s: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(s, str):
            raise TypeError(f"Tokenizer.encode expects str, got {type(s).__name__}")
        ids = self._sp.encode(s)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(_as_int_list(ids))

    def encode_no_space(self, s: str) -> list[int]:
        """Encode without the implicit leading space (for FIM middles and suffixes)."""
        ids = self._sp.encode(NO_SPACE_SENTINEL + s)
        k = len(self._sentinel_ids)
        if ids[:k] == self._sentinel_ids:
            return ids[k:]
        # The sentinel merged with the text that follows (possible only in a vocabulary that has
        # pieces starting with "☺"): fall back to the same model with the dummy prefix switched off.
        return self._no_dummy_prefix().encode(s)

    def decode_no_space(self, ids: Sequence[int]) -> str:
        """Inverse of encode_no_space: the first token's leading "▁" is kept as a real space."""
        text = self._sp.decode(self._sentinel_ids + _as_int_list(ids))
        if not text.startswith(NO_SPACE_SENTINEL):  # cannot happen for a sane model; be explicit
            raise ValueError(f"decode_no_space: sentinel {NO_SPACE_SENTINEL!r} was not decoded first")
        return text[len(NO_SPACE_SENTINEL):]

    def piece(self, id: int) -> str:
        return self._sp.id_to_piece(int(id))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def is_control(self, id: int) -> bool:
        return self._sp.is_control(int(id))

    def _no_dummy_prefix(self) -> spm.SentencePieceProcessor:
        if self._no_dummy_prefix_sp is None:
            proto = sp_pb2.ModelProto()
            proto.ParseFromString(self._model_bytes)
            proto.normalizer_spec.add_dummy_prefix = False
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(proto.SerializeToString())
            self._no_dummy_prefix_sp = sp
        return self._no_dummy_prefix_sp


# ----------------------------------------------------------------------------------------------
# Training the embedded default
# ----------------------------------------------------------------------------------------------

DEFAULT_VOCAB_SIZE = 4096
DEFAULT_MAX_TRAIN_BYTES = 12_000_000

# Flags chosen so that decode(encode(s)) == s for source code (see README fragment for the why):
LOSSLESS_CODE_FLAGS = dict(
    model_type="bpe",
    normalization_rule_name="identity",   # no NFKC: code must come back byte for byte
    remove_extra_whitespaces=False,       # keep runs of spaces, leading/trailing whitespace
    add_dummy_prefix=True,                # as Llama: the implicit leading space encode_no_space removes
    allow_whitespace_only_pieces=True,    # indentation runs ("▁▁▁▁") become single pieces
    split_digits=True,                    # as Llama: numbers are digit sequences
    byte_fallback=True,                   # as Llama: any character survives as UTF-8 byte pieces
    character_coverage=0.9999,            # rare characters go to byte fallback instead of the vocab
    max_sentence_length=16384,            # long source lines are kept for training, not dropped
    unk_id=0, bos_id=1, eos_id=2, pad_id=-1,  # Llama's ids
)


def _iter_training_texts(input_files: Iterable) -> Iterable[str]:
    """Plain text files as they are; .jsonl files (the embedded corpus) by their text/messages."""
    import json

    for f in input_files:
        path = pathlib.Path(f)
        if not path.is_file():
            raise ValueError(f"tokenizer training input {str(path)!r} does not exist")
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    row = json.loads(line)
                    if "text" in row:
                        yield row["text"]
                    for m in row.get("messages", ()):
                        yield m["content"]
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def train_tokenizer(
    input_files: Iterable,
    model_prefix,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_train_bytes: int = DEFAULT_MAX_TRAIN_BYTES,
    num_threads: int = 2,
    verbose: bool = False,
) -> str:
    """Train a small BPE SentencePiece model with the infilling pieces; returns "<prefix>.model".

    Input is read in the given order and cut at `max_train_bytes` so training time is bounded (the
    whole input is used, no sampling: the result is a pure function of the input). Lines are the
    training "sentences" (SentencePiece's unit), which is also how indentation pieces get learned.
    The model is written atomically (core.atomic), so concurrent readers never see half a file.
    """
    if vocab_size < 512:
        raise ValueError(f"vocab_size={vocab_size} is too small; byte fallback alone needs 256 pieces, use >= 512")
    model_prefix = str(model_prefix)
    out_dir = pathlib.Path(model_prefix).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tok-train-") as tmp:
        text_path = pathlib.Path(tmp) / "input.txt"
        written = 0
        with text_path.open("w", encoding="utf-8") as out:
            for text in _iter_training_texts(input_files):
                lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
                if not lines:
                    continue
                chunk = "\n".join(lines) + "\n"
                out.write(chunk)
                written += len(chunk.encode("utf-8"))
                if written >= max_train_bytes:
                    break
        if written == 0:
            raise ValueError("tokenizer training input is empty (no non-blank lines in the given files)")
        tmp_prefix = str(pathlib.Path(tmp) / "model")
        start = time.perf_counter()
        spm.SentencePieceTrainer.train(
            input=str(text_path),
            model_prefix=tmp_prefix,
            vocab_size=vocab_size,
            # Control pieces at ids 3..6, then the 256 byte pieces; the sentinel of encode_no_space is a
            # user-defined piece so it never merges with the text after it (the reference's [2:] holds).
            control_symbols=list(INFILLING_PIECES),
            user_defined_symbols=[NO_SPACE_SENTINEL],
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=num_threads,
            minloglevel=0 if verbose else 2,
            **LOSSLESS_CODE_FLAGS,
        )
        elapsed = time.perf_counter() - start
        final = model_prefix + ".model"
        write_bytes_atomic(final, _without_temporary_paths(tmp_prefix + ".model", pathlib.Path(model_prefix).name))
        write_bytes_atomic(model_prefix + ".vocab", pathlib.Path(tmp_prefix + ".vocab").read_bytes())
    if verbose:
        print(f"trained {vocab_size}-piece BPE on {written / 1e6:.1f} MB in {elapsed:.1f}s -> {final}")
    return final


def _without_temporary_paths(model_file: str, name: str) -> bytes:
    """The trainer records its input file and output prefix (here: random temp paths) in the model;
    replace them so identical inputs give byte-identical model files."""
    proto = _load_model_proto(model_file)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = name
    return proto.SerializeToString()


# ----------------------------------------------------------------------------------------------
# Extending a Llama 2 tokenizer to Code Llama's layout
# ----------------------------------------------------------------------------------------------

def _code_llama_added_pieces() -> list[str]:
    """The 16 pieces appended after Llama's 32,000: reserved fillers with the infilling pieces at
    32007..32010, as in Code Llama's released tokenizer (llama.cpp and others hard-code those ids)."""
    added = [f"<reserved_{LLAMA_VOCAB_SIZE + i}>" for i in range(CODE_LLAMA_VOCAB_SIZE - LLAMA_VOCAB_SIZE)]
    for piece, pid in CODE_LLAMA_INFILLING_IDS.items():
        added[pid - LLAMA_VOCAB_SIZE] = piece
    return added


def extend_with_infilling(src_model, dst_model) -> str:
    """Write a copy of `src_model` with Code Llama's 16 extra pieces appended (CONTROL type, so never
    produced from text). A model that already has the four infilling pieces is copied unchanged."""
    proto = _load_model_proto(src_model)
    existing = {p.piece: i for i, p in enumerate(proto.pieces)}
    dst = pathlib.Path(dst_model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if all(p in existing for p in INFILLING_PIECES):
        data = proto.SerializeToString()
    else:
        if len(proto.pieces) != LLAMA_VOCAB_SIZE:
            raise ValueError(
                f"{str(src_model)!r} has {len(proto.pieces)} pieces; extending to Code Llama's layout needs a "
                f"Llama-2-style model with exactly {LLAMA_VOCAB_SIZE} pieces (infilling ids 32007..32010)")
        clashes = [p for p in _code_llama_added_pieces() if p in existing]
        if clashes:
            raise ValueError(f"{str(src_model)!r} already has piece(s) {clashes}; refusing to add duplicates")
        for piece in _code_llama_added_pieces():
            new = proto.pieces.add()
            new.piece, new.score, new.type = piece, 0.0, _TYPE.CONTROL
        data = proto.SerializeToString()
    write_bytes_atomic(dst, data)
    return str(dst)
