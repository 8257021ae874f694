"""Key retrieval prompts (docs/recipe.md#long-context-fine-tuning) and perplexity by context length."""
import math
import random
import re

import pytest
import torch
import torch.nn.functional as F
from helpers_eval import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers_model import random_model, tiny_config
from helpers_tokenizer import small_tokenizer, stdlib_python_files

from codellama_recipe.evaluation.key_retrieval import (QUESTION, accuracy_grid, build_example, build_examples, parse_answer)
from codellama_recipe.evaluation.perplexity import perplexity_by_context_length, token_losses

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def texts():
    files = [f for f in stdlib_python_files() if f.stat().st_size > 20_000][:12]
    return [f.read_text(encoding="utf-8") for f in files]


KEY_RE = re.compile(r'def my_function\(\) -> int:\n    """Note that this function is used at the end\n    """\n'
                    r'    return (\d\d)\n')


@pytest.mark.parametrize("position", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_key_function_at_requested_position_and_answer_is_its_value(tok, texts, position):
    example = build_example(tok, texts, length=1024, position=position, rng=random.Random(11))
    prompt = example.prompt
    assert prompt.endswith(QUESTION)
    matches = list(KEY_RE.finditer(prompt))
    assert len(matches) == 1
    key = matches[0]
    # The expected answer is what the inserted function returns when run.
    namespace = {}
    exec(key.group(0), namespace)
    assert namespace["my_function"]() == example.expected and 10 <= example.expected <= 99
    # Relative position of the key inside the surrounding source (key and question removed).
    context = prompt[:key.start()] + prompt[key.end() + 1:-len(QUESTION)]
    assert len(context) == example.context_chars
    assert key.start() == 0 or prompt[key.start() - 1] == "\n"          # starts a line
    longest_line = max(len(line) + 1 for line in context.splitlines())
    assert abs(key.start() - position * len(context)) <= longest_line
    if position == 1.0:
        assert prompt[key.end():] == "\n" + QUESTION
    if position == 0.0:
        assert key.start() == 0
    # Prompt length is the requested number of tokens, up to the join margin.
    n_tokens = len(tok.encode(prompt)) + 1
    assert 1024 - 40 <= n_tokens <= 1024


def test_examples_are_seeded_per_cell_and_grid_accuracy(tok, texts):
    a = build_examples(tok, texts, [256, 512], [0.0, 1.0], n_examples=3, seed=5)
    b = build_examples(tok, texts, [512], [1.0], n_examples=3, seed=5)
    assert [e.prompt for e in a if e.length == 512 and e.position == 1.0] == [e.prompt for e in b]
    assert len({e.expected for e in a}) > 1
    completions = [f" {e.expected}\n" if e.length == 256 else "0" for e in a]
    grid = accuracy_grid(a, completions, [256, 512], [0.0, 1.0])
    assert grid["accuracy"] == [[1.0, 1.0], [0.0, 0.0]] and grid["overall"] == 0.5
    assert parse_answer(" 42)") == 42 and parse_answer("x") is None


def test_perplexity_by_context_length_matches_direct_forward(tok, texts):
    model = random_model(tiny_config(vocab_size=tok.vocab_size, max_seq_len=512), seed=1)
    tokens = [tok.bos_id] + tok.encode(texts[0])
    assert len(tokens) > 300
    chunked = token_losses(model, tokens[:301], chunk_size=64)
    with torch.no_grad():
        logits = model(torch.tensor([tokens[:301]]))[0]
    direct = F.cross_entropy(logits[:-1], torch.tensor(tokens[1:301]), reduction="none")
    assert torch.allclose(chunked, direct, atol=1e-4)

    result = perplexity_by_context_length(model, tok, [texts[0], texts[1]], [100, 300], chunk_size=64)
    assert result["n_files"] == [2, 2]
    # ppl@100 by hand: exp(mean loss of predicting tokens 1..100 of each file, from a fresh forward).
    losses = []
    for text in texts[:2]:
        ids = [tok.bos_id] + tok.encode(text)
        with torch.no_grad():
            lg = model(torch.tensor([ids[:100]]))[0]
        losses.append(F.cross_entropy(lg, torch.tensor(ids[1:101]), reduction="none"))
    assert result["ppl"][0] == pytest.approx(math.exp(torch.cat(losses).mean().item()), rel=1e-4)
    assert result["ppl_bin"][0] == pytest.approx(result["ppl"][0])
    short = perplexity_by_context_length(model, tok, ["x = 1\n"], [100], chunk_size=64)
    assert short["n_files"] == [0] and short["ppl"] == [None]


def test_long_file_selection_from_corpus_layout_and_user_globs(tmp_path):
    import json as _json

    from codellama_recipe.core.schema import PerplexityConfig
    from codellama_recipe.evaluation.long_files import select_texts
    corpus = tmp_path / "corpus"
    (corpus / "python").mkdir(parents=True)
    rows = {"val": [("v_small.py", 10), ("v_long.py", 600)], "train": [("t_long1.py", 700), ("t_long2.py", 800)]}
    for split, files in rows.items():
        with open(corpus / "python" / f"{split}-00000.jsonl", "w") as f:
            for path, size in files:
                f.write(_json.dumps({"text": "x" * size, "path": path}) + "\n")
    section = PerplexityConfig(source="python", splits=["val", "train"])
    names = [n for n, _ in select_texts(section, min_bytes=500, max_files=2, corpus_dir=corpus)]
    assert names == ["python/val:v_long.py", "python/train:t_long1.py"]     # held-out split first
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.py").write_text("y" * 1000)
    (tmp_path / "mine" / "b.py").write_text("y" * 10)
    user = PerplexityConfig(files=str(tmp_path / "mine" / "*.py"))
    assert [n for n, _ in select_texts(user, min_bytes=500)] == [str(tmp_path / "mine" / "a.py")]
    with pytest.raises(ValueError, match="min_bytes"):
        select_texts(user, min_bytes=10_000)
