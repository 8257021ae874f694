"""Checkpoints verify themselves: a damaged latest checkpoint (any of its files truncated, emptied or changed) is
named and skipped, the run resumes exactly from the newest intact one; with none intact, one line and exit 2."""
import json
import shutil

import pytest
import torch

import helpers_engine as H
from codellama_recipe.train.checkpoint_integrity import MANIFEST, newest_intact_tag, tag_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

BASE = H.TINY + ["trainer.batch_tokens=256", "trainer.log_every=1", "trainer.val_every=0", "data.num_workers=0",
                 "optim.warmup_steps=1", "deepspeed=zero1", "trainer.checkpoint_every=2", "trainer.keep_last=5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run stopped after step 4 (checkpoints 2 and 4) and the same run trained to step 6 without a stop."""
    root = tmp_path_factory.mktemp("damage")
    rc, out = H.run(BASE + [f"run_dir={root / 'run'}", "trainer.max_steps=4"], nproc=0)
    assert rc == 0, out[-3000:]
    rc, out = H.run(BASE + [f"run_dir={root / 'ref'}", "trainer.max_steps=6"], nproc=0)
    assert rc == 0, out[-3000:]
    return root


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model states": ("mp_rank_00_model_states.pt", _truncate),
    "empty model states": ("mp_rank_00_model_states.pt", _empty),
    "truncated optimizer states": ("zero_pp_rank_0_mp_rank_00_optim_states.pt", _truncate),
    "changed optimizer states": ("zero_pp_rank_0_mp_rank_00_optim_states.pt", _flip_a_byte),
    "truncated client state": ("client_state.json", _truncate),
    "truncated rank state": ("client/rank_00000.json", _truncate),
    "truncated manifest": (MANIFEST, _truncate),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_each_kind_of_damage_is_named_and_the_older_checkpoint_is_chosen(trained, tmp_path, kind):
    name, hurt = DAMAGE[kind]
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    hurt(run / "checkpoints" / tag_for(4) / name)
    tag, damaged = newest_intact_tag(run / "checkpoints")
    assert tag == tag_for(2)
    assert [t for t, _ in damaged] == [tag_for(4)] and name in damaged[0][1], damaged


def test_resume_skips_a_damaged_latest_and_trains_exactly_as_without_a_stop(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    _truncate(run / "checkpoints" / tag_for(4) / "mp_rank_00_model_states.pt")
    rc, out = H.run(BASE + [f"run_dir={run}", "trainer.max_steps=6"], nproc=0)
    assert rc == 0, out[-3000:]
    assert f"checkpoint {tag_for(4)} is damaged (mp_rank_00_model_states.pt has " in out
    assert f"resumed from {run / 'checkpoints' / tag_for(2)}: step 2" in out
    assert json.loads((run / "DONE.json").read_text())["damaged_checkpoints_skipped"] == 1
    ours, ref = H.hf_weights(run), H.hf_weights(trained / "ref")
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_with_no_intact_checkpoint_one_line_and_exit_2(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    _empty(run / "checkpoints" / tag_for(4) / "client_state.json")
    _flip_a_byte(run / "checkpoints" / tag_for(2) / "mp_rank_00_model_states.pt")
    rc, out = H.run(BASE + [f"run_dir={run}", "trainer.max_steps=6"], nproc=0)
    assert rc == 2, out[-3000:]
    line = next(line for line in out.splitlines() if "no intact checkpoint" in line)
    assert tag_for(4) in line and tag_for(2) in line and "nothing was loaded" in line
    assert "Traceback" not in out


POISON = [b'{"text": "\\ud800 lone surrogate"}', b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b'}',
          b'{"text": "' + b"q" * 200_000 + b'"}', b'not json at all']


def test_poison_records_mid_stream_are_skipped_through_a_kill_and_a_resume(tmp_path):
    lines = []
    for i in range(400):
        lines.append(json.dumps({"text": f"def function_{i}(x):\n    return x * {i} + {i % 7}\n"}).encode())
        if i % 6 == 3:
            lines.append(POISON[(i // 6) % len(POISON)])
    data = tmp_path / "poison.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    corpus = [f"corpus.{s}.{k}={v}" for s in ("code", "nl_code", "nl")
              for k, v in (("paths", f"[{data}]"), ("val_paths", "null"))]
    overrides = BASE + corpus + ["data.max_doc_chars=20000", "trainer.max_steps=8", "data.fim.enabled=false"]
    rc, out = H.run(overrides + [f"run_dir={tmp_path / 'ref'}"], nproc=0)
    assert rc == 0, out[-3000:]
    proc = H.launch(overrides + [f"run_dir={tmp_path / 'run'}"], nproc=0, hang_at_step=5)
    H.wait_for(lambda: H.hang_marker(tmp_path / "run", 0).exists(), proc, what="step 5")
    H.kill_tree(proc)                                    # kill -9 after step 5 (latest checkpoint: 4)
    rc, out = H.run(overrides + [f"run_dir={tmp_path / 'run'}"], nproc=0)
    assert rc == 0, out[-3000:]
    last = H.metrics(tmp_path / "run")[-1]
    skipped = {k.split("/")[-1] for k, v in last.items() if k.startswith("data/skipped/") and v}
    assert {"invalid_text", "malformed_json", "too_long"} <= skipped, last
    ours, ref = H.hf_weights(tmp_path / "run"), H.hf_weights(tmp_path / "ref")
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


def _tmpfs(path, size_kb):
    import subprocess

    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")


def test_a_full_disk_is_one_line_exit_2_and_nothing_is_lost(tmp_path):
    import subprocess

    overrides = BASE + ["wandb.mode=disabled", "trainer.checkpoint_every=1", "trainer.keep_last=1"]
    rc, out = H.run(overrides + [f"run_dir={tmp_path / 'probe'}", "trainer.max_steps=1"], nproc=0)
    assert rc == 0, out[-3000:]
    one = sum(p.stat().st_size for p in (tmp_path / "probe" / "checkpoints" / tag_for(1)).rglob("*") if p.is_file())
    disk = tmp_path / "small"
    _tmpfs(disk, int(one * 1.5 / 1024) + 256)      # room for one checkpoint, not for the next beside it
    try:
        rc, out = H.run(overrides + [f"run_dir={disk / 'run'}", "trainer.max_steps=4"], nproc=0)
        assert rc == 2, out[-3000:]
        line = next(line for line in out.splitlines() if "no space left" in line)
        assert f"writing checkpoint {tag_for(2)}" in line and f"latest checkpoint ({tag_for(1)}) is intact" in line
        assert "Traceback" not in out and "basic_ios" not in out
        shutil.copytree(disk / "run", tmp_path / "moved")
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    rc, out = H.run(overrides + [f"run_dir={tmp_path / 'moved'}", "trainer.max_steps=4"], nproc=0)
    assert rc == 0 and f"resumed from {tmp_path / 'moved' / 'checkpoints' / tag_for(1)}: step 1" in out, out[-3000:]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_strict_mode_stop_is_one_line_naming_file_and_line(tmp_path, workers):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\n".join([json.dumps({"text": f"row {i} " * 20}).encode() for i in range(30)]
                                + [b'{"text": "\\ud800"}']) + b"\n")
    corpus = [f"corpus.{s}.{k}={v}" for s in ("code", "nl_code", "nl")
              for k, v in (("paths", f"[{data}]"), ("val_paths", "null"))]
    rc, out = H.run(BASE + corpus + [f"run_dir={tmp_path / 'run'}", "trainer.max_steps=20", "data.strict=true",
                                     f"data.num_workers={workers}"], nproc=0)
    assert rc == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("codellama-train: ")]
    assert len(errors) == 1 and "(invalid_text) in source" in errors[0] and f"{data.name}:31" in errors[0], errors
    assert "Traceback" not in out
