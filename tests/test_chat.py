"""Chat template ([INST] … [/INST], <<SYS>> block) and the answer-only loss of instruct batches."""
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_tokenizer import small_tokenizer  # noqa: E402

from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.data.chat import encode_dialog, encode_dialog_prompt  # noqa: E402

pytestmark = pytest.mark.timeout(60)

DIALOG = [
    {"role": "system", "content": " Answer with code. "},
    {"role": "user", "content": "Reverse a list in Python."},
    {"role": "assistant", "content": "Use `xs[::-1]`.\n"},
    {"role": "user", "content": "And sort it?"},
    {"role": "assistant", "content": "def f(xs):\n    return sorted(xs)"},
]


def test_llama2_chat_layout_and_mask():
    tok = small_tokenizer()
    tokens, mask = encode_dialog(tok, DIALOG)
    assert len(tokens) == len(mask)
    # written out from RECIPE.md §6, independently: BOS/EOS per turn, system block in the first user turn
    want_tokens, want_mask = [], []
    turns = [("[INST] <<SYS>>\nAnswer with code.\n<</SYS>>\n\nReverse a list in Python. [/INST]", "Use `xs[::-1]`."),
             ("[INST] And sort it? [/INST]", "def f(xs):\n    return sorted(xs)")]
    for prompt, answer in turns:
        p = [tok.bos_id] + tok.encode(prompt)
        a = tok.encode(answer) + [tok.eos_id]
        want_tokens += p + a
        want_mask += [0] * len(p) + [1] * len(a)
    assert tokens == want_tokens and mask == want_mask
    # the masked tokens decode to exactly the answers, each closed by EOS
    answer_tokens = [t for t, m in zip(tokens, mask) if m]
    ends = [i for i, t in enumerate(answer_tokens) if t == tok.eos_id]
    assert len(ends) == 2 and ends[-1] == len(answer_tokens) - 1
    assert tok.decode(answer_tokens[:ends[0]]) == "Use `xs[::-1]`."
    assert tok.decode(answer_tokens[ends[0] + 1:ends[1]]) == "def f(xs):\n    return sorted(xs)"
    # the inference prompt is the training prefix up to the last answer
    prompt = encode_dialog_prompt(tok, DIALOG[:-1])
    assert tokens[:len(prompt)] == prompt and mask[len(prompt)] == 1


def test_system_argument_and_role_checks():
    tok = small_tokenizer()
    a = encode_dialog(tok, DIALOG[1:3], system="Answer with code.")
    b = encode_dialog(tok, DIALOG[:3])
    assert a == b
    with pytest.raises(ValueError, match="alternate"):
        encode_dialog(tok, [DIALOG[2], DIALOG[1]])
    with pytest.raises(ValueError, match="alternate"):
        encode_dialog(tok, DIALOG[:2])  # no answer to train on
    with pytest.raises(ValueError, match="both"):
        encode_dialog(tok, DIALOG[:3], system="x")


def test_instruct_batches_train_exactly_on_answers_and_eos(tmp_path):
    """Through the whole pipeline (packing, rows cut mid-dialog): the labels that carry a loss are
    exactly the answer tokens and their EOS, in order; nothing else is trained."""
    tok = small_tokenizer()
    rows, expected = [], []
    rng = np.random.default_rng(0)
    for k in range(40):
        turns = int(rng.integers(1, 4))
        msgs = []
        for t in range(turns):
            msgs += [{"role": "user", "content": f"question {k}.{t}: " + "why " * int(rng.integers(1, 30))},
                     {"role": "assistant", "content": f"answer {k}.{t}: " + "because " * int(rng.integers(1, 30))}]
        rows.append({"messages": msgs})
        tokens, mask = encode_dialog(tok, msgs)
        expected += [t for t, m in zip(tokens, mask) if m]
    # and the instruction/response field style, mapped by config
    alpaca = [{"instruction": f"Add {k} and 1.", "input": "", "output": f"{k + 1}"} for k in range(10)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca))
    for r in alpaca:
        tokens, mask = encode_dialog(tok, [{"role": "system", "content": "Be exact."},
                                           {"role": "user", "content": r["instruction"]},
                                           {"role": "assistant", "content": r["output"]}])
        expected += [t for t, m in zip(tokens, mask) if m]
    cfg = {"seq_len": 48, "seed": 0, "num_workers": 0, "max_epochs": 1, "fim": {"enabled": True},
           "sources": {"instruct": {"weight": 0.8, "format": "chat", "paths": [str(tmp_path / "chat.jsonl")]},
                       "alpaca": {"weight": 0.2, "format": "chat", "paths": [str(tmp_path / "alpaca.jsonl")],
                                  "prompt_field": "instruction", "response_field": "output",
                                  "input_field": "input", "system_prompt": "Be exact."}}}
    loader = build_train_loader(cfg, tok, 0, 1, 4)
    trained_by_source = {0: [], 1: []}
    for batch in loader:
        labels, mask = batch["labels"].numpy(), batch["loss_mask"].numpy()
        assert (labels[~mask] == -100).all() and (labels[mask] >= 0).all()
        assert not batch["is_fim"].any()  # dialogs are never FIM-transformed
        for row_labels, row_mask, row_src in zip(labels, mask, batch["source_ids"].numpy()):
            for lab, m, s in zip(row_labels, row_mask, row_src):
                if m:
                    trained_by_source[int(s)].append(int(lab))
    # in order within each source (every dialog of both sources is read once: max_epochs=1)
    assert trained_by_source[0] + trained_by_source[1] == expected
