"""Who writes the questions, tests and solutions: this project's model (an HF export, Meta folder or project
checkpoint, batched with the KV cache, CPU or GPU), or an OpenAI-compatible completions endpoint (what vLLM,
llama.cpp's server and TGI serve) for large generators.

Both answer `complete(requests) -> texts`, a request being (prompt, seed). With temperature > 0 every request is
sampled with its own seed, so an item's text does not depend on what else is in the batch (resume exactness).
"""
from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from codellama_recipe.core.errors import InputError


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()


class LocalModel:
    """The project's Generator on a checkpoint this project can load."""

    def __init__(self, model_path: str, *, cache_dir: str, device: str = "auto", dtype: str = "float32",
                 batch_size: int = 8):
        from codellama_recipe.evaluation.generation import Generator
        from codellama_recipe.evaluation.model_loading import ModelToLoad, load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(ModelToLoad(model_path, cache_dir=cache_dir, device=device,
                                                                dtype=dtype))
        self.generator, self.name = Generator(model, tokenizer, batch_size=batch_size), model_path

    def complete(self, requests: Sequence[tuple[str, int]], sampling: Sampling) -> list[str]:
        from codellama_recipe.evaluation.generation import GenerationParams

        if sampling.temperature == 0:   # greedy: batching does not change the text
            params = GenerationParams(max_new_tokens=sampling.max_new_tokens, stop=sampling.stop)
            return self.generator.complete([p for p, _ in requests], params)
        return [self.generator.complete([prompt], GenerationParams(
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=sampling.stop, seed=seed))[0] for prompt, seed in requests]


class EndpointUnreachable(InputError):
    def __init__(self, url: str, why: str, tries: int):
        super().__init__("generator.url", url,
                         f"no answer after {tries} tries ({why}); is the server running and the URL right?")


class Endpoint:
    """POST {url}/v1/completions, `concurrency` requests at a time, each with a timeout and retried with
    exponential backoff on connection errors, timeouts, 429 and 5xx answers."""

    def __init__(self, url: str, *, model: str, concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4,
                 backoff_s: float = 1.0, api_key: str | None = None):
        self.url = url.rstrip("/") + "/v1/completions"
        self.name, self.model, self.concurrency = f"{model} @ {url}", model, concurrency
        self.timeout_s, self.retries, self.backoff_s, self.api_key = timeout_s, retries, backoff_s, api_key

    def _post(self, body: dict) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        why = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = json.loads(response.read().decode("utf-8"))
                return str(answer["choices"][0]["text"])
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code}"
                if e.code != 429 and e.code < 500:
                    raise InputError("generator.url", self.url, f"the server refused the request: HTTP {e.code} "
                                      f"{e.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                why = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                why = f"an answer that is not a completions response ({type(e).__name__})"
        raise EndpointUnreachable(self.url, why, self.retries + 1)

    def complete(self, requests: Sequence[tuple[str, int]], sampling: Sampling) -> list[str]:
        def one(request):
            prompt, seed = request
            body = {"model": self.model, "prompt": prompt, "max_tokens": sampling.max_new_tokens,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": seed}
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            return self._post(body)
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, requests))
