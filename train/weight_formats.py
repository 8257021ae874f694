"""Read and write Llama checkpoints: Meta's format, Hugging Face's, and (via the engine) the project's own.

Every loader returns `(ModelConfig, state_dict)` with Meta's parameter names (those of train.model.Llama).
Meta shards are read with `torch.load(weights_only=True)` (tensors and plain containers only) and Hugging Face
folders from safetensors: neither can run code. (The engine's own DeepSpeed checkpoints are a different matter:
see train/checkpoint_reading.py.)

Meta format: `params.json` + `consolidated.NN.pth`, one file per model-parallel rank. Column-parallel weights
(wq, wk, wv, w1, w3, output) are split along dim 0, row-parallel ones (wo, w2) and the embedding
(ParallelEmbedding splits the embedding dimension) along dim 1; norms are replicated.

Hugging Face format: `config.json` + `*.safetensors` (optionally sharded with `model.safetensors.index.json`).
HF rotates the halves (i, i + d/2) of each head where Meta rotates adjacent pairs, so q_proj/k_proj hold the
rows of wq/wk permuted per head (k_proj with the number of *kv* heads).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from codellama_recipe.train.model import Llama, ModelConfig

CHECKPOINT_MARKER = "codellama_checkpoint.json"  # written by the training engine into its checkpoints
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

# Weight dtypes by name, as the configs spell them: short (trainer.export_dtype, trainer.precision) or torch's.
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint folder or state dict is unusable; the message names the file/tensor and the problem."""


# --------------------------------------------------------------------------------------------------------
# Shapes and validation
# --------------------------------------------------------------------------------------------------------

def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Llama(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_state_dict(state_dict: dict, cfg: ModelConfig, source: str = "state dict") -> None:
    """Raise CheckpointError naming the missing / unexpected / mis-shaped tensors, if any."""
    expected = expected_shapes(cfg)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} tensor(s) missing, e.g. {missing[:5]}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:5]}")
    for name, shape in expected.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise CheckpointError(f"{source}: tensor {name} has shape {list(got)}, expected {list(shape)} "
                                  f"for the configuration {cfg.to_dict()}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------------------------------------
# Meta format
# --------------------------------------------------------------------------------------------------------

_META_CAT_DIM0 = re.compile(r"(attention\.w[qkv]|feed_forward\.w[13]|^output)\.weight$")
_META_CAT_DIM1 = re.compile(r"(attention\.wo|feed_forward\.w2|^tok_embeddings)\.weight$")
_META_IGNORED = {"rope.freqs"}  # Llama 1 checkpoints carry the RoPE table; it is recomputed from rope_theta


def meta_shard_paths(path) -> list[Path]:
    return sorted(Path(path).glob("consolidated.*.pth"))


def _merge_meta_shards(shards: list[dict], source: str) -> dict[str, torch.Tensor]:
    names = list(shards[0])
    for i, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(names):
            diff = sorted(set(shard) ^ set(names))
            raise CheckpointError(f"{source}: shard {i} does not hold the same tensors as shard 0, e.g. {diff[:5]}")
    merged = {}
    for name in names:
        if name in _META_IGNORED:
            continue
        parts = [s[name] for s in shards]
        if len(parts) == 1:
            merged[name] = parts[0]
        elif _META_CAT_DIM0.search(name):
            merged[name] = torch.cat(parts, dim=0)
        elif _META_CAT_DIM1.search(name):
            merged[name] = torch.cat(parts, dim=1)
        else:  # replicated (norms)
            merged[name] = parts[0]
    return merged


def load_meta(path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    params_file = path / "params.json"
    if not params_file.is_file():
        raise CheckpointError(f"{path}: no params.json (not a Meta-format checkpoint folder)")
    shard_files = meta_shard_paths(path)
    if not shard_files:
        raise CheckpointError(f"{path}: no consolidated.*.pth shard next to params.json")
    params = _read_json(params_file)
    shards = []
    for f in shard_files:
        try:
            shards.append(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as e:  # noqa: BLE001 - truncated zip, a pickle payload (weights_only refuses it), ...
            raise CheckpointError(f"{f}: not a readable Meta shard; loaded with torch.load(weights_only=True), never "
                                  f"unpickled ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    state_dict = _merge_meta_shards(shards, str(path))
    if params.get("vocab_size", -1) in (-1, None) and "tok_embeddings.weight" in state_dict:
        params["vocab_size"] = state_dict["tok_embeddings.weight"].shape[0]  # Llama 2 params.json says -1
    for key in ("dim", "n_layers", "n_heads", "vocab_size"):
        if key not in params:
            raise CheckpointError(f"{params_file}: key {key!r} missing")
    cfg = ModelConfig.from_dict(params).validate()
    check_state_dict(state_dict, cfg, str(path))
    return cfg, state_dict


# --------------------------------------------------------------------------------------------------------
# Hugging Face format
# --------------------------------------------------------------------------------------------------------

def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's wq/wk rows (adjacent RoPE pairs) -> HF's q_proj/k_proj rows (rotate-half layout)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of permute_to_hf."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_LAYER_MAP = {  # Meta name inside layers.{i}. -> HF name inside model.layers.{i}.
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_MAP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}


def meta_to_hf_name(name: str) -> str:
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if not m or m.group(2) not in _LAYER_MAP:
        raise CheckpointError(f"no Hugging Face name for tensor {name!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"


def _hf_to_meta_names(n_layers: int) -> dict[str, str]:
    names = {hf: meta for meta, hf in _TOP_MAP.items()}
    for i in range(n_layers):
        for meta, hf in _LAYER_MAP.items():
            names[f"model.layers.{i}.{hf}"] = f"layers.{i}.{meta}"
    return names


def _ffn_params_for(dim: int, intermediate: int, hint: dict | None) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) whose Meta formula gives `intermediate` for `dim`."""
    candidates = []
    if hint:
        candidates.append((hint.get("multiple_of"), hint.get("ffn_dim_multiplier")))
    candidates += [(m, None) for m in (256, 128, 64, 32, 512, 1024, 2048, 4096)]
    candidates += [(4096, 1.3), (256, 1.0)]
    for multiple_of, mult in candidates:
        if isinstance(multiple_of, int) and multiple_of > 0:
            probe = ModelConfig(dim=dim, n_layers=1, n_heads=1, n_kv_heads=None, vocab_size=1,
                                multiple_of=multiple_of, ffn_dim_multiplier=mult)
            if probe.hidden_dim == intermediate:
                return multiple_of, mult
    # Any width: with multiple_of = intermediate, every int(mult * base) in [1, intermediate] rounds up to it.
    return intermediate, intermediate / int(8 * dim / 3)


def hf_config_to_model_config(hf: dict, source: str = "config.json") -> ModelConfig:
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (only 'llama')")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        if key not in hf:
            raise CheckpointError(f"{source}: key {key!r} missing")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
        raise CheckpointError(f"{source}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError(f"{source}: biases in attention/MLP are not part of the Llama architecture here")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise CheckpointError(f"{source}: head_dim {head_dim} x heads {hf['num_attention_heads']} != hidden_size")
    dim = hf["hidden_size"]
    multiple_of, mult = _ffn_params_for(dim, hf["intermediate_size"], hf.get("codellama_recipe"))
    return ModelConfig(
        dim=dim, n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads"), vocab_size=hf["vocab_size"],
        multiple_of=multiple_of, ffn_dim_multiplier=mult, norm_eps=hf.get("rms_norm_eps", 1e-5),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        max_seq_len=hf.get("max_position_embeddings", 4096),
    ).validate()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        absent = [f for f in files if not (path / f).is_file()]
        if absent:
            raise CheckpointError(f"{index}: shard file(s) {absent[:5]} listed but not present")
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: config.json found but no *.safetensors weights")
    tensors = {}
    for f in files:
        try:
            tensors.update(load_file(str(path / f)))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on damaged files
            raise CheckpointError(f"{path / f}: not a readable safetensors file ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else 'unreadable'})") from None
    return tensors


def load_hf(path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face checkpoint folder)")
    hf_cfg = _read_json(config_file)
    cfg = hf_config_to_model_config(hf_cfg, str(config_file))
    tensors = _read_safetensors(path)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in tensors and hf_cfg.get("tie_word_embeddings") and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    names = _hf_to_meta_names(cfg.n_layers)
    missing = [k for k in names if k not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} tensor(s) missing, e.g. {missing[:5]}")
    unexpected = [k for k in tensors if k not in names]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected tensor(s), e.g. {unexpected[:5]}")
    expected = expected_shapes(cfg)
    state_dict = {}
    for hf_name, meta_name in names.items():
        t = tensors[hf_name]
        if tuple(t.shape) != expected[meta_name]:
            raise CheckpointError(f"{path}: tensor {hf_name} has shape {list(t.shape)}, "
                                  f"expected {list(expected[meta_name])}")
        if meta_name.endswith("attention.wq.weight"):
            t = permute_from_hf(t, cfg.n_heads)
        elif meta_name.endswith("attention.wk.weight"):
            t = permute_from_hf(t, cfg.kv_heads)
        state_dict[meta_name] = t.contiguous()
    return cfg, state_dict


def _special_pieces(tokenizer_path: Path) -> dict:
    """bos/eos/unk ids and pieces of a SentencePiece model, and whether it has Code Llama's infilling pieces."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    info = {"vocab_size": sp.get_piece_size()}
    for role, idx in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
        if idx >= 0:
            info[f"{role}_token_id"] = idx
            info[f"{role}_token"] = sp.id_to_piece(idx)
    pieces = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    info["has_infilling"] = {"▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"} <= pieces
    return info


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype | None, special: dict | None = None) -> dict:
    special = special or {}
    dtype_name = str(dtype).removeprefix("torch.") if dtype in DTYPES.values() else "float32"
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # transformers >= 5
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": False,
        "bos_token_id": special.get("bos_token_id", 1),
        "eos_token_id": special.get("eos_token_id", 2),
        "torch_dtype": dtype_name,
        "use_cache": True,
        # Meta's FFN parameters, so that loading this folder gives back the same ModelConfig.
        "codellama_recipe": {"multiple_of": cfg.multiple_of, "ffn_dim_multiplier": cfg.ffn_dim_multiplier},
    }


def _write_tokenizer_files(tokenizer_path: Path, out_dir: Path, special: dict, max_len: int):
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.model")
    tokens = {f"{r}_token": special[f"{r}_token"] for r in ("bos", "eos", "unk") if f"{r}_token" in special}
    tok_cfg = {
        "tokenizer_class": "CodeLlamaTokenizer" if special.get("has_infilling") else "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        **tokens,
    }
    if special.get("has_infilling"):
        tok_cfg.update(prefix_token="▁<PRE>", suffix_token="▁<SUF>", middle_token="▁<MID>", eot_token="▁<EOT>",
                       fill_token="<FILL_ME>")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2, ensure_ascii=False) + "\n")


def save_hf(state_dict, cfg: ModelConfig, out_dir, tokenizer_path=None, dtype: torch.dtype | None = torch.float32,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write a folder that `transformers.LlamaForCausalLM.from_pretrained` loads with identical logits.

    dtype=None keeps each tensor's dtype. Weights go to model.safetensors, or to numbered shards plus
    model.safetensors.index.json above `max_shard_bytes`. tokenizer_path (a SentencePiece model) is copied as
    tokenizer.model with a minimal tokenizer_config.json / special_tokens_map.json, and its bos/eos ids go into
    config.json.
    """
    from safetensors.torch import save_file

    cfg.validate()
    check_state_dict(state_dict, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special = {}
    if tokenizer_path is not None:
        tokenizer_path = Path(tokenizer_path)
        if not tokenizer_path.is_file():
            raise CheckpointError(f"tokenizer_path {tokenizer_path} does not exist")
        special = _special_pieces(tokenizer_path)
        if special["vocab_size"] > cfg.vocab_size:
            raise CheckpointError(f"tokenizer {tokenizer_path} has {special['vocab_size']} pieces but the model's "
                                  f"vocab_size is {cfg.vocab_size}")

    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().to("cpu")
        if name.endswith("attention.wq.weight"):
            t = permute_to_hf(t, cfg.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = permute_to_hf(t, cfg.kv_heads)
        if dtype is not None:
            t = t.to(dtype)
        tensors[meta_to_hf_name(name)] = t.contiguous()

    for stale in list(out_dir.glob("*.safetensors")) + [out_dir / "model.safetensors.index.json"]:
        stale.unlink(missing_ok=True)
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    out_dtype = dtype if dtype is not None else next(iter(tensors.values())).dtype
    (out_dir / "config.json").write_text(json.dumps(hf_config_dict(cfg, out_dtype, special), indent=2) + "\n")
    gen = {"bos_token_id": special.get("bos_token_id", 1), "eos_token_id": special.get("eos_token_id", 2)}
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer_path is not None:
        _write_tokenizer_files(tokenizer_path, out_dir, special, cfg.max_seq_len)
    return out_dir


# --------------------------------------------------------------------------------------------------------
# Vocabulary growth and auto-detection
# --------------------------------------------------------------------------------------------------------

def grow_vocab(state_dict, new_vocab_size: int) -> dict[str, torch.Tensor]:
    """Return a state dict whose tok_embeddings and output have `new_vocab_size` rows; the new rows are the mean
    of the existing ones (so new pieces start as an "average token" rather than noise)."""
    old = state_dict["tok_embeddings.weight"].shape[0]
    if new_vocab_size < old:
        raise CheckpointError(f"grow_vocab: new_vocab_size {new_vocab_size} is smaller than the current {old}")
    grown = dict(state_dict)
    if new_vocab_size == old:
        return grown
    for name in ("tok_embeddings.weight", "output.weight"):
        w = state_dict[name]
        mean = w.float().mean(dim=0, keepdim=True).to(w.dtype)
        grown[name] = torch.cat([w, mean.expand(new_vocab_size - old, -1)], dim=0)
    return grown
