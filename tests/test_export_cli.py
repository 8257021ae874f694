"""codellama-export: Meta and Hugging Face folders in, a folder transformers loads with our logits out."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_model import assert_same_state, random_model, tiny_config, write_meta_checkpoint
from codellama_recipe.train.weight_formats import load_hf, save_hf
from codellama_recipe.train.export import main
from codellama_recipe.train.model import Llama

pytestmark = pytest.mark.timeout(120)

transformers = pytest.importorskip("transformers")


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("codellama-export")
    return [str(script)] if script.exists() else [sys.executable, "-m", "codellama_recipe.train.export"]


def test_meta_folder_export_loads_in_transformers_with_our_logits(tmp_path):
    from helpers_tokenizer import small_tokenizer_path

    model = random_model(tiny_config(vocab_size=2048))  # the small tokenizer's size
    src = write_meta_checkpoint(model, tmp_path / "meta", num_shards=2)
    shutil.copyfile(small_tokenizer_path(), src / "tokenizer.model")  # Meta's release ships it in the folder
    out = tmp_path / "hf"
    proc = subprocess.run([*_console_script(), str(src), str(out)], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = torch.randint(0, 2048, (2, 50))
    with torch.no_grad():
        diff = (hf(input_ids=tokens).logits - model(tokens)).abs().max().item()
    assert diff < 1e-4, diff


def test_hf_folder_export_with_dtype_vocab_and_theta(tmp_path):
    model = random_model()
    save_hf(model.state_dict(), model.cfg, tmp_path / "a")
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--dtype", "bfloat16"]) == 0
    cfg, state = load_hf(tmp_path / "b")
    assert_same_state(state, {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})

    assert main([str(tmp_path / "a"), str(tmp_path / "c"), "--vocab-size", "336", "--rope-theta", "500000",
                 "--max-seq-len", "16384"]) == 0
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert (config["vocab_size"], config["rope_theta"], config["max_position_embeddings"]) == (336, 5e5, 16384)
    cfg, state = load_hf(tmp_path / "c")
    Llama(cfg).load_state_dict(state)


def test_bad_source_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hi")
    assert main([str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codellama-export: error: unknown checkpoint format") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
