"""Small tokenizers for tests, trained once and cached on disk (shared by every helper's tests).

    from helpers_tokenizer import small_tokenizer_path, small_tokenizer
    tok = small_tokenizer()                 # data.tokenizer.Tokenizer, 2048 pieces, infilling at 3..6

Both are trained from the running Python's standard library (found via sysconfig), so they exist on
any machine, and are cached under $CODELLAMA_CACHE/test-tokenizers keyed by their recipe. Writes are
atomic (train to a temp name, rename), so parallel test processes can call these at once.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import sysconfig
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from codellama_recipe.data.tokenizer import LLAMA_VOCAB_SIZE, LOSSLESS_CODE_FLAGS, Tokenizer, train_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL_VOCAB_SIZE = 2048
SMALL_TRAIN_BYTES = 2_000_000


def cache_dir() -> pathlib.Path:
    root = os.environ.get("CODELLAMA_CACHE") or str(REPO / ".cache" / "embedded")
    d = pathlib.Path(root) / "test-tokenizers"
    d.mkdir(parents=True, exist_ok=True)
    return d


def stdlib_python_files() -> list[pathlib.Path]:
    """Sorted standard-library .py files, without the test suites and installed packages."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def python_c_headers() -> list[pathlib.Path]:
    """The CPython C headers of the running interpreter (sysconfig's include dir)."""
    root = pathlib.Path(sysconfig.get_paths()["include"])
    return sorted(root.rglob("*.h"))


def _recipe_key(*parts) -> str:
    return hashlib.sha256(repr((spm.__version__,) + parts).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def small_tokenizer_path() -> str:
    """A 2048-piece lossless BPE model with the infilling control pieces (~1 s to train, then cached)."""
    files = stdlib_python_files()
    key = _recipe_key("small", SMALL_VOCAB_SIZE, SMALL_TRAIN_BYTES, [f.name for f in files])
    path = cache_dir() / f"small-{key}.model"
    if not path.exists():
        train_tokenizer(files, str(path)[: -len(".model")], vocab_size=SMALL_VOCAB_SIZE,
                        max_train_bytes=SMALL_TRAIN_BYTES)
    return str(path)


def small_tokenizer() -> Tokenizer:
    return Tokenizer(small_tokenizer_path())


@functools.lru_cache(maxsize=None)
def llama_style_model_path() -> str:
    """A stand-in for Llama 2's tokenizer.model (which is not redistributable and not on the machine):
    32,000 pieces, unk/bos/eos = 0/1/2, the 256 byte pieces at 3..258, BPE, no infilling pieces.

    Training BPE to 32,000 pieces on a few MB of text is slow (and may not reach it), so a 4,000-piece
    model is trained and the proto is padded with NORMAL filler pieces up to 32,000. The fillers have
    the lowest score and strings that no merge sequence can build, so they are never produced; what
    matters for the tests is the piece count and id layout, which then match Llama 2's exactly.
    """
    files = stdlib_python_files()
    key = _recipe_key("llama-style", LLAMA_VOCAB_SIZE, [f.name for f in files])
    path = cache_dir() / f"llama-style-{key}.model"
    if path.exists():
        return str(path)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        text = pathlib.Path(tmp) / "input.txt"
        with text.open("w", encoding="utf-8") as out:
            size = 0
            for f in files:
                chunk = f.read_text(encoding="utf-8", errors="replace")
                out.write(chunk)
                size += len(chunk)
                if size > SMALL_TRAIN_BYTES:
                    break
        flags = dict(LOSSLESS_CODE_FLAGS)
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=f"{tmp}/m", vocab_size=4000,
                                       num_threads=2, minloglevel=2, **flags)
        proto = sp_pb2.ModelProto()
        proto.ParseFromString(pathlib.Path(f"{tmp}/m.model").read_bytes())
        lowest = min(p.score for p in proto.pieces if p.type == proto.SentencePiece.Type.NORMAL)
        i = 0
        while len(proto.pieces) < LLAMA_VOCAB_SIZE:
            filler = proto.pieces.add()
            filler.piece, filler.score = f"<llama_filler_{i}>", lowest - 1.0 - i
            filler.type = proto.SentencePiece.Type.NORMAL
            i += 1
        staged = pathlib.Path(tmp) / "llama-style.model"
        staged.write_bytes(proto.SerializeToString())
        os.replace(staged, path)
    return str(path)
