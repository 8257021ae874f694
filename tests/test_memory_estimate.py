"""codellama-estimate against independent references: the parameter count against the model itself, the
activations against the tensors autograd saves for the backward, ZeRO's partitioning, and the hardware presets
as they compose."""
import pytest
import torch

from codellama_recipe.core.config import compose
from codellama_recipe.core.schema import ModelConfig
from codellama_recipe.train.memory_estimate import (activation_elements_per_layer, main, model_states,
                                                    parameter_count)
from codellama_recipe.train.model import Llama

TINY = dict(dim=128, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=128)


@pytest.mark.parametrize("preset", ["7b", "13b", "34b", "70b"])
def test_parameter_count_is_the_models(preset):
    node = compose("train", [f"model={preset}", "model.vocab_size=32016"]).model
    cfg = ModelConfig.from_dict(node)
    with torch.device("meta"):
        model = Llama(cfg)
    assert parameter_count(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.kv_heads, 32016, cfg.hidden_dim) == \
        sum(p.numel() for p in model.parameters())


def _saved_bytes(n_layers: int, checkpointing: bool, seq=128, batch=2) -> int:
    """Bytes of the tensors autograd keeps for the backward (parameters excluded), one forward in fp32."""
    model = Llama(ModelConfig(n_layers=n_layers, **TINY), activation_checkpointing=checkpointing).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(0, TINY["vocab_size"], (batch, seq)))
    return sum(saved.values())


def test_activations_per_layer_are_what_autograd_saves():
    hidden = ModelConfig(n_layers=1, **TINY).hidden_dim
    measured = (_saved_bytes(4, False) - _saved_bytes(2, False)) / 2          # the embedding and head cancel out
    estimated = activation_elements_per_layer(128, 2, 128, 4, 2, hidden) * 4
    assert 0.9 <= estimated / measured <= 1.15, (estimated, measured)
    measured_ckpt = (_saved_bytes(4, True) - _saved_bytes(2, True)) / 2
    assert measured_ckpt == 128 * 2 * 128 * 4                                 # each layer's input only


def test_zero_stages_partition_what_they_should():
    params, n = 1_000_000, 8
    assert model_states(params, "bf16", 0, n) == (2e6, 2e6, 12e6)
    assert model_states(params, "bf16", 1, n) == (2e6, 2e6, 12e6 / n)
    assert model_states(params, "bf16", 2, n) == (2e6, 2e6 / n, 12e6 / n)
    assert model_states(params, "bf16", 3, n) == (2e6 / n, 2e6 / n, 12e6 / n)
    assert sum(model_states(params, "fp32", 0, n)) == 16e6


def test_hardware_presets_compose_and_size_the_stages(capsys):
    cpu = compose("train", ["model=7b", "stage=long_context"])
    assert (cpu.hardware.name, cpu.trainer.precision, cpu.deepspeed.zero_optimization.stage) == ("cpu", "fp32", 1)
    gpu = compose("train", ["model=7b", "hardware=8xh100", "stage=long_context"])
    assert (gpu.trainer.precision, gpu.deepspeed.zero_optimization.stage, gpu.trainer.compile) == ("bf16", 2, True)
    assert gpu.trainer.activation_checkpointing and gpu.hardware.devices == 8
    assert not compose("train", ["model=7b", "hardware=8xh100", "stage=code"]).trainer.activation_checkpointing
    assert compose("train", ["model=7b", "hardware=8xh100", "deepspeed=zero3"]).deepspeed.zero_optimization.stage == 3
    assert main(["model=7b", "hardware=8xh100"]) == 0
    rows = {line.split()[0]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:5]}
    assert rows == {"code": "yes", "python": "yes", "long_context": "yes", "instruct": "yes"}
    assert main(["model=34b", "hardware=8xh100"]) == 0
    assert "NO" in capsys.readouterr().out


@pytest.mark.parametrize("args, key", [(["stage=code"], "stage"), (["hardware=tpu"], "hardware"),
                                       (["hardware.devices=0"], "hardware.devices")])
def test_mistakes_are_one_line_exit_2(capsys, args, key):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
