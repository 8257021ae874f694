"""Generation: KV-cache decoding equals full recomputation, left-padded batches equal single prompts,
sampling is seeded, stop strings / tokens end completions, infilling feeds data.fim's prompts and stops at <EOT>."""
import pytest
import torch
from helpers_eval import one_torch_thread  # noqa: F401  (autouse fixture)
from helpers_model import random_model, tiny_config
from helpers_tokenizer import small_tokenizer

from codellama_recipe.data.fim import fim_prompt
from codellama_recipe.evaluation.generation import GenerationParams, Generator, sample_next_token, truncate_at_stop

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def tok():
    return small_tokenizer()


@pytest.fixture(scope="module")
def generator(tok):
    model = random_model(tiny_config(vocab_size=tok.vocab_size, max_seq_len=512), seed=3)
    return Generator(model, tok, batch_size=4)


TEXTS = ["def add(a, b):\n    return", "import os\n\nclass Config:\n    \"\"\"Settings.\"\"\"\n",
         "x = [1, 2, 3]", "for i in range(10):\n    print(i)\n# done\nwhile False:\n    pass\n"]


def test_kv_cache_greedy_equals_full_recomputation(generator, tok):
    prompts = [tok.encode(t, bos=True) for t in TEXTS]
    assert len({len(p) for p in prompts}) > 1          # the batch really is left-padded
    params = GenerationParams(max_new_tokens=24, stop_token_ids=())
    cached = generator.generate_tokens(prompts, params, use_cache=True)
    recomputed = generator.generate_tokens(prompts, params, use_cache=False)
    assert cached == recomputed
    assert all(len(c) == 24 for c in cached)
    # Each row alone (no padding) gives the same tokens as inside the padded batch.
    assert [generator.generate_tokens([p], params)[0] for p in prompts] == cached


def test_greedy_is_the_argmax_of_an_independent_forward(generator, tok):
    prompt = tok.encode(TEXTS[0], bos=True)
    out = generator.generate_tokens([prompt], GenerationParams(max_new_tokens=5, stop_token_ids=()))[0]
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            logits = generator.model(torch.tensor([sequence]))[0, -1]
            sequence.append(int(logits.argmax()))
    assert out == sequence[len(prompt):]


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(generator, tok):
    prompts = [tok.encode(t, bos=True) for t in TEXTS]
    sample = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7, stop_token_ids=())
    a = generator.generate_tokens(prompts, sample)
    assert a == generator.generate_tokens(prompts, sample)
    other = generator.generate_tokens(prompts, GenerationParams(**{**sample.__dict__, "seed": 8}))
    assert a != other
    greedy = generator.generate_tokens(prompts, GenerationParams(max_new_tokens=16, stop_token_ids=()))
    nucleus_of_one = GenerationParams(max_new_tokens=16, temperature=1.0, top_p=1e-9, seed=1, stop_token_ids=())
    assert generator.generate_tokens(prompts, nucleus_of_one) == greedy


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_next_token(logits, 1.0, 0.7, g)) for _ in range(400)}
    assert drawn == {0, 1}          # 0.5 < 0.7 needs the second token; never the third


def test_stop_strings_and_stop_tokens(generator, tok):
    prompt = TEXTS[1]
    free = generator.complete([prompt], GenerationParams(max_new_tokens=30, stop_token_ids=()))[0]
    ids = generator.generate_tokens([tok.encode(prompt, bos=True)], GenerationParams(max_new_tokens=30,
                                                                                  stop_token_ids=()))[0]
    assert free == tok.decode_no_space(ids)
    stop = free[len(free) // 2: len(free) // 2 + 3]
    assert stop and stop in free
    stopped = generator.complete([prompt], GenerationParams(max_new_tokens=30, stop=(stop,), stop_token_ids=()))[0]
    assert stopped == free[:free.find(stop)]
    # A stop token ends the row before it (the token itself is not part of the output).
    cut = generator.generate_tokens([tok.encode(prompt, bos=True)],
                                    GenerationParams(max_new_tokens=30, stop_token_ids=(ids[10],)))[0]
    assert cut == ids[:ids.index(ids[10])]
    assert truncate_at_stop("a\ndef b\nclass", ["\nclass", "\ndef"]) == "a"


class ScriptedModel(torch.nn.Module):
    """Emits a fixed token sequence (one-hot logits), whatever the input: exercises decoding/stopping."""

    def __init__(self, script, vocab_size):
        super().__init__()
        self.script, self.vocab_size = script, vocab_size
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.output = torch.nn.Identity()       # "hidden states" are already the logits
        self.prompts = []

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None):
        return object()

    def forward(self, tokens, *, start_pos=0, kv_cache=None, position_ids=None, key_padding_mask=None,
                return_hidden=False):
        B, T = tokens.shape
        if start_pos == 0:
            self.prompts.extend(tokens.tolist())
            self.step = 0
        logits = torch.zeros(B, T, self.vocab_size)
        logits[:, -1, self.script[min(self.step, len(self.script) - 1)]] = 1.0
        self.step += 1
        return logits


def test_infill_stops_at_eot_and_keeps_the_leading_space(tok):
    middle_ids = tok.encode_no_space(" value + 1")     # first piece starts with "▁": a real space
    assert tok.piece(middle_ids[0]).startswith("▁")
    model = ScriptedModel(middle_ids + [tok.eot_id] + tok.encode("junk"), tok.vocab_size)
    gen = Generator(model, tok, batch_size=2)
    prefix, suffix = "def f(value):\n    return", "\n"
    out = gen.infill([prefix], [suffix], GenerationParams(max_new_tokens=20), suffix_first=False)
    assert out == [" value + 1"]
    out_spm = gen.infill([prefix], [suffix], GenerationParams(max_new_tokens=20), suffix_first=True)
    assert out_spm == [" value + 1"]
    # the model saw the infilling prompts of data.fim (whose layouts tests/test_fim.py checks by hand)
    assert model.prompts == [fim_prompt(tok, prefix, suffix), fim_prompt(tok, prefix, suffix, spm=True)]
