"""train.model: architecture details, presets, KV-cache decoding, masks, FLOP count, GPU script smoke run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from helpers_model import random_model, tiny_config
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.train.model import Llama, ModelConfig, apply_rope

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- config

def test_hidden_dim_follows_meta_formula():
    # multiple_of * ceil(int(mult * int(8 * dim / 3)) / multiple_of), computed by hand
    assert ModelConfig(4096, 1, 32, None, 10).hidden_dim == 11008  # int(8*4096/3) = 10922 -> 43 * 256
    assert ModelConfig(5120, 1, 40, None, 10).hidden_dim == 13824  # 13653 -> 54 * 256
    assert ModelConfig(8192, 1, 64, 8, 10, ffn_dim_multiplier=1.0).hidden_dim == 22016  # 21845 -> 86 * 256
    assert ModelConfig(8192, 1, 64, 8, 10, multiple_of=4096, ffn_dim_multiplier=1.3).hidden_dim == 28672
    assert ModelConfig(256, 1, 8, 4, 10, multiple_of=64).hidden_dim == 704  # 682 -> 11 * 64


@pytest.mark.parametrize("overrides, key", [
    (dict(dim=100, n_heads=3), "model.dim"),
    (dict(n_heads=8, n_kv_heads=3), "model.n_kv_heads"),
    (dict(dim=24, n_heads=8), "model.dim"),          # head_dim 3 is odd: RoPE needs pairs
    (dict(vocab_size=None), "model.vocab_size"),
    (dict(n_layers=0), "model.n_layers"),
    (dict(rope_theta=0.0), "model.rope_theta"),
])
def test_bad_config_gets_one_clear_error(overrides, key):
    with pytest.raises(ConfigError) as e:
        Llama(tiny_config(**overrides))
    assert str(e.value).startswith(f"config error: {key}=")


def test_from_dict_ignores_preset_extras_and_names_missing_keys():
    cfg = ModelConfig.from_dict({**tiny_config().to_dict(), "name": "x", "recipe": {"lr": 1}})
    assert cfg == tiny_config()
    with pytest.raises(ConfigError, match="n_layers"):
        ModelConfig.from_dict({"dim": 64, "n_heads": 4, "n_kv_heads": None, "vocab_size": 10})


# ----------------------------------------------------------------------------------------------- presets

def _count(dim, layers, heads, kv_heads, hidden, vocab):
    """Parameters of a Llama from its architecture table (independent of train.model)."""
    head_dim = dim // heads
    attention = 2 * dim * dim + 2 * dim * kv_heads * head_dim
    per_layer = attention + 3 * dim * hidden + 2 * dim
    return layers * per_layer + 2 * vocab * dim + dim


# size: (dim, layers, heads, kv heads, FFN hidden, vocab) from the released params.json files
# (docs/recipe.md#architecture), exact count, published
PRESETS = {
    "7b": ((4096, 32, 32, 32, 11008, 32016), 6_738_546_688, 6.74e9),
    "13b": ((5120, 40, 40, 40, 13824, 32016), 13_016_028_160, 13.02e9),
    "34b": ((8192, 48, 64, 8, 22016, 32000), 33_743_970_304, 33.74e9),
    "70b": ((8192, 80, 64, 8, 28672, 32000), 68_976_648_192, 68.98e9),
}


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_preset_parameter_counts_match_released_models(size):
    arch, exact, published = PRESETS[size]
    assert _count(*arch) == exact
    assert round(exact / 1e7) * 1e7 == published
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / f"{size}.yaml"))
    assert node["name"] == size and node["max_seq_len"] == 4096
    cfg = ModelConfig.from_dict(node)
    dim, layers, heads, kv_heads, hidden, vocab = arch
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.hidden_dim, cfg.vocab_size, cfg.head_dim) == (
        dim, layers, heads, kv_heads, hidden, vocab, 128)
    with torch.device("meta"):
        model = Llama(cfg)
    assert model.num_params() == exact
    assert model.num_params(include_embeddings=False) == exact - 2 * vocab * dim


def test_tiny_preset_takes_vocab_from_tokenizer():
    node = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny.yaml"))
    assert node["vocab_size"] is None and node["n_kv_heads"] < node["n_heads"]
    with pytest.raises(ConfigError, match="vocab_size"):
        Llama(ModelConfig.from_dict(node))
    with torch.device("meta"):
        model = Llama(ModelConfig.from_dict({**node, "vocab_size": 4096}))
    assert 2e6 < model.num_params(include_embeddings=False) < 10e6


def test_flops_per_token():
    # 7B by hand: 6 * N_matmul + 12 * layers * dim * seq
    n_matmul = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32016 * 4096
    with torch.device("meta"):
        model = Llama(ModelConfig(4096, 32, 32, None, 32016))
    assert model.flops_per_token(4096) == 6 * n_matmul + 12 * 32 * 4096 * 4096
    # tiny: the matmuls torch counts in one forward, plus QK^T and AV (4 * layers * dim * seq), times 3
    model, T = random_model(), 48
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, model.cfg.vocab_size, (2, T)))
    mm_per_token = counter.get_flop_counts()["Global"][torch.ops.aten.mm] / (2 * T)
    assert 3 * (mm_per_token + 4 * model.cfg.n_layers * model.cfg.dim * T) == model.flops_per_token(T)


# ----------------------------------------------------------------------------------------------- RoPE

def _meta_reference_rope(x, theta):
    """Meta's llama/model.py: precompute_freqs_cis + apply_rotary_emb (complex multiplication)."""
    dim, end = x.shape[-1], x.shape[1]
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    freqs_cis = torch.polar(torch.ones(end, dim // 2), torch.outer(torch.arange(end).float(), freqs))
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3)


@pytest.mark.parametrize("theta", [1e4, 1e6])
@pytest.mark.parametrize("form", ["complex", "real"])
def test_rope_matches_meta_reference(theta, form):
    """Both forms of the rotation (complex multiplication on the CPU in fp32, cos/sin with swapped pairs
    elsewhere), in value and in gradient."""
    model = Llama(tiny_config(rope_theta=theta))
    x = torch.randn(2, 37, 8, 16, dtype=torch.float64, requires_grad=True)
    angles = model.rope.for_positions(range(0, 37), x.device, x.dtype)
    assert angles.cis is not None
    if form == "real":
        angles = angles._replace(cis=None)
    ours = apply_rope(x, angles)
    reference = _meta_reference_rope(x.detach().float(), theta).double()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ours)
    (grad_ours,) = torch.autograd.grad(ours, x, grad)
    # The rotation is orthogonal: the gradient is the output gradient rotated back (angle -> -angle), which is
    # a forward rotation of the pair-swapped gradient, swapped back.
    def swap_pairs(t):
        return t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    grad_reference = swap_pairs(_meta_reference_rope(swap_pairs(grad.float()), theta)).double()
    torch.testing.assert_close(grad_ours, grad_reference, atol=1e-5, rtol=1e-5)


def test_rope_positions_tensor_matches_range():
    model = Llama(tiny_config())
    x = torch.randn(2, 9, 8, 16)
    positions = torch.arange(5, 14).expand(2, 9)
    for form in ("complex", "real"):
        by_range = model.rope.for_positions(range(5, 14), x.device, x.dtype)
        by_tensor = model.rope.for_positions(positions, x.device, x.dtype)
        if form == "real":
            by_range, by_tensor = by_range._replace(cis=None), by_tensor._replace(cis=None)
        torch.testing.assert_close(apply_rope(x, by_tensor), apply_rope(x, by_range))


def test_set_rope_theta_equals_model_built_with_it():
    model = random_model(tiny_config(rope_theta=1e4))
    tokens = torch.randint(0, 320, (1, 40))
    with torch.no_grad():
        before = model(tokens)
        model.set_rope_theta(1e6)
        after = model(tokens)
        other = Llama(tiny_config(rope_theta=1e6)).eval()
        other.load_state_dict(model.state_dict())
        assert model.cfg.rope_theta == 1e6
        assert (before - after).abs().max() > 1e-3
        torch.testing.assert_close(after, other(tokens), atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- masks / cache

def test_explicit_mask_path_equals_causal_fast_path():
    model = random_model()
    tokens = torch.randint(0, 320, (2, 30))
    with torch.no_grad():
        fast = model(tokens)
        masked = model(tokens, key_padding_mask=torch.ones(2, 30, dtype=torch.bool))
        single_doc = model(tokens, doc_ids=torch.zeros(2, 30, dtype=torch.long))
    torch.testing.assert_close(masked, fast, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single_doc, fast, atol=1e-5, rtol=1e-5)


def test_repeated_kv_heads_path_equals_native_gqa(monkeypatch):
    """The fallback for torch < 2.5 and for masked CUDA calls (kv heads repeated) computes the same attention."""
    import codellama_recipe.train.model as model_module

    model = random_model()
    tokens = torch.randint(0, 320, (2, 20))
    padding = torch.ones(2, 20, dtype=torch.bool)
    padding[1, :5] = False
    with torch.no_grad():
        native = [model(tokens), model(tokens, key_padding_mask=padding)]
        monkeypatch.setattr(model_module, "_SDPA_HAS_GQA", False)
        repeated = [model(tokens), model(tokens, key_padding_mask=padding)]
    for a, b in zip(native, repeated):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_doc_ids_isolate_packed_documents():
    model = random_model()
    a, b = torch.randint(0, 320, (1, 11)), torch.randint(0, 320, (1, 17))
    packed = torch.cat([a, b], dim=1)
    doc_ids = torch.tensor([[0] * 11 + [1] * 17])
    positions = torch.cat([torch.arange(11), torch.arange(17)])[None]
    with torch.no_grad():
        out = model(packed, doc_ids=doc_ids, position_ids=positions)
        leaky = model(packed)
        torch.testing.assert_close(out[:, :11], model(a), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 11:], model(b), atol=1e-5, rtol=1e-5)
    assert (leaky[:, 11:] - out[:, 11:]).abs().max() > 1e-3  # without doc_ids b sees a


def test_kv_cache_decoding_equals_full_recomputation():
    model = random_model()
    prompt = torch.randint(0, 320, (2, 6))
    # greedy generation, recomputing the whole sequence at every step
    seq, full_logits = prompt, []
    with torch.no_grad():
        for _ in range(8):
            logits = model(seq)[:, -1]
            full_logits.append(logits)
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
        # the same with the cache: prefill, one 3-token chunk at an offset, then token by token
        cache = model.new_kv_cache(2, 32)
        out = model(prompt, kv_cache=cache)
        torch.testing.assert_close(out[:, -1], full_logits[0], atol=1e-5, rtol=1e-5)
        chunk = seq[:, 6:9]
        out = model(chunk, kv_cache=cache, start_pos=6)
        for i in range(3):
            torch.testing.assert_close(out[:, i], full_logits[i + 1], atol=1e-5, rtol=1e-5)
        for pos in range(9, 13):
            out = model(seq[:, pos:pos + 1], kv_cache=cache, start_pos=pos)
            torch.testing.assert_close(out[:, 0], full_logits[pos - 5], atol=1e-5, rtol=1e-5)
            assert torch.equal(out[:, 0].argmax(-1), seq[:, pos + 1])


def test_kv_cache_left_padded_batch_equals_each_prompt_alone():
    model = random_model()
    prompts = [torch.randint(3, 320, (7,)), torch.randint(3, 320, (4,))]
    width, pad_id, steps = 7, 0, 5
    rows = [torch.cat([torch.full((width - len(p),), pad_id), p]) for p in prompts]
    tokens = torch.stack(rows)
    valid = torch.stack([torch.arange(width) >= width - len(p) for p in prompts])
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = model.new_kv_cache(2, width + steps)
        logits = model(tokens, kv_cache=cache, key_padding_mask=valid, position_ids=positions)[:, -1]
        generated = [[], []]
        for step in range(steps):
            nxt = logits.argmax(-1)
            for i in range(2):
                generated[i].append(int(nxt[i]))
            valid = torch.cat([valid, torch.ones(2, 1, dtype=torch.bool)], dim=1)
            positions = positions[:, -1:] + 1
            logits = model(nxt[:, None], kv_cache=cache, start_pos=width + step, key_padding_mask=valid,
                           position_ids=positions)[:, -1]
        for i, p in enumerate(prompts):  # each prompt alone, full recomputation, no padding
            seq = p[None]
            for step in range(steps):
                ref = model(seq)[0, -1]
                token = int(ref.argmax())
                assert token == generated[i][step], (i, step)
                seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
            torch.testing.assert_close(logits[i], model(seq)[0, -1], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(torch.stack(cache.k)).all()  # pad queries see themselves: no NaN in the cache


def test_forward_rejects_inconsistent_inputs():
    model = random_model()
    tokens = torch.randint(0, 320, (2, 5))
    with pytest.raises(ValueError, match="start_pos"):
        model(tokens, start_pos=3)
    with pytest.raises(ValueError, match="key_padding_mask"):
        model(tokens, key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_cache holds"):
        model(tokens, kv_cache=model.new_kv_cache(2, 4))


# ----------------------------------------------------------------------------------------------- training

def test_activation_checkpointing_gives_same_gradients():
    cfg = tiny_config()
    plain, ckpt = random_model(cfg), Llama(cfg, activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 320, (2, 24))
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(tokens).logsumexp(-1).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_rmsnorm_backward_is_exact():
    from codellama_recipe.train.model import RMSNorm, _RMSNormFunction

    x = torch.randn(2, 5, 16, dtype=torch.double, requires_grad=True)
    w = torch.randn(16, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: _RMSNormFunction.apply(x, w, 1e-5), (x, w))
    norm = RMSNorm(16, 1e-5)
    x = torch.randn(3, 16)
    reference = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)  # Meta's _norm, weight 1
    torch.testing.assert_close(norm(x), reference)


def test_return_hidden_and_bf16():
    model = random_model()
    tokens = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        hidden = model(tokens, return_hidden=True)
        torch.testing.assert_close(model.output(hidden), model(tokens))
        ref = model(tokens)
        low = model.to(torch.bfloat16)(tokens)
    assert hidden.shape == (2, 16, 128) and low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_init_std_and_untied_output():
    model = Llama(tiny_config(dim=256, vocab_size=2000))
    assert model.output.weight.data_ptr() != model.tok_embeddings.weight.data_ptr()
    for w in (model.output.weight, model.tok_embeddings.weight, model.layers[0].feed_forward.w2.weight):
        assert abs(w.std().item() - 0.02) < 0.001
    assert all(n.bias is None for n in model.modules() if isinstance(n, torch.nn.Linear))
    assert torch.equal(model.norm.weight, torch.ones(256))


# ----------------------------------------------------------------------------------------------- GPU script

BLOCK_HEAVY_IMPORTS = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'omegaconf', 'hydra', 'deepspeed', 'transformers', 'datasets', 'wandb'}:
            raise ImportError('not installed on the GPU machine: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = ['bench/gpu_train.py', '--smoke']
runpy.run_path('bench/gpu_train.py', run_name='__main__')
"""


def test_gpu_train_smoke_runs_with_only_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", BLOCK_HEAVY_IMPORTS], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "RESULT train" in proc.stdout and "RESULT long" in proc.stdout, proc.stdout[-2000:]


# ----------------------------------------------------------------------------------------------- CPU train-step bench

def test_train_step_bench_runs_and_both_models_start_from_the_same_loss(capsys):
    """bench/train_step.py on a toy shape: its last line has the documented format, and transformers' model (built
    from our weights through the HF export) gives the same first loss as ours on the same batch."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("train_step_bench", REPO / "bench" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--dim", "64", "--n-layers", "2", "--n-heads", "4", "--n-kv-heads", "2", "--multiple-of", "32",
                "--vocab-size", "300", "--seq-len", "32", "--batch-size", "2", "--repeats", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ours/transformers = \d+\.\d\d", out[-1]), out[-1]
    first_losses = [float(re.search(r"first/last loss ([\d.]+)/", line).group(1))
                    for line in out if "first/last loss" in line]
    assert len(first_losses) == 2 and abs(first_losses[0] - first_losses[1]) <= 2e-4, first_losses
