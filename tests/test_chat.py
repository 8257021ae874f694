"""Chat template ([INST] … [/INST], <<SYS>> block) and the answer-only loss of instruct batches."""
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from helpers_tokenizer import llama_style_model_path, small_tokenizer  # noqa: E402

from codellama_recipe.data.pipeline import build_train_loader  # noqa: E402
from codellama_recipe.data.chat import encode_dialog, encode_dialog_prompt  # noqa: E402

pytestmark = pytest.mark.timeout(300)

DIALOG = [
    {"role": "system", "content": " Answer with code. "},
    {"role": "user", "content": "Reverse a list in Python."},
    {"role": "assistant", "content": "Use `xs[::-1]`.\n"},
    {"role": "user", "content": "And sort it?"},
    {"role": "assistant", "content": "def f(xs):\n    return sorted(xs)"},
]


def _sys(text):
    return {"role": "system", "content": text}


def _user(text):
    return {"role": "user", "content": text}


def _bot(text):
    return {"role": "assistant", "content": text}


# Each ends with a user message (an inference prompt); its training form is the same dialog with an answer.
DIALOGS = [
    [_user("Write a function that adds two numbers.")],
    [_sys("You are a careful Python programmer."), _user("Sort a list.")],
    [_sys(" Answer with code. \n"), _user("   Reverse a list.  \n")],      # system kept as given, user's lead kept
    [_sys(""), _user("Empty system prompt.")],                                # the empty block stays
    [_user("  leading spaces  "), _bot("  an answer  \n"), _user("\tnext\t")],
    [_sys("S"), _user("first"), _bot("one"), _user("second"), _bot("two"), _user("third")],
    [_user("Ünïcödé: 数据 ✓ — ok?"), _bot("Oui: ça marche 🙂"), _user("Et après ?")],
    [_user("```python\nprint(1)\n```\nWhat does it print?"), _bot("```\n1\n```"), _user("Why?")],
    [_sys("\n\nMulti\nline\nsystem\n\n"), _user("\n\nq\n\n")],
    [_user("[INST] nested tags [/INST]"), _bot("<<SYS>> odd <</SYS>>"), _user("ok")],
    [_sys("  "), _user(" x"), _bot("y "), _user(" z ")],
    [_user("a" * 300), _bot("b " * 100), _user("c")],
]


def reference_prompt_tokens(tok, dialog):
    """Meta's chat_completion (codellama/llama/generation.py), re-implemented from its logic."""
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"],
                   "content": "<<SYS>>\n" + dialog[0]["content"] + "\n<</SYS>>\n\n" + dialog[1]["content"]}] + dialog[2:]
    tokens = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        tokens += tok.encode(f"[INST] {prompt['content'].strip()} [/INST] {answer['content'].strip()} ",
                             bos=True, eos=True)
    return tokens + tok.encode(f"[INST] {dialog[-1]['content'].strip()} [/INST]", bos=True)


def reference_training_tokens(tok, dialog):
    """The reference's encoding of finished turns, for a dialog that ends with an answer."""
    with_last_user = dialog + [_user("x")]
    full = reference_prompt_tokens(tok, with_last_user)
    return full[:len(full) - len(tok.encode("[INST] x [/INST]", bos=True))]


@pytest.fixture(scope="module", params=["small", "llama_style", "embedded"])
def any_tokenizer(request):
    from codellama_recipe.data.embedded.cache import ensure_embedded
    from codellama_recipe.data.tokenizer import Tokenizer

    if request.param == "small":
        return small_tokenizer()
    if request.param == "llama_style":
        return Tokenizer(llama_style_model_path())
    return Tokenizer(str(ensure_embedded(log=lambda *a: None).tokenizer_path))


@pytest.mark.parametrize("index", range(len(DIALOGS)))
def test_prompts_and_training_dialogs_equal_metas_reference_token_for_token(any_tokenizer, index):
    tok, dialog = any_tokenizer, DIALOGS[index]
    assert encode_dialog_prompt(tok, dialog) == reference_prompt_tokens(tok, dialog)
    finished = dialog + [_bot(f" answer {index}: ok \n")]
    tokens, mask = encode_dialog(tok, finished)
    assert tokens == reference_training_tokens(tok, finished)
    # the inference prompt is a prefix of the training tokens, and the loss starts right after it
    prompt = encode_dialog_prompt(tok, dialog)
    assert tokens[:len(prompt)] == prompt
    assert mask[len(prompt) - 1] == 0 and all(mask[len(prompt):])
    # what is trained in the last turn decodes to the stripped answer, its space, then </s>
    assert tokens[-1] == tok.eos_id and tok.decode(tokens[len(prompt):-1]) == f"answer {index}: ok "


def test_llama2_chat_layout_and_mask():
    tok = small_tokenizer()
    tokens, mask = encode_dialog(tok, DIALOG)
    assert len(tokens) == len(mask)
    # written out by hand: BOS/EOS per turn, the system block as given inside the first user turn, each
    # answer stripped and followed by one space, the whole turn encoded in one piece
    turns = [("[INST] <<SYS>>\n Answer with code. \n<</SYS>>\n\nReverse a list in Python. [/INST]", "Use `xs[::-1]`."),
             ("[INST] And sort it? [/INST]", "def f(xs):\n    return sorted(xs)")]
    want_tokens, want_mask = [], []
    for prompt, answer in turns:
        turn = tok.encode(f"{prompt} {answer} ", bos=True, eos=True)
        n = len(tok.encode(prompt, bos=True))
        want_tokens += turn
        want_mask += [0] * n + [1] * (len(turn) - n)
    assert tokens == want_tokens and mask == want_mask
    # the masked tokens decode to exactly the answers (with their space), each closed by EOS
    answer_tokens = [t for t, m in zip(tokens, mask) if m]
    ends = [i for i, t in enumerate(answer_tokens) if t == tok.eos_id]
    assert len(ends) == 2 and ends[-1] == len(answer_tokens) - 1
    assert tok.decode(answer_tokens[:ends[0]]) == "Use `xs[::-1]`. "
    assert tok.decode(answer_tokens[ends[0] + 1:ends[1]]) == "def f(xs):\n    return sorted(xs) "
    # the inference prompt is the training prefix up to the last answer
    prompt = encode_dialog_prompt(tok, DIALOG[:-1])
    assert tokens[:len(prompt)] == prompt and mask[len(prompt)] == 1


def test_system_argument_and_role_checks():
    tok = small_tokenizer()
    a = encode_dialog(tok, DIALOG[1:3], system=" Answer with code. ")
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
