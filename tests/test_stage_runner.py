"""The one stage runner of codellama-pipeline and codellama-ablate: what it plans for each job from the state file
and the job folders (training itself is covered by the pipeline and ablate tests)."""
import json

import pytest
from omegaconf import OmegaConf

from codellama_recipe.stages.stage_runner import (STATE_FORMAT, Job, PipelineError, plan_jobs, record_finished)


def jobs(tmp_path, x=1):
    a = OmegaConf.create({"run_dir": str(tmp_path / "a"), "init_from": None, "x": x})
    b = OmegaConf.create({"run_dir": str(tmp_path / "b"), "init_from": str(tmp_path / "a" / "hf"), "y": 0})
    return [Job("a", a), Job("b", b, parent="a")]


def plan(tmp_path, x=1, **kwargs):
    return plan_jobs(jobs(tmp_path, x), tmp_path / "state.json", noun="arm", remedy="remove {folder}", **kwargs)


def finish(tmp_path, planned):
    record_finished(tmp_path / "state.json", planned)
    planned.folder.mkdir(parents=True, exist_ok=True)
    (planned.folder / "DONE.json").write_text("{}")


def test_fresh_jobs_run_an_interrupted_one_resumes_and_finished_ones_are_skipped(tmp_path):
    assert [p.action for p in plan(tmp_path)] == ["run", "run"]
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    assert [p.action for p in plan(tmp_path)] == ["resume", "run"]
    first = plan(tmp_path)
    finish(tmp_path, first[0])
    assert [p.action for p in plan(tmp_path)] == ["skip", "run"]
    record = json.loads((tmp_path / "state.json").read_text())["a"]
    assert record["state_format"] == STATE_FORMAT and record["fingerprint"] == first[0].fingerprint


def test_a_finished_job_with_another_config_is_refused_naming_the_key_and_its_children_too(tmp_path):
    for p in plan(tmp_path):
        finish(tmp_path, p)
    with pytest.raises(PipelineError, match=r"arm 'a' already finished in .* configuration:\n  x: 1 -> 2\nremove"):
        plan(tmp_path, x=2)
    # the parent trained again with x=2 and recorded; its child, finished from the old parent, is refused
    finish(tmp_path, plan(tmp_path, x=2, restart=("a",))[0])
    with pytest.raises(PipelineError, match=r"arm 'b' already finished .*\n  \(an earlier arm changed\)"):
        plan(tmp_path, x=2)


def test_restart_trains_a_job_and_every_later_one_again(tmp_path):
    for p in plan(tmp_path):
        finish(tmp_path, p)
    assert [p.action for p in plan(tmp_path, x=2, restart=("a",))] == ["restart", "restart"]


def test_records_of_an_unknown_format_are_refused_unless_declared_comparable(tmp_path):
    first = plan(tmp_path)[0]
    finish(tmp_path, first)
    state = json.loads((tmp_path / "state.json").read_text())
    del state["a"]["state_format"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(PipelineError, match="finished by an earlier codellama-recipe"):
        plan(tmp_path)
    assert plan(tmp_path, unversioned_format=STATE_FORMAT)[0].action == "skip"
