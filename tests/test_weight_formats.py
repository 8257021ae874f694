"""train.weight_formats and train.pretrained: Meta / Hugging Face import, HF export parity with transformers, errors, vocab growth."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers_model import assert_same_state, random_model, tiny_config, write_meta_checkpoint
from codellama_recipe.train import pretrained
from codellama_recipe.train.pretrained import detect_format, load_pretrained
from codellama_recipe.train.weight_formats import CheckpointError, grow_vocab, load_hf, load_meta, save_hf
from codellama_recipe.core.errors import ConfigError
from codellama_recipe.train.model import Llama

pytestmark = pytest.mark.timeout(120)

transformers = pytest.importorskip("transformers")  # test-only dependency (extras "test")


def _hf_logits(folder, tokens, attn="eager"):
    model = transformers.LlamaForCausalLM.from_pretrained(str(folder), attn_implementation=attn).eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits, model.config


def test_hf_export_has_transformers_logits(tmp_path, record_property):
    """Our HF export, loaded by transformers' own Llama, gives our logits (GQA 8/2 heads, theta 1e6)."""
    model = random_model()
    save_hf(model.state_dict(), model.cfg, tmp_path)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, 96))
    with torch.no_grad():
        ours = model(tokens)
    for attn in ("eager", "sdpa"):
        theirs, config = _hf_logits(tmp_path, tokens, attn)
        diff = (ours - theirs).abs().max().item()
        record_property(f"max_abs_logit_diff_{attn}", diff)
        print(f"HF parity ({attn}): max |ours - transformers| = {diff:.2e} (logit scale {ours.abs().max():.1f})")
        assert diff < 1e-4
    rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    assert rope_theta == 1e6
    assert (config.vocab_size, config.num_key_value_heads, config.max_position_embeddings,
            config.intermediate_size, config.tie_word_embeddings) == (320, 2, 128, model.cfg.hidden_dim, False)


def test_import_of_a_checkpoint_written_by_transformers(tmp_path):
    """A LlamaForCausalLM saved by transformers itself (sharded safetensors + index) loads with equal logits."""
    torch.manual_seed(1)
    config = transformers.LlamaConfig(hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, vocab_size=150,
                                      max_position_embeddings=256, rope_theta=1e6, rms_norm_eps=1e-5,
                                      tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    cfg, state = load_pretrained(tmp_path)
    assert (cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.hidden_dim, cfg.rope_theta, cfg.max_seq_len) == (
        96, 6, 2, 200, 1e6, 256)
    model = Llama(cfg).eval()
    model.load_state_dict(state)
    tokens = torch.randint(0, 150, (2, 40))
    with torch.no_grad():
        diff = (model(tokens) - hf(input_ids=tokens).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_meta_two_shards_to_ours_to_hf_to_ours_is_exact(tmp_path):
    model = random_model()
    meta = write_meta_checkpoint(model, tmp_path / "meta", num_shards=2)
    shard = torch.load(meta / "consolidated.01.pth", weights_only=True)
    assert shard["layers.0.attention.wk.weight"].shape == (16, 128)  # half of the 2 kv heads x 16
    assert shard["layers.0.attention.wo.weight"].shape == (128, 64)
    assert shard["tok_embeddings.weight"].shape == (320, 64)

    assert detect_format(meta) == "meta"
    cfg, state = load_pretrained(meta)
    assert {**cfg.to_dict(), "max_seq_len": 0} == {**model.cfg.to_dict(), "max_seq_len": 0}
    assert_same_state(state, model.state_dict())

    save_hf(state, cfg, tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    cfg2, state2 = load_hf(tmp_path / "hf")
    assert cfg2 == cfg
    assert_same_state(state2, model.state_dict())
    back = Llama(cfg2).eval()
    back.load_state_dict(state2)
    tokens = torch.randint(0, 320, (1, 20))
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))


def test_llama2_params_json(tmp_path):
    """Llama 2's params.json: vocab_size -1 (taken from the embedding), no rope_theta (10000), one shard."""
    model = random_model(tiny_config(rope_theta=10000.0))
    cfg, state = load_meta(write_meta_checkpoint(model, tmp_path, num_shards=1, llama2_params=True))
    assert cfg.vocab_size == 320 and cfg.rope_theta == 10000.0
    assert_same_state(state, model.state_dict())


def test_hf_config_without_meta_ffn_hint_still_loads(tmp_path):
    """Folders from other tools lack our `codellama_recipe` key: the FFN width comes from intermediate_size."""
    model = random_model()  # hidden 448 = 32 * ceil(int(1.3 * 341) / 32): no plain multiple_of gives it
    save_hf(model.state_dict(), model.cfg, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["codellama_recipe"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg, state = load_hf(tmp_path)
    assert cfg.hidden_dim == 448
    other = Llama(cfg).eval()
    other.load_state_dict(state)
    tokens = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.equal(other(tokens), model(tokens))


def test_sharded_bf16_export_and_tokenizer_files(tmp_path):
    from helpers_tokenizer import small_tokenizer_path
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=small_tokenizer_path())
    model = random_model(tiny_config(vocab_size=sp.get_piece_size()))
    save_hf(model.state_dict(), model.cfg, tmp_path, tokenizer_path=small_tokenizer_path(), dtype=torch.bfloat16,
            max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    assert (tmp_path / "tokenizer.model").read_bytes() == open(small_tokenizer_path(), "rb").read()
    tok_cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "CodeLlamaTokenizer"  # the model has the infilling pieces
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "def f(x):\n\treturn  x + 1  # ok\n"
    assert hf_tok.encode(text) == [sp.bos_id()] + sp.encode(text)
    cfg, state = load_hf(tmp_path)
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert_same_state(state, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})


def test_grow_vocab_uses_mean_rows():
    model = random_model()
    grown = grow_vocab(model.state_dict(), 336)
    for name in ("tok_embeddings.weight", "output.weight"):
        old = model.state_dict()[name]
        assert grown[name].shape == (336, 128)
        assert torch.equal(grown[name][:320], old)
        torch.testing.assert_close(grown[name][320:], old.mean(0, keepdim=True).expand(16, -1))
    Llama(tiny_config(vocab_size=336)).load_state_dict(grown)
    with pytest.raises(CheckpointError, match="smaller"):
        grow_vocab(model.state_dict(), 100)


# ------------------------------------------------------------------------------------------------ errors

@pytest.fixture
def meta_dir(tmp_path):
    return write_meta_checkpoint(random_model(), tmp_path / "meta", num_shards=2)


def _edit_params(folder, **changes):
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, **changes}))


def test_missing_tensor_is_named(meta_dir):
    for rank in range(2):
        f = meta_dir / f"consolidated.{rank:02d}.pth"
        shard = torch.load(f, weights_only=True)
        del shard["layers.1.feed_forward.w3.weight"]
        torch.save(shard, f)
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) missing.*layers\.1\.feed_forward\.w3\.weight"):
        load_meta(meta_dir)


def test_shape_mismatch_is_named(meta_dir):
    _edit_params(meta_dir, vocab_size=321)
    with pytest.raises(CheckpointError, match=r"tok_embeddings\.weight has shape \[320, 128\], expected \[321, 128\]"):
        load_meta(meta_dir)


@pytest.mark.parametrize("changes, key", [(dict(dim=130), "model.dim"), (dict(n_kv_heads=3), "model.n_kv_heads")])
def test_bad_architecture_in_params_json(meta_dir, changes, key):
    _edit_params(meta_dir, **changes)
    with pytest.raises(ConfigError, match=f"^config error: {key}="):
        load_meta(meta_dir)


def test_hf_missing_and_unexpected_tensors(tmp_path):
    model = random_model()
    save_hf(model.state_dict(), model.cfg, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.0.self_attn.k_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.0\.self_attn\.k_proj\.weight"):
        load_hf(tmp_path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(32, 128)
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(128)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected.*q_proj\.bias"):
        load_hf(tmp_path)


def test_unknown_folder_and_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format.*weights\.bin"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is a file"):
        load_pretrained(tmp_path / "weights.bin")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")


def test_project_checkpoint_is_delegated_to_the_engine(tmp_path, monkeypatch):
    (tmp_path / "codellama_checkpoint.json").write_text("{}")
    sentinel = (tiny_config(), {"x": torch.zeros(1)})
    monkeypatch.setattr(pretrained, "load_consolidated", lambda path: sentinel if path == tmp_path else None)
    assert load_pretrained(tmp_path) is sentinel
