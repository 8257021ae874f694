"""Batched text generation on our Llama with a KV cache: greedy or temperature/top-p sampling,
stop sequences, and Code Llama infilling (PSM / SPM prompts of data.fim.fim_prompt, as the reference generation code).

Batches are left-padded: every prompt ends at the same column, so each step appends one column.
`key_padding_mask` hides the pad columns and `position_ids` count positions from each row's first real
token, so a padded row computes exactly what it would alone.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from codellama_recipe.core.errors import ConfigError
from codellama_recipe.data.fim import fim_prompt


@dataclasses.dataclass
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.0            # 0 = greedy
    top_p: float = 1.0                  # nucleus sampling mass (only with temperature > 0)
    stop: tuple[str, ...] = ()          # the completion ends before the first of these strings
    stop_token_ids: tuple[int, ...] | None = None   # None = the tokenizer's EOS
    seed: int = 0

    def validate(self) -> "GenerationParams":
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens", self.max_new_tokens, "must be >= 1")
        if self.temperature < 0:
            raise ConfigError("temperature", self.temperature, "must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", self.top_p, "must be in (0, 1]")
        return self


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def sample_next_token(logits: torch.Tensor, temperature: float, top_p: float,
                      generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. Greedy when temperature == 0; else softmax(logits / T) restricted
    to the smallest set of most likely tokens whose mass reaches top_p (always at least one)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before > top_p, 0.0)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(dim=-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


class Generator:
    """Generation on a project Llama (train.model.Llama) with a data.tokenizer.Tokenizer."""

    def __init__(self, model, tokenizer, batch_size: int = 8, device: str | torch.device | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    # ---------------------------------------------------------------- token level
    @torch.inference_mode()
    def generate_tokens(self, prompts: Sequence[Sequence[int]], params: GenerationParams,
                        use_cache: bool = True) -> list[list[int]]:
        """New tokens for each prompt, ending before the first stop token (not included); stop strings
        end a row early (its text is cut later by `truncate_at_stop`). Longest prompts are batched
        together to limit padding; sampling is seeded per call, so a call is reproducible."""
        params.validate()
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (use BOS)")
        generator = None
        if params.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        self.model.eval()
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            results = self._generate_batch([list(prompts[i]) for i in chunk], params, generator, use_cache)
            for i, tokens in zip(chunk, results):
                out[i] = tokens
        return out

    def _generate_batch(self, prompts: list[list[int]], params: GenerationParams,
                        generator, use_cache: bool) -> list[list[int]]:
        B, P, N = len(prompts), max(len(p) for p in prompts), params.max_new_tokens
        pad = self.tokenizer.pad_id
        stop_ids = set(params.stop_token_ids if params.stop_token_ids is not None else (self.tokenizer.eos_id,))
        tokens = torch.full((B, P + N), pad, dtype=torch.long, device=self.device)
        valid = torch.ones((B, P + N), dtype=torch.bool, device=self.device)
        for row, prompt in enumerate(prompts):
            tokens[row, P - len(prompt):P] = torch.tensor(prompt, dtype=torch.long)
            valid[row, :P - len(prompt)] = False
        padded = not bool(valid.all())
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)

        def forward(begin: int, end: int, cache):
            """Logits of the last position, feeding columns [begin, end) (all of [0, end) without cache).
            Only the last position goes through the output layer (a prompt's other logits are unused)."""
            if cache is None:
                begin = 0
            hidden = self.model(tokens[:, begin:end], start_pos=begin, kv_cache=cache,
                                position_ids=positions[:, begin:end],
                                key_padding_mask=valid[:, :end] if padded else None, return_hidden=True)
            return self.model.output(hidden[:, -1])

        cache = self.model.new_kv_cache(B, P + N, device=self.device) if use_cache else None
        logits = forward(0, P, cache)
        generated: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        for step in range(N):
            next_tokens = sample_next_token(logits, params.temperature, params.top_p, generator)
            tokens[:, P + step] = next_tokens
            for row, token in enumerate(next_tokens.tolist()):
                if done[row]:
                    continue
                if token in stop_ids:
                    done[row] = True
                    continue
                generated[row].append(token)
                if params.stop and self._hits_stop(generated[row], params.stop):
                    done[row] = True
            if all(done) or step == N - 1:
                break
            logits = forward(P + step, P + step + 1, cache)
        return generated

    def _hits_stop(self, tokens: list[int], stops: Sequence[str]) -> bool:
        # Only the tail can contain a stop string that was not there one token ago.
        longest = max(len(s) for s in stops)
        tail = self.tokenizer.decode_no_space(tokens[-(longest + 8):])
        return any(s in tail for s in stops)

    # ---------------------------------------------------------------- text level
    def complete(self, prompts: Sequence[str], params: GenerationParams, bos: bool = True) -> list[str]:
        """Left-to-right completions; decoded without stripping the first token's leading space
        (it is a real space after the prompt) and cut before the first stop string."""
        encoded = [self.tokenizer.encode(p, bos=bos) for p in prompts]
        outputs = self.generate_tokens(encoded, params)
        return [truncate_at_stop(self.tokenizer.decode_no_space(t), params.stop) for t in outputs]

    def infill(self, prefixes: Sequence[str], suffixes: Sequence[str], params: GenerationParams,
               suffix_first: bool = False) -> list[str]:
        """Middles for (prefix, suffix) pairs; generation stops at <EOT>; decoded without the leading space."""
        if len(prefixes) != len(suffixes):
            raise ValueError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
        encoded = [fim_prompt(self.tokenizer, p, s, spm=suffix_first) for p, s in zip(prefixes, suffixes)]
        params = dataclasses.replace(params, stop_token_ids=(self.tokenizer.eot_id, self.tokenizer.eos_id))
        outputs = self.generate_tokens(encoded, params)
        return [truncate_at_stop(self.tokenizer.decode_no_space(t), params.stop) for t in outputs]
