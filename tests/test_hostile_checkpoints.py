"""Nothing a user points at is unpickled: a project checkpoint carrying a pickle payload, given as init_from, to
codellama-export or to codellama-eval, is refused with one line (exit 2) and the payload never runs. The same
loader reads our own checkpoints (resume, consolidation) in the engine tests."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from helpers_tokenizer import small_tokenizer_path

from codellama_recipe.train.checkpoint_reading import load_consolidated
from codellama_recipe.train.weight_formats import CHECKPOINT_MARKER, CheckpointError

pytestmark = pytest.mark.timeout(300)

MODEL = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 16,
         "ffn_dim_multiplier": None, "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seq_len": 64}


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_checkpoint(folder, marker, zero_stage=1):
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_MARKER).write_text(json.dumps(
        {"kind": "checkpoint", "format_version": 1, "model_config": MODEL, "zero_stage": zero_stage,
         "precision": "fp32", "step": 1}))
    torch.save({"module": {"tok_embeddings.weight": torch.zeros(256, 64)}, "extra": Payload(marker),
                "ds_version": "0.0", "param_shapes": []}, folder / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": Payload(marker)}, folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return folder


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_loading_a_payload_checkpoint_refuses_it_and_runs_nothing(tmp_path, zero_stage):
    marker = tmp_path / "pwned"
    folder = hostile_checkpoint(tmp_path / "ckpt", marker, zero_stage)
    with pytest.raises(CheckpointError, match="refused: it holds a ") as e:
        load_consolidated(folder)
    assert "holds a posix.system" in str(e.value) or "holds a os.system" in str(e.value)
    assert not marker.exists()


def _cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=240)


def test_every_input_path_refuses_the_payload_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    folder = hostile_checkpoint(tmp_path / "ckpt", marker)
    runs = {
        "export": ["codellama_recipe.train.export", str(folder), str(tmp_path / "out")],
        "eval": ["codellama_recipe.evaluation.cli", f"model_path={folder}", "benchmarks=[perplexity]",
                 f"out_dir={tmp_path / 'eval'}", f"tokenizer_path={small_tokenizer_path()}"],
        "init_from": ["codellama_recipe.train.cli", "model=tiny", f"init_from={folder}", f"run_dir={tmp_path / 'run'}",
                      "trainer.max_steps=1", "data.seq_len=64", "model.max_seq_len=64",
                      f"tokenizer_path={small_tokenizer_path()}"],
    }
    for name, args in runs.items():
        done = _cli(args, tmp_path)
        err = [line for line in done.stderr.splitlines() if line.strip() and "WARNING" not in line]
        assert not marker.exists(), f"{name}: the payload ran"
        assert done.returncode == 2, (name, done.stderr[-2000:])
        assert any("refused: it holds a" in line for line in err), (name, err)
        assert "Traceback" not in done.stderr, (name, done.stderr[-2000:])


def test_damaged_safetensors_and_meta_shards_are_named(tmp_path):
    from codellama_recipe.train.pretrained import load_pretrained

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                                "num_hidden_layers": 2, "vocab_size": 256, "intermediate_size": 176}))
    (hf / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_pretrained(hf)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 256}))
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2), "x": Payload(tmp_path / "pwned")},
               meta / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: not a readable Meta shard"):
        load_pretrained(meta)
    assert not (tmp_path / "pwned").exists()
    (meta / "consolidated.00.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"consolidated\.00\.pth: not a readable Meta shard"):
        load_pretrained(meta)
