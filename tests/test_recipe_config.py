"""The composed configs carry the paper's numbers (§2, §2.2-§2.6, Table 1; docs/recipe.md) for every (model
size, stage).

The expected values below are written from the paper (docs/recipe.md), independently of conf/: the test composes
the real Hydra configs exactly as codellama-train and codellama-pipeline do and compares.
"""
import pytest
from omegaconf import OmegaConf

from codellama_recipe.core.config import compose as _compose
from codellama_recipe.stages.pipeline import compose_stage
from codellama_recipe.stages.pipeline_cli import compose_pipeline

M = 1 << 20
# Paper §2.6 (docs/recipe.md#optimisation): peak LR of the code stage, LCFT batch (tokens), LCFT steps (Code
# Llama); infilling by size: §2.3 (docs/recipe.md#infilling).
SIZE = {
    "7b": dict(code_lr=3e-4, lcft_batch=2 * M, lcft_steps=3000, lcft_steps_python=10000, fim=True),
    "13b": dict(code_lr=3e-4, lcft_batch=2 * M, lcft_steps=10000, lcft_steps_python=10000, fim=True),
    "34b": dict(code_lr=1.5e-4, lcft_batch=1 * M, lcft_steps=11000, lcft_steps_python=11000, fim=False),
    # arXiv 2308.12950v3 §1: 1T code tokens and FIM; LCFT numbers OPEN (follow the 34B)
    "70b": dict(code_lr=1.5e-4, lcft_batch=1 * M, lcft_steps=10000, lcft_steps_python=10000, fim=True,
                code_tokens=1e12),
}
# The released params.json files (docs/recipe.md#architecture)
ARCH = {
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32016),
    "13b": dict(dim=5120, n_layers=40, n_heads=40, n_kv_heads=40, vocab_size=32016),
    "34b": dict(dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, vocab_size=32000),
    "70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000),
}


def compose_train(model, stage):
    return _compose("train", [f"model={model}", f"stage={stage}"])


def weights(cfg):
    return {name: src.weight for name, src in cfg.data.sources.items()}


@pytest.mark.parametrize("model", sorted(SIZE))
def test_code_stage(model):
    cfg = compose_train(model, "code")
    want = SIZE[model]
    assert cfg.optim.lr == pytest.approx(want["code_lr"])
    assert tuple(cfg.optim.betas) == (0.9, 0.95)
    assert cfg.optim.eps == 1e-5 and cfg.optim.weight_decay == 0.1 and cfg.optim.grad_clip == 1.0
    assert cfg.optim.schedule == "cosine" and cfg.optim.warmup_steps == 1000
    assert cfg.optim.final_lr_ratio == pytest.approx(1 / 30)
    assert cfg.trainer.batch_tokens == 4 * M and cfg.data.seq_len == 4096
    assert cfg.trainer.max_steps * cfg.trainer.batch_tokens == pytest.approx(want.get("code_tokens", 500e9), rel=1e-4)
    assert bool(cfg.data.fim.enabled) is want["fim"]
    assert cfg.data.fim.rate == pytest.approx(0.9) and cfg.data.fim.spm_rate == pytest.approx(0.5)
    w = weights(cfg)
    assert {k: round(v, 4) for k, v in w.items()} == {"code": 0.85, "nl_code": 0.08, "nl": 0.07}
    assert cfg.model.rope_theta == 10000.0
    arch = dict(cfg.model, n_kv_heads=cfg.model.n_kv_heads or cfg.model.n_heads)  # null = no GQA (params.json)
    for key, value in ARCH[model].items():
        assert arch[key] == value, key


@pytest.mark.parametrize("model", sorted(SIZE))
def test_python_stage(model):
    cfg = compose_train(model, "python")
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.trainer.max_steps * cfg.trainer.batch_tokens == pytest.approx(100e9, rel=1e-4)
    assert not cfg.data.fim.enabled
    w = weights(cfg)
    assert {k: round(v, 4) for k, v in w.items()} == {"python": 0.75, "code": 0.10, "nl_code": 0.10, "nl": 0.05}


@pytest.mark.parametrize("model", sorted(SIZE))
def test_long_context_stage(model):
    cfg = compose_train(model, "long_context")
    want = SIZE[model]
    assert cfg.optim.lr == pytest.approx(2e-5)
    assert cfg.data.seq_len == 16384 and cfg.model.max_seq_len >= 16384
    assert cfg.model.rope_theta == 1e6
    assert cfg.trainer.batch_tokens == want["lcft_batch"]
    assert cfg.trainer.max_steps == want["lcft_steps"]


@pytest.mark.parametrize("model", sorted(SIZE))
def test_instruct_stage(model):
    cfg = compose_train(model, "instruct")
    assert cfg.trainer.batch_tokens == 524288
    assert cfg.trainer.max_steps * cfg.trainer.batch_tokens == pytest.approx(5e9, rel=1e-3)
    assert cfg.model.rope_theta == 1e6
    w = weights(cfg)
    assert w["code"] == pytest.approx(0.06) and w["nl"] == pytest.approx(0.02)
    assert sum(w.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("model", sorted(SIZE))
def test_python_pipeline_uses_default_lcft_length(model):
    pcfg = compose_pipeline(["pipeline=codellama_python", f"pipeline.model={model}"])
    lc = compose_stage(pcfg, "long_context", None)
    assert lc.trainer.max_steps == SIZE[model]["lcft_steps_python"]
    assert not compose_stage(pcfg, "code", None).data.fim.enabled
    assert set(weights(lc)) == {"python", "code", "nl_code", "nl"}
    # paper §2, Fig. 2: the Python variant keeps Llama 2's 32,000-piece vocabulary
    for stage in pcfg.pipeline.order:
        assert compose_stage(pcfg, stage, None).model.vocab_size == 32000


@pytest.mark.parametrize("model", sorted(SIZE))
def test_codellama_pipeline_follows_infilling_by_size(model):
    pcfg = compose_pipeline(["pipeline=codellama", f"pipeline.model={model}", "pipeline.init_from=/llama2"])
    code = compose_stage(pcfg, "code", "/llama2")
    assert bool(code.data.fim.enabled) is SIZE[model]["fim"]
    assert code.init_from == "/llama2"
    assert list(pcfg.pipeline.order) == ["code", "long_context"]


def test_per_stage_override_from_command_line():
    pcfg = compose_pipeline(["pipeline=codellama", "stages.long_context.trainer.max_steps=100"])
    assert compose_stage(pcfg, "long_context", None).trainer.max_steps == 100
    assert compose_stage(pcfg, "code", None).trainer.max_steps != 100


def test_every_pipeline_composes_and_resolves():
    for name in ["tiny", "smoke", "codellama", "codellama_python"]:
        pcfg = compose_pipeline([f"pipeline={name}"])
        for stage in pcfg.pipeline.order:
            OmegaConf.to_container(compose_stage(pcfg, stage, None), resolve=True)


def test_tiny_pipeline_runs_every_stage_kind_in_release_order():
    pcfg = compose_pipeline(["pipeline=tiny"])
    kinds = [pcfg.stages[s]["groups"]["stage"] for s in pcfg.pipeline.order]
    assert kinds == ["code", "python", "long_context", "instruct"]
    lc = compose_stage(pcfg, "long_context", None)
    code = compose_stage(pcfg, "code", None)
    assert lc.model.rope_theta == 1e6 and lc.data.seq_len > code.data.seq_len
    assert code.data.fim.enabled


def test_corpus_override_reaches_every_stage_that_reads_the_source():
    pcfg = compose_pipeline(["pipeline=tiny", "corpus.code.paths=[/data/stack/*.parquet]",
                             "corpus.code.text_field=content"])
    for stage in pcfg.pipeline.order:
        cfg = compose_stage(pcfg, stage, None)
        assert list(cfg.data.sources.code.paths) == ["/data/stack/*.parquet"], stage
        assert cfg.data.sources.code.text_field == "content"
        assert str(cfg.data.sources.nl.paths[0]).endswith("corpus-v2/nl/train-*.jsonl")


def test_a_key_for_every_stage_wins_over_the_preset_and_a_per_stage_key_wins_over_both():
    pcfg = compose_pipeline(["pipeline=tiny", "trainer.max_steps=7", "stages.python.trainer.max_steps=3",
                             "deepspeed=zero2"])
    steps = {s: compose_stage(pcfg, s, None).trainer.max_steps for s in pcfg.pipeline.order}
    assert steps == {"code": 7, "python": 3, "long_context": 7, "instruct": 7}
    assert compose_stage(pcfg, "code", None).deepspeed.zero_optimization.stage == 2
