"""launch/slurm.sbatch and launch/multinode.sh compose the right commands: run with stub `srun`, `scontrol`,
`scancel`, `pdsh` and `python` on PATH that record how they were called (nothing trains)."""
import json
import os
import pathlib
import signal
import stat
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# A stub records its name, arguments and a few environment variables as one JSON line, then acts as told by
# STUB_<NAME>_* variables: print a file, sleep until signalled, exit with a code.
STUB = r'''#!/usr/bin/env python3
import json, os, signal, sys, time
name = os.path.basename(sys.argv[0])
key = name.upper().replace("-", "_")
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"cmd": name, "args": sys.argv[1:], "pid": os.getpid(),
                        "DS_ENV_FILE": os.environ.get("DS_ENV_FILE")}) + "\n")
if name == "python" and "--help" in sys.argv:
    print("usage: torchrun ... --signals_to_handle SIGNALS ... --shutdown_timeout S")
    sys.exit(0)
if name == "scontrol" and sys.argv[1:3] == ["show", "hostnames"]:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as the real (C) scontrol: a closed pipe ends it (exit 141)
    for line in open(os.environ["STUB_HOSTS"]):
        sys.stdout.write(line)
        sys.stdout.flush()
    sys.exit(0)
if os.environ.get(f"STUB_{key}_WRITE"):   # PATH=TEXT: a file the launched run would have written
    path, text = os.environ[f"STUB_{key}_WRITE"].split("=", 1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)
if os.environ.get(f"STUB_{key}_SLEEP"):
    got = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, _f: got.append(s))
    deadline = time.time() + float(os.environ[f"STUB_{key}_SLEEP"])
    while time.time() < deadline and not got:
        time.sleep(0.05)
sys.exit(int(os.environ.get(f"STUB_{key}_EXIT", "0")))
'''


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol", "scancel", "pdsh", "python"):
        path = bin_dir / name
        path.write_text(STUB)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    hosts = tmp_path / "hosts"
    hosts.write_text("node-a\nnode-b\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RUN_DIR", "LAUNCHER", "MASTER_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_LOG=str(tmp_path / "calls.jsonl"), STUB_HOSTS=str(hosts),
               PYTHON=str(bin_dir / "python"), SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="node-[a-b]",
               SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8")
    return tmp_path, env


def calls(tmp_path, name=None) -> list[dict]:
    path = tmp_path / "calls.jsonl"
    out = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c for c in out if name is None or c["cmd"] == name]


def sbatch(env, *args, timeout=30):
    return subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_sbatch_run_dir_given_twice_and_different_is_refused(stubs):
    tmp_path, env = stubs
    env["RUN_DIR"] = str(tmp_path / "a")
    r = sbatch(env, f"run_dir={tmp_path / 'b'}", "model=tiny")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "run_dir=" in r.stderr and "RUN_DIR=" in r.stderr, r.stderr
    assert not calls(tmp_path, "srun")


@pytest.mark.parametrize("how", ["RUN_DIR", "override", "both"])
def test_sbatch_srun_passes_exactly_one_run_dir(stubs, how):
    tmp_path, env = stubs
    run_dir = str(tmp_path / "run")
    args = ["model=tiny"] + ([f"run_dir={run_dir}"] if how != "RUN_DIR" else [])
    if how != "override":
        env["RUN_DIR"] = run_dir
    r = sbatch(env, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    (srun,) = calls(tmp_path, "srun")
    assert [a for a in srun["args"] if "run_dir=" in a] == [f"run_dir={run_dir}"], srun["args"]
    assert "model=tiny" in srun["args"] and "codellama_recipe.train.cli" in " ".join(srun["args"])
    # not finished (no DONE.json) and the launcher exited 0 (stopped by a signal): requeued
    assert [c["args"] for c in calls(tmp_path, "scontrol") if c["args"][0] == "requeue"] == [["requeue", "4242"]]


def test_sbatch_survives_a_long_host_list_under_pipefail(stubs):
    """`scontrol show hostnames | head -n 1` under `set -o pipefail` exits 141 when scontrol still writes after head
    has gone (a long host list)."""
    tmp_path, env = stubs
    (tmp_path / "hosts").write_text("".join(f"node-{i:05d}\n" for i in range(30000)))
    env["RUN_DIR"] = str(tmp_path / "run")
    r = sbatch(env, "model=tiny")
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "master node-00000:" in r.stdout, r.stdout


def test_sbatch_torchrun_starts_multinode_once_per_node(stubs):
    tmp_path, env = stubs
    env.update(RUN_DIR=str(tmp_path / "run"), LAUNCHER="torchrun", SLURM_CPUS_ON_NODE="64")
    r = sbatch(env, "--pipeline", "pipeline=tiny")
    assert r.returncode == 0, r.stdout + r.stderr
    (srun,) = calls(tmp_path, "srun")
    a = srun["args"]
    assert a[:4] == ["--kill-on-bad-exit=1", "--ntasks-per-node=1", "--ntasks=2", "--cpus-per-task=64"], a
    i = a.index("launch/multinode.sh")
    assert a[i:] == ["launch/multinode.sh", "--pipeline", "--master", "node-a", "--port", str(20000 + 4242),
                     "--nproc", "8", "--", f"run_dir={tmp_path / 'run'}", "pipeline=tiny"], a


def test_multinode_torchrun_command_from_slurm_variables(stubs):
    tmp_path, env = stubs
    env.update(SLURM_NODEID="1", MASTER_PORT="29600")
    r = subprocess.run(["bash", "launch/multinode.sh", "--", "model=tiny", "run_dir=/shared/r"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    run = [c for c in calls(tmp_path, "python") if "--help" not in c["args"]]
    assert run[0]["args"] == [
        "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "8", "--node_rank", "1",
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "node-a:29600", "--rdzv_id", "4242", "--max_restarts", "0",
        "--signals_to_handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown_timeout", "900",
        "-m", "codellama_recipe.train.cli", "model=tiny", "run_dir=/shared/r"]


@pytest.mark.parametrize("args, says", [
    (["--nnodes", "2", "--node-rank", "2", "--master", "h"], "--node-rank '2'"),
    (["--nnodes", "0", "--node-rank", "0", "--master", "h"], "--nnodes '0'"),
    (["--nnodes", "2", "--node-rank", "0"], "no rendezvous host"),
    (["--nnodes", "2", "--node-rank", "0", "--master", "h", "--port", "99999"], "--port '99999'"),
    (["--nnodes", "2", "--node-rank", "0", "--master", "h", "--local_rank=0"], "'--local_rank=0'"),
    (["--launcher", "deepspeed", "--hostfile", "/nonexistent"], "--hostfile '/nonexistent'"),
    (["--launcher", "mpi"], "--launcher 'mpi'"),
])
def test_multinode_refuses_what_it_cannot_use_in_one_line(stubs, args, says):
    tmp_path, env = stubs
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    r = subprocess.run(["bash", "launch/multinode.sh", *args, "model=tiny"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
    assert not [c for c in calls(tmp_path, "python") if "--help" not in c["args"]]


def test_sbatch_deepspeed_hostfile_environment_and_stop_signal(stubs):
    """LAUNCHER=deepspeed: a hostfile of the job's nodes, the run's environment in DeepSpeed's environment file
    (DS_ENV_FILE, readable by the owner only), and SIGUSR1 to the job reaches the ranks of every host (pdsh)."""
    tmp_path, env = stubs
    run_dir = tmp_path / "run"
    env.update(RUN_DIR=str(run_dir), LAUNCHER="deepspeed", STUB_PYTHON_SLEEP="20", WANDB_API_KEY="k e y",
               HF_TOKEN="hf_x", CODELLAMA_CACHE="/shared/cache", UNRELATED_VARIABLE="no")
    proc = subprocess.Popen(["bash", "launch/slurm.sbatch", "model=tiny"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not [c for c in calls(tmp_path, "python") if "deepspeed.launcher.runner" in c["args"]]:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)          # what SLURM sends 5 minutes before the time limit
    while not calls(tmp_path, "pdsh"):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    runner = [c for c in calls(tmp_path, "python") if "deepspeed.launcher.runner" in c["args"]][0]
    os.kill(runner["pid"], signal.SIGTERM)   # the ranks stop after their checkpoint, the launcher ends
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    hostfile = run_dir / "hostfile.4242"
    assert hostfile.read_text() == "node-a slots=8\nnode-b slots=8\n"
    (launcher,) = [c for c in calls(tmp_path, "python") if "deepspeed.launcher.runner" in c["args"]]
    assert launcher["args"][launcher["args"].index("--hostfile") + 1] == str(hostfile)
    assert launcher["args"][-2:] == [f"run_dir={run_dir}", "model=tiny"], launcher["args"]
    env_file = pathlib.Path(launcher["DS_ENV_FILE"])
    lines = env_file.read_text().splitlines()
    assert {"WANDB_API_KEY=k e y", "HF_TOKEN=hf_x", "CODELLAMA_CACHE=/shared/cache"} <= set(lines), lines
    assert not any(line.startswith(("UNRELATED_VARIABLE=", "DS_ENV_FILE=")) for line in lines)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    (pdsh,) = calls(tmp_path, "pdsh")
    assert pdsh["args"][:2] == ["-w", "node-a,node-b"] and pdsh["args"][2].startswith("pkill -USR1 -f "), pdsh
    assert "codellama_recipe.train.cli" in pdsh["args"][2]


def test_sbatch_forwards_the_stop_signal_to_the_job_steps_and_requeues(stubs):
    tmp_path, env = stubs
    env.update(RUN_DIR=str(tmp_path / "run"), STUB_SRUN_SLEEP="20")
    proc = subprocess.Popen(["bash", "launch/slurm.sbatch", "model=tiny"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not calls(tmp_path, "srun"):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    os.kill(calls(tmp_path, "srun")[0]["pid"], signal.SIGTERM)   # the ranks stop after their checkpoint
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + err
    assert [c["args"] for c in calls(tmp_path, "scancel")] == [["--signal=USR1", "4242"]]
    assert ["requeue", "4242"] in [c["args"] for c in calls(tmp_path, "scontrol")]


@pytest.mark.parametrize("code", [2, 3])
def test_sbatch_does_not_requeue_a_refused_configuration(stubs, code):
    tmp_path, env = stubs
    env.update(RUN_DIR=str(tmp_path / "run"), STUB_SRUN_EXIT=str(code))
    r = sbatch(env, "model=tiny")
    assert r.returncode == code, r.stdout + r.stderr
    assert not [c for c in calls(tmp_path, "scontrol") if c["args"][0] == "requeue"]


def test_sbatch_does_not_requeue_a_failure_without_progress(stubs):
    """torchrun reports every failure as exit 1 (a refused configuration too): without a stop signal and without
    a new checkpoint since the job started, a requeue would fail the same way, forever."""
    tmp_path, env = stubs
    env.update(RUN_DIR=str(tmp_path / "run"), LAUNCHER="torchrun", STUB_SRUN_EXIT="1")
    r = sbatch(env, "model=tiny")
    assert r.returncode == 1 and "not requeued" in r.stdout, r.stdout + r.stderr
    assert not [c for c in calls(tmp_path, "scontrol") if c["args"][0] == "requeue"]


def test_sbatch_requeues_a_failure_after_progress(stubs):
    """A lost node after some training (a new checkpoint): requeued, the next job resumes from it."""
    tmp_path, env = stubs
    run_dir = tmp_path / "run"
    env.update(RUN_DIR=str(run_dir), LAUNCHER="torchrun", STUB_SRUN_EXIT="1",
               STUB_SRUN_WRITE=f"{run_dir}/checkpoints/latest=step_00000100")
    r = sbatch(env, "model=tiny")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ["requeue", "4242"] in [c["args"] for c in calls(tmp_path, "scontrol")]


def _ssh_to_localhost() -> str | None:
    """Why the real DeepSpeed launcher cannot run here, or None: its runner reaches every host of a hostfile over
    ssh (even localhost), and multinode.sh signals the ranks over pdsh."""
    import shutil

    if shutil.which("pdsh") is None:
        return "pdsh is not installed"
    probe = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "ConnectTimeout=3",
                            "localhost", "true"], capture_output=True)
    return None if probe.returncode == 0 else "no passwordless ssh to localhost"


@pytest.mark.slow
@pytest.mark.skipif(_ssh_to_localhost() is not None, reason=f"the real DeepSpeed launcher: {_ssh_to_localhost()}")
def test_sigterm_to_multinode_deepspeed_launcher_checkpoints_and_exits_0_then_resumes(tmp_path):
    """The real DeepSpeed launcher (one host in a hostfile, 2 CPU ranks, a DataLoader worker each): SIGTERM to the
    script, as a scheduler sends it, reaches the ranks through pdsh; they checkpoint and every process exits 0. The
    same command with more steps resumes from that checkpoint."""
    hostfile, run_dir = tmp_path / "hostfile", tmp_path / "run"
    hostfile.write_text("localhost slots=2\n")
    env = {k: v for k, v in os.environ.items() if k != "PDSH_RCMD_TYPE"}     # the script uses ssh by default
    env.update(DS_ACCELERATOR="cpu", DS_BUILD_OPS="0", WANDB_MODE="offline")
    args = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "data.seq_len=32",
            "trainer.micro_batch_size=4", "trainer.progress_bar=false", "trainer.batch_tokens=256",
            "trainer.checkpoint_every=0", "trainer.log_every=1", "trainer.val_every=0", "data.num_workers=1",
            f"run_dir={run_dir}"]

    def command(port, steps):
        return [str(REPO / "launch" / "multinode.sh"), "--launcher", "deepspeed", "--hostfile", str(hostfile),
                "--port", str(port), "--", *args, f"trainer.max_steps={steps}"]
    log = tmp_path / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command(29741, 100000), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 240
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)          # the script only, as a scheduler does
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "asking the ranks on localhost to checkpoint" in text, text[-3000:]
    assert "stopped by signal 15 at step" in text, text[-3000:]
    step = int(text.split("stopped by signal 15 at step ")[1].split(";")[0])
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
    done = subprocess.run(command(29742, step + 2), cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step_{step:08d}" in done.stdout + done.stderr
    assert (run_dir / "DONE.json").is_file()
