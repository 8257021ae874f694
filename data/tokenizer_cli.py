"""`codellama-tokenizer`: train the embedded-default tokenizer, extend a Llama 2 tokenizer, inspect one.

    codellama-tokenizer train OUT.model [FILES ...] [--vocab-size 4096] [--max-bytes 12000000]
        FILES: plain text / source files, or .jsonl corpus shards (their "text"/"messages" fields).
        Without FILES: the train split of the embedded corpus (built first if missing).
    codellama-tokenizer extend LLAMA2_TOKENIZER.model OUT.model
        Appends Code Llama's 16 pieces (▁<PRE> ▁<SUF> ▁<MID> ▁<EOT> at 32007..32010).
    codellama-tokenizer info MODEL [--text "some text"]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from codellama_recipe.data.tokenizer import (DEFAULT_MAX_TRAIN_BYTES, DEFAULT_VOCAB_SIZE, Tokenizer, extend_with_infilling,
                            train_tokenizer)


def _model_prefix(out: str) -> str:
    return out[: -len(".model")] if out.endswith(".model") else out


def _cmd_train(args) -> int:
    files = args.files
    if not files:
        from codellama_recipe.data.embedded.cache import corpus_train_files, ensure_corpus
        files = corpus_train_files(ensure_corpus(args.cache_dir))
    start = time.perf_counter()
    path = train_tokenizer(files, _model_prefix(args.out), vocab_size=args.vocab_size,
                           max_train_bytes=args.max_bytes, num_threads=args.threads, verbose=args.verbose)
    print(f"wrote {path} ({args.vocab_size} pieces, {time.perf_counter() - start:.1f}s)")
    return 0


def _cmd_extend(args) -> int:
    path = extend_with_infilling(args.src, args.out)
    tok = Tokenizer(path)
    print(f"wrote {path}: vocab {tok.vocab_size}, <PRE> {tok.prefix_id} <SUF> {tok.suffix_id} "
          f"<MID> {tok.middle_id} <EOT> {tok.eot_id}")
    return 0


def _cmd_info(args) -> int:
    tok = Tokenizer(args.model)
    info = {"path": tok.path, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
            "pad_id": tok.pad_id, "unk_id": tok.unk_id, "has_infilling": tok.has_infilling,
            "prefix_id": tok.prefix_id, "suffix_id": tok.suffix_id, "middle_id": tok.middle_id,
            "eot_id": tok.eot_id}
    if args.text is not None:
        ids = tok.encode(args.text)
        info["ids"] = ids
        info["pieces"] = [tok.piece(i) for i in ids]
        info["round_trip_exact"] = tok.decode(ids) == args.text
    print(json.dumps(info, ensure_ascii=False, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codellama-tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a small lossless BPE model with the infilling pieces")
    t.add_argument("out", help="output model path (OUT.model; OUT.vocab is written next to it)")
    t.add_argument("files", nargs="*", help="text/source files or .jsonl shards (default: embedded corpus)")
    t.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    t.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_TRAIN_BYTES,
                   help="stop reading input after this many bytes (bounds training time)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--cache-dir", default=None, help="embedded corpus cache (default $CODELLAMA_CACHE)")
    t.add_argument("-v", "--verbose", action="store_true")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("extend", help="add Code Llama's infilling pieces to a 32,000-piece Llama 2 model")
    e.add_argument("src")
    e.add_argument("out")
    e.set_defaults(func=_cmd_extend)

    i = sub.add_parser("info", help="print ids of the special pieces (and the encoding of --text)")
    i.add_argument("model")
    i.add_argument("--text", default=None)
    i.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"codellama-tokenizer: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
