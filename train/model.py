"""The Llama architecture as used by Code Llama (Meta's llama/model.py), written for training.

Parameter names are exactly Meta's (`tok_embeddings`, `layers.{i}.attention.wq`, ..., `norm`, `output`), so a
Meta `consolidated.*.pth` state dict loads with `load_state_dict` as is. RoPE follows Meta's convention: it
rotates adjacent pairs (2i, 2i+1) of each head (Hugging Face rotates (i, i + d/2); train/weight_formats.py
converts). Attention goes through `F.scaled_dot_product_attention`, with `is_causal=True` on the training
path and an explicit boolean mask only when document ids, key padding or a KV-cache offset need one.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from codellama_recipe.core.schema import ModelConfig

# `enable_gqa` arrived in torch 2.5; older versions get the kv heads repeated explicitly.
_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

INIT_STD = 0.02  # every Linear and the embedding: N(0, 0.02) (GPT-2/Megatron default; Meta's is not published)


def _numel(p: torch.Tensor) -> int:
    """Full size of a parameter, also when DeepSpeed ZeRO-3 has partitioned it (numel() is then 0)."""
    return getattr(p, "ds_numel", p.numel())


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward: saves only x and 1/rms, and runs in a few passes with in-place
    updates (CPU autograd of F.rms_norm was 2x slower than this in torch 2.13, and every fresh activation-sized
    buffer costs page faults on the CPU). Normalises in fp32 like Meta's and HF's code."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        # mean(x^2) in one pass, without an x^2 temporary.
        rstd = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        if xf.dtype == x.dtype:
            return torch.mul(xf, rstd).mul_(weight)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        x_hat = x.to(rstd.dtype) * rstd
        grad_weight = (grad * x_hat.to(x.dtype)).flatten(0, -2).sum(0).to(weight.dtype)
        grad_x_hat = (grad * weight).to(rstd.dtype)
        # grad_x = rstd * (grad_x_hat - x_hat * mean(grad_x_hat * x_hat)), reusing the two buffers above.
        dot = torch.linalg.vecdot(grad_x_hat, x_hat).unsqueeze_(-1).div_(x.shape[-1])
        grad_x = grad_x_hat.sub_(x_hat.mul_(dot)).mul_(rstd)
        return grad_x.to(x.dtype), grad_weight, None


class RMSNorm(nn.Module):
    """Normalisation in fp32, scaled by the weight in the activation dtype (as Meta's and HF's)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.device.type == "cpu":
            return _RMSNormFunction.apply(x, self.weight, self.eps)
        # CUDA has fused rms_norm kernels (and torch.compile fuses either way).
        return F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype) * self.weight


class RopeAngles(NamedTuple):
    """The rotation for a set of positions, shaped to broadcast against [B, T, heads, head_dim] (`cis`: against
    [B, T, heads, head_dim / 2] complex). `cis` is None where the real-valued form is used."""

    cos: torch.Tensor
    sin: torch.Tensor
    cis: torch.Tensor | None


class Rope:
    """Tables for Meta's adjacent-pair rotation, computed in fp32, cached per device and dtype, grown on demand.

    For pair i of a head: angle(p) = p * theta^(-2i/head_dim). `cos` repeats each angle's cosine for both
    members of the pair; `sin` carries the sign of the rotation (-sin on the even member, +sin on the odd), so
    rotate(x) = x * cos + swap_pairs(x) * sin. On the CPU in fp32/fp64 the same rotation is one complex
    multiplication per pair (Meta's own formulation): one pass over x forward and one backward instead of four
    each, which is what makes our CPU step faster than transformers' rotate_half. Tables are plain attributes, not
    buffers: they stay fp32 when the module is cast to bf16 and never appear in the state dict.
    """

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, float(theta)
        # Built on the CPU explicitly: a model constructed under `with torch.device("meta")` still needs real tables.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim
        self.inv_freq = 1.0 / (self.theta ** exponents)
        self._tables: dict[tuple, RopeAngles] = {}

    def tables(self, length: int, device, dtype) -> RopeAngles:
        key = (str(device), dtype)
        cached = self._tables.get(key)
        if cached is None or cached.cos.shape[0] < length:
            size = max(length, 2 * cached.cos.shape[0] if cached is not None else length)
            phase = torch.arange(size, dtype=torch.float, device="cpu")[:, None] * self.inv_freq[None, :]
            cos = phase.cos().repeat_interleave(2, dim=-1)
            sin = torch.stack((-phase.sin(), phase.sin()), dim=-1).flatten(-2)
            cis = None
            if torch.device(device).type == "cpu" and dtype in _COMPLEX_OF:
                cis = torch.polar(torch.ones_like(phase), phase).to(_COMPLEX_OF[dtype])
            cached = RopeAngles(cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype), cis)
            self._tables[key] = cached
        return cached

    def for_positions(self, positions: torch.Tensor | range, device, dtype) -> RopeAngles:
        """positions: a range (same for every row) or a [B, T] tensor."""
        table = self.tables(positions.stop if isinstance(positions, range) else int(positions.max()) + 1,
                            device, dtype)
        if isinstance(positions, range):
            index = slice(positions.start, positions.stop)
            return RopeAngles(*(None if t is None else t[index, None, :] for t in table))
        return RopeAngles(*(None if t is None else t[positions][:, :, None, :] for t in table))


_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def apply_rope(x, angles: RopeAngles):
    """Rotate x ([B, T, heads, head_dim]) by the angles of its positions."""
    if angles.cis is not None and x.dtype == angles.cos.dtype and x.is_contiguous():
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
        return torch.view_as_real(pairs * angles.cis).flatten(-2)
    # In x's dtype (as HF does): under autocast x is bf16 while the tables follow the fp32 residual stream.
    cos, sin = angles.cos.to(x.dtype), angles.sin.to(x.dtype)
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


class KVCache:
    """Keys/values of every layer for generation: k[i], v[i] are [B, n_kv_heads, max_len, head_dim]."""

    def __init__(self, n_layers, batch_size, n_kv_heads, max_len, head_dim, dtype, device):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.batch_size, self.max_len = batch_size, max_len

    def update(self, layer: int, start_pos: int, k, v):
        """Store k, v ([B, kv, T, hd]) at positions start_pos.. and return everything cached so far."""
        B, end = k.shape[0], start_pos + k.shape[2]
        self.k[layer][:B, :, start_pos:end] = k
        self.v[layer][:B, :, start_pos:end] = v
        return self.k[layer][:B, :, :end], self.v[layer][:B, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x, angles: RopeAngles, mask, layer_idx=0, kv_cache=None, start_pos=0):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), angles).transpose(1, 2)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), angles).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, start_pos, k, v)
        # The causal shortcut is only right when queries and keys start at the same position.
        is_causal = mask is None and k.shape[2] == T and T > 1
        # CUDA's kernels that take GQA natively (flash) take no mask; the one that takes masks (memory-efficient)
        # wants equal head counts, so masked CUDA calls get the kv heads repeated instead of the math fallback.
        native_gqa = _SDPA_HAS_GQA and (mask is None or q.device.type == "cpu")
        if self.n_kv_heads == self.n_heads:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        elif native_gqa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
        else:
            repeats = self.n_heads // self.n_kv_heads
            out = F.scaled_dot_product_attention(q, k.repeat_interleave(repeats, dim=1),
                                                 v.repeat_interleave(repeats, dim=1),
                                                 attn_mask=mask, is_causal=is_causal)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.hidden_dim
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_idx: int, cfg: ModelConfig):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, angles: RopeAngles, mask, kv_cache=None, start_pos=0):
        h = x + self.attention(self.attention_norm(x), angles, mask, self.layer_idx, kv_cache, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig, activation_checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg.validate()
        self.activation_checkpointing = activation_checkpointing
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, cfg) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.rope = Rope(cfg.head_dim, cfg.rope_theta)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """N(0, INIT_STD) for every Linear (output layer included) and the embedding; RMSNorm weights 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def set_rope_theta(self, theta: float):
        """Change the RoPE base (long-context fine-tuning raises it to 1e6); tables are recomputed lazily."""
        if not theta > 0:
            raise ValueError(f"rope_theta={theta!r}: must be > 0")
        self.cfg.rope_theta = float(theta)
        self.rope = Rope(self.cfg.head_dim, theta)

    def new_kv_cache(self, batch_size, max_len, dtype=None, device=None) -> KVCache:
        ref = self.tok_embeddings.weight
        return KVCache(self.cfg.n_layers, batch_size, self.cfg.kv_heads, max_len, self.cfg.head_dim,
                       dtype or ref.dtype, device or ref.device)

    def _attention_mask(self, B, T, start_pos, total, key_padding_mask, doc_ids, device):
        """Boolean [B or 1, 1, T, total] mask (True = attend), or None when plain causal attention is right."""
        offset_needs_mask = start_pos > 0 and T > 1
        if key_padding_mask is None and doc_ids is None and not offset_needs_mask:
            return None
        query_pos = torch.arange(start_pos, start_pos + T, device=device)
        key_pos = torch.arange(total, device=device)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]
        if key_padding_mask is not None:
            mask = mask & key_padding_mask[:, None, None, :].to(device=device, dtype=torch.bool)
        if doc_ids is not None:
            mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
        # A query that sees no key at all (a left-pad token) would get NaN from the softmax, and NaN keys
        # poison later layers even where masked: let every query see itself.
        mask = mask | (key_pos[None, :] == query_pos[:, None])[None, None]
        return mask

    def forward(self, tokens, *, start_pos: int = 0, kv_cache: KVCache | None = None, position_ids=None,
                key_padding_mask=None, doc_ids=None, return_hidden: bool = False):
        B, T = tokens.shape
        total = start_pos + T if kv_cache is not None else T
        if kv_cache is None and start_pos:
            raise ValueError(f"start_pos={start_pos} needs a kv_cache (positions before it must be cached)")
        if kv_cache is not None and (total > kv_cache.max_len or B > kv_cache.batch_size):
            raise ValueError(f"kv_cache holds {kv_cache.batch_size} rows x {kv_cache.max_len} positions; "
                             f"got {B} rows up to position {total}")
        if doc_ids is not None and (kv_cache is not None and start_pos > 0):
            raise ValueError("doc_ids cannot be combined with a kv_cache offset (start_pos > 0)")
        if doc_ids is not None and doc_ids.shape != tokens.shape:
            raise ValueError(f"doc_ids must be shaped like tokens {tuple(tokens.shape)}, got {tuple(doc_ids.shape)}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, total):
            raise ValueError(f"key_padding_mask must be [batch, cached + new tokens] = {(B, total)}, "
                             f"got {tuple(key_padding_mask.shape)}")

        h = self.tok_embeddings(tokens)
        positions = range(start_pos, start_pos + T) if position_ids is None else position_ids
        angles = self.rope.for_positions(positions, h.device, h.dtype)
        mask = self._attention_mask(B, T, start_pos, total, key_padding_mask, doc_ids, h.device)
        use_checkpoint = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_checkpoint and kv_cache is None:
                h = checkpoint(layer, h, angles, mask, use_reentrant=False)
            else:
                h = layer(h, angles, mask, kv_cache, start_pos)
        h = self.norm(h)
        return h if return_hidden else self.output(h)

    def num_params(self, include_embeddings: bool = True) -> int:
        """All parameters; with include_embeddings=False, without the two vocab-sized matrices
        (tok_embeddings and output)."""
        total = sum(_numel(p) for p in self.parameters())
        if not include_embeddings:
            total -= _numel(self.tok_embeddings.weight) + _numel(self.output.weight)
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token of one training step (forward + backward) at sequence length seq_len.

        forward  = 2 * N_matmul + 4 * n_layers * dim * seq_len
        total    = 3 * forward = 6 * N_matmul + 12 * n_layers * dim * seq_len   (backward = 2 x forward)
        N_matmul counts the weights of every matmul: attention wq/wk/wv/wo, FFN w1/w2/w3 and the output layer
        (not the embedding lookup nor the norms). The attention term is the scores QK^T (2 * dim * seq_len
        per layer and token) plus the weighted sum of values (same again), counted over the full seq_len
        keys as in the PaLM/Megatron MFU convention (causal masking is not discounted), so MFU figures are
        comparable with published ones.
        """
        cfg = self.cfg
        n_matmul = cfg.n_layers * sum(
            _numel(m.weight) for m in (*self.layers[0].attention.children(), *self.layers[0].feed_forward.children())
        ) + _numel(self.output.weight)
        return 6.0 * n_matmul + 12.0 * cfg.n_layers * cfg.dim * seq_len
