"""Execution sandbox for model-written programs.

Every program runs as `python program.py` in its own session/process group, in a private temporary
directory (its cwd and HOME, removed afterwards), with a scrubbed environment, under resource limits
(CPU time, address space, process count, file size), with a wall-clock timeout after which it and every
process it started are killed. What else is enforced depends on where the evaluator runs (see
`SandboxCapabilities.describe()` and the README):

- root: each parallel worker runs its programs as its own dedicated unprivileged uid (so files outside
  the sandbox directory cannot be changed, and RLIMIT_NPROC counts only that program's processes), in
  a new network namespace (no network, loopback down);
- non-root with unprivileged user namespaces: a new user + network namespace (no network); the
  program runs as the evaluator's user (it can change that user's files);
- non-root without user namespaces: limits, process group and timeout only; network is reachable.

The program's process tree is supervised by `sandbox_launcher.py` (a child subreaper), so processes
that escape the process group with setsid() are still found, killed and reaped.
Every call ends as one of passed / failed / timed_out / error; the evaluator never hangs on a program.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import os
import pwd
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from codellama_recipe.core.config import typed
from codellama_recipe.core.errors import ConfigError, InputError
from codellama_recipe.core.schema import SandboxConfig
from codellama_recipe.evaluation.sandbox_folders import SandboxFolders, remove_tree

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("sandbox_launcher.py")
HARNESS = Path(__file__).with_name("sandbox_harness.py")
HARNESS_COMPILED = Path(__file__).with_name("sandbox_harness_compiled.py")
COMPILED_SLACK_S = 10.0   # the launcher's wall clock for another language: compile_s + run_s + this
STATUSES = ("passed", "failed", "timed_out", "error")
NETWORK_MODES = ("isolate", "require", "allow")
SIGXCPU = getattr(signal, "SIGXCPU", 24)
BACKUP_GRACE_S = 15.0     # the launcher enforces the timeout; the evaluator steps in only after this much more


def check_sandbox_config(cfg: SandboxConfig) -> SandboxConfig:
    """The values a typed `sandbox` node may not take."""
    if cfg.network not in NETWORK_MODES:
        raise ConfigError("sandbox.network", cfg.network, f"one of {NETWORK_MODES}")
    for key in ("timeout_s", "cpu_s", "memory_mb", "max_procs", "max_file_mb", "max_output_kb"):
        if not getattr(cfg, key) or getattr(cfg, key) <= 0:
            raise ConfigError(f"sandbox.{key}", getattr(cfg, key), "must be > 0")
    if cfg.workers < 0:
        raise ConfigError("sandbox.workers", cfg.workers, "must be >= 0 (0 = number of CPUs)")
    if not (cfg.user in ("auto", "none") or isinstance(cfg.user, int)):
        raise ConfigError("sandbox.user", cfg.user, "'auto', 'none' or an integer uid base")
    return cfg


@dataclasses.dataclass
class ExecutionResult:
    status: str                      # passed | failed | timed_out | error
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    message: str = ""                # why, for timed_out / error

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SandboxCapabilities:
    is_root: bool
    network_isolated: bool
    drop_uid: bool
    mount_namespace: bool
    private_filesystem: bool         # every mount read-only but the program's dir; tmpfs /tmp, /var/tmp, /dev/shm
    interpreter: str
    interpreter_via_bind_mount: bool
    notes: list[str]

    def describe(self) -> str:
        parts = ["run as " + ("dedicated unprivileged uid" if self.drop_uid else "the evaluator's user"),
                 "network " + ("isolated (own namespace)" if self.network_isolated else "NOT isolated"),
                 "filesystem " + ("read-only outside its own dir, private scratch dirs" if self.private_filesystem
                                  else "shared (leftovers in /tmp, /var/tmp, /dev/shm removed after each program)")]
        return "; ".join(parts + self.notes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"summary": self.describe()}


# ------------------------------------------------------------------ capabilities
_probe_lock = threading.Lock()


def _interpreter_candidates(cfg: SandboxConfig) -> list[str]:
    if cfg.python:
        return [cfg.python]
    candidates = [sys.executable, os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidates += [f"{directory}/{version}", f"{directory}/python3"]
    seen, out = set(), []
    for c in candidates:
        if c not in seen and os.path.isfile(c) and os.access(c, os.X_OK):
            seen.add(c)
            out.append(c)
    return out


def _uses_dedicated_uids(cfg: SandboxConfig) -> bool:
    return os.geteuid() == 0 and cfg.user != "none"


def _uid_base(cfg: SandboxConfig) -> int:
    return cfg.uid_base if cfg.user == "auto" else int(cfg.user)


@functools.lru_cache(maxsize=8)
def _probe(uid: int | None, candidates: tuple[str, ...]) -> dict:
    spec = {"uid": uid, "gid": uid, "interpreters": list(candidates)}
    done = subprocess.run([sys.executable, "-S", "-B", str(LAUNCHER), "--probe", json.dumps(spec)],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"sandbox probe failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def detect_capabilities(cfg: SandboxConfig | None = None) -> SandboxCapabilities:
    """What this process can enforce (probed once per setting, in child processes)."""
    cfg = cfg or SandboxConfig()
    dedicated = _uses_dedicated_uids(cfg)
    candidates = tuple(_interpreter_candidates(cfg))
    if not candidates:
        raise InputError("sandbox.python", cfg.python, "no executable Python interpreter found")
    with _probe_lock:
        report = _probe(_uid_base(cfg) if dedicated else None, candidates)
    notes = []
    network = bool(report["network_namespace"]) and cfg.network != "allow"
    if cfg.network == "require" and not report["network_namespace"]:
        raise InputError("sandbox.network", "require",
                          "no network namespace can be created here "
                          f"({report.get('network_namespace_error')}); use 'isolate' or 'allow'")
    if cfg.network != "allow" and not report["network_namespace"]:
        notes.append("network namespace unavailable: " + str(report.get("network_namespace_error")))
    drop = bool(report.get("drop_uid")) if dedicated else False
    if dedicated and not drop:
        notes.append("cannot switch to the sandbox uid: " + str(report.get("drop_uid_error")))
    interpreter, via_bind = candidates[0], False
    if drop:
        usable = [c for c in candidates if report["interpreters"].get(c)]
        if usable:
            interpreter = usable[0]
        elif report.get("mount_namespace"):
            via_bind = True
            notes.append(f"no interpreter readable by the sandbox uid; bind-mounting {sys.base_prefix}")
        else:
            raise InputError("sandbox.python", cfg.python,
                              f"none of {list(candidates)} can be run by uid {_uid_base(cfg)} and no mount "
                              "namespace is available; install a world-readable python3 or set "
                              "sandbox.user=none")
    if not dedicated and os.geteuid() == 0:
        notes.append("sandbox.user=none: programs run as root")
    private_fs = drop and bool(report.get("private_filesystem"))
    if drop and not private_fs:
        notes.append("no private filesystem: " + str(report.get("private_filesystem_error")
                                                      or report.get("mount_namespace_error")))
    return SandboxCapabilities(is_root=os.geteuid() == 0, network_isolated=network, drop_uid=drop,
                               mount_namespace=bool(report.get("mount_namespace")), private_filesystem=private_fs,
                               interpreter=interpreter, interpreter_via_bind_mount=via_bind, notes=notes)


# ------------------------------------------------------------------ helpers
SAFE_ENV_KEYS = ("LANG", "LC_ALL", "TZ")


def scrubbed_env(home: str) -> dict[str, str]:
    """Only what a Python program needs; nothing inherited except locale (no tokens, no keys)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home,
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
           "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    for key in SAFE_ENV_KEYS:
        if key in os.environ and key != "LANG":
            env[key] = os.environ[key]
    return env


def _read_capped(path: Path, cap: int) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            data = f.read()
        else:
            head = f.read(cap // 2)
            f.seek(size - cap // 2)
            data = head + f"\n...[{size - cap} bytes cut]...\n".encode() + f.read()
    return data.decode("utf-8", errors="replace")


def _user_task_count(uid: int) -> int:
    """Threads of all processes of uid (what RLIMIT_NPROC counts) - for the shared-uid setting."""
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                if int(fields["Uid"].split()[0]) == uid:
                    total += int(fields["Threads"])
            except (OSError, KeyError, ValueError):
                continue
    return total


def kill_processes_of_uid(uid: int, attempts: int = 200) -> None:
    """Backup cleanup (root, dedicated uid): SIGKILL every process of uid until none is left."""
    for _ in range(attempts):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/status") as f:
                        for line in f:
                            if line.startswith("Uid:"):
                                if int(line.split()[1]) == uid:
                                    pids.append(int(entry))
                                break
                except OSError:
                    continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.01)


WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def remove_files_of_uid(uid: int) -> None:
    """Root, dedicated uid: delete what the program left in world-writable directories (top level)."""
    for directory in {*WORLD_WRITABLE_DIRS, tempfile.gettempdir()}:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


def read_verdict(out_path: Path, key: str, shown: str) -> tuple[str | None, str]:
    """The harness's verdict (the text after the key on the last line that starts with it, within the last
    4 KiB of stdout) and the shown stdout without verdict lines."""
    size = out_path.stat().st_size
    with open(out_path, "rb") as f:
        f.seek(max(0, size - 4096))
        tail = f.read().decode("utf-8", errors="replace")
    verdict = None
    for line in tail.splitlines():
        if line.startswith(key + " "):
            verdict = line[len(key) + 1:]
    kept = "\n".join(line for line in shown.splitlines() if not line.startswith(key + " "))
    return verdict, kept


# ------------------------------------------------------------------ the sandbox
class Sandbox:
    """Runs programs; thread-safe; `run_many` runs them in parallel workers."""

    def __init__(self, cfg: SandboxConfig | dict | None = None):
        self.cfg = check_sandbox_config(typed(SandboxConfig, cfg, "sandbox"))
        self.capabilities = detect_capabilities(self.cfg)
        self._folders = SandboxFolders(self.cfg.tmp_root)
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.cfg.n_workers):
            self._slots.put(slot)
        if self.capabilities.drop_uid:
            self._check_uids_are_free()
        log.info("sandbox: %s", self.capabilities.describe())

    def _check_uids_are_free(self) -> None:
        base = _uid_base(self.cfg)
        for slot in range(self.cfg.n_workers):
            uid = base + slot
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = None
            if name is not None and name != "nobody":
                raise InputError("sandbox.uid_base", base,
                                  f"uid {uid} belongs to user {name!r}; pick a range of unused uids")

    # one program ---------------------------------------------------------
    def run(self, program: str) -> ExecutionResult:
        """Run `python program.py`: passed when it exits 0 (for programs of our own; candidates are judged)."""
        return self._in_a_slot(program, None)

    def judge(self, candidate: str, tests: str, toolchain=None) -> ExecutionResult:
        """Passed only when the tests ran to their end against the candidate (sandbox_harness.py): the candidate
        is compiled and run on its own, not as __main__, then the tests in its namespace; the verdict comes
        with a key the program is given on stdin, so no way of exiting can forge it.

        With a toolchain (evaluation/toolchains.py) the candidate is another language's program text:
        sandbox_harness_compiled.py compiles `candidate + "\n" + tests` once and passes it only when the tests
        printed their sentinel and the program then exited 0; the toolchain's time and memory limits apply."""
        return self._in_a_slot(candidate, tests, toolchain)

    def _in_a_slot(self, program: str, tests: str | None, toolchain=None) -> ExecutionResult:
        slot = self._slots.get()
        try:
            return self._run_in_slot(program, slot, tests, toolchain)
        except Exception as e:  # noqa: BLE001 - a sample must end as 'error', never crash the evaluator
            log.exception("sandbox failure")
            return ExecutionResult("error", message=f"{type(e).__name__}: {e}")
        finally:
            self._slots.put(slot)

    def run_many(self, programs: list[str], progress=None) -> list[ExecutionResult]:
        return self._many(self.run, [(p,) for p in programs], progress)

    def judge_many(self, pairs: list[tuple], progress=None) -> list[ExecutionResult]:
        """judge() of every (candidate, tests) or (candidate, tests, toolchain), in parallel workers."""
        return self._many(self.judge, pairs, progress)

    def _many(self, call, argument_tuples, progress) -> list[ExecutionResult]:
        results: list[ExecutionResult | None] = [None] * len(argument_tuples)
        with concurrent.futures.ThreadPoolExecutor(self.cfg.n_workers) as pool:
            futures = {pool.submit(call, *args): i for i, args in enumerate(argument_tuples)}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress()
        return results  # type: ignore[return-value]

    def _run_in_slot(self, program: str, slot: int, tests: str | None = None, toolchain=None) -> ExecutionResult:
        cfg, caps = self.cfg, self.capabilities
        timeout_s, cpu_s, memory_mb = cfg.timeout_s, cfg.cpu_s, cfg.memory_mb
        uid = _uid_base(cfg) + slot if caps.drop_uid else None
        work, private = self._folders.make("work"), self._folders.make("io")
        key = None
        try:
            if tests is None:
                (work / "program.py").write_text(program, encoding="utf-8")
                entry = "program.py"
            elif toolchain is not None:
                key = secrets.token_hex(16)
                (work / "candidate.txt").write_text(program, encoding="utf-8")
                (work / "tests.txt").write_text(tests, encoding="utf-8")
                (work / "job.json").write_text(json.dumps(toolchain.job()), encoding="utf-8")
                shutil.copyfile(HARNESS_COMPILED, work / "harness.py")
                entry = "harness.py"
                timeout_s = toolchain.compile_s + toolchain.run_s + COMPILED_SLACK_S
                cpu_s = max(toolchain.compile_s, toolchain.run_s) + 1   # RLIMIT_CPU counts per process
                memory_mb = toolchain.memory_mb
            else:
                key = secrets.token_hex(16)
                (work / "candidate.py").write_text(program, encoding="utf-8")
                (work / "tests.py").write_text(tests, encoding="utf-8")
                shutil.copyfile(HARNESS, work / "harness.py")
                entry = "harness.py"
            interpreter = caps.interpreter
            bind = None
            if caps.interpreter_via_bind_mount:
                mount_point = work / ".python"
                mount_point.mkdir()
                bind = [sys.base_prefix, str(mount_point)]
                # relative to the program's directory, its cwd: the absolute path is hidden by a private /tmp
                interpreter = "./" + str(Path(".python") / os.path.relpath(os.path.realpath(sys.executable),
                                                                           sys.base_prefix))
            if uid is not None:
                for p in (work, *work.iterdir()):
                    os.chown(p, uid, uid)
            nproc = cfg.max_procs if uid is not None else cfg.max_procs + _user_task_count(os.getuid())
            cpu = int(cpu_s)
            spec = {
                "argv": [interpreter, "-B", entry],
                "uid": uid, "gid": uid,
                "netns": (("root" if caps.is_root else "userns") if caps.network_isolated else None),
                "bind": bind,
                "private_fs": ({"work": os.path.realpath(work), "scratch_mb": 4 * cfg.max_file_mb}
                               if caps.private_filesystem else None),
                "timeout_s": float(timeout_s),
                "rlimits": {"CPU": [cpu, cpu + 1],
                            "AS": [int(memory_mb) << 20] * 2,
                            "NPROC": [nproc] * 2,
                            "FSIZE": [cfg.max_file_mb << 20] * 2,
                            "CORE": [0, 0]},
            }
            return self._launch(spec, work, private, uid, key, cpu_s)
        finally:
            remove_tree(work)
            remove_tree(private)

    def _launch(self, spec: dict, work: Path, private: Path, uid: int | None, key: str | None,
                cpu_s: float | None = None) -> ExecutionResult:
        cfg = self.cfg
        timeout_s, cpu_s = spec["timeout_s"], cpu_s or cfg.cpu_s
        status_r, status_w = os.pipe()
        spec["status_fd"] = status_w
        out_path, err_path = private / "stdout", private / "stderr"
        started = time.monotonic()
        try:
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-S", "-B", str(LAUNCHER), json.dumps(spec)],
                    stdin=subprocess.DEVNULL if key is None else subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                    env=scrubbed_env(str(work)), start_new_session=True, pass_fds=(status_w,))
            if key is not None:   # a few bytes: the pipe buffer takes them without blocking
                try:
                    proc.stdin.write(f"{key}\n".encode())
                    proc.stdin.close()
                except OSError:   # the launcher died at once; its status says why
                    pass
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        status = b""
        backup_deadline = started + timeout_s + BACKUP_GRACE_S
        poller = select.poll()       # poll, not select: fd numbers above 1024 are fine
        poller.register(status_r, select.POLLIN | select.POLLHUP)
        backup_kill = False
        try:
            while True:
                remaining = backup_deadline - time.monotonic()
                if remaining <= 0:
                    backup_kill = True
                    break
                if not poller.poll(remaining * 1000):
                    continue
                chunk = os.read(status_r, 65536)
                if not chunk:
                    break
                status += chunk
        finally:
            os.close(status_r)
        if backup_kill:
            self._kill_group(proc)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            proc.wait()
        if uid is not None:
            kill_processes_of_uid(uid)      # normally a no-op: the launcher already reaped everything
            remove_files_of_uid(uid)
        wall = time.monotonic() - started
        cap = cfg.max_output_kb * 1024
        stdout, stderr = _read_capped(out_path, cap), _read_capped(err_path, cap)
        if backup_kill:
            return ExecutionResult("timed_out", stdout=stdout, stderr=stderr, wall_s=wall,
                                   message="launcher unresponsive; killed by the evaluator")
        try:
            outcome = json.loads(status.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return ExecutionResult("error", stdout=stdout, stderr=stderr, wall_s=wall,
                                   message=f"no status from the launcher (exit {proc.returncode})")
        if key is None:
            return self._classify(outcome, stdout, stderr, wall, timeout_s, cpu_s)
        verdict, stdout = read_verdict(out_path, key, stdout)
        return self._classify_judged(outcome, verdict, stdout, stderr, wall, timeout_s, cpu_s)

    def _classify_judged(self, outcome: dict, verdict: str | None, stdout: str, stderr: str,
                         wall: float, timeout_s: float | None = None, cpu_s: float | None = None) -> ExecutionResult:
        common = dict(stdout=stdout, stderr=stderr, wall_s=wall, exit_code=outcome.get("exit_code"),
                      signal=outcome.get("signal"))
        if verdict == "passed" and not outcome.get("timed_out") and "error" not in outcome:
            return ExecutionResult("passed", **common)
        if verdict is not None and verdict.startswith("failed"):
            return ExecutionResult("failed", message=verdict.removeprefix("failed").strip(), **common)
        if verdict is not None and verdict.startswith("timed_out"):   # a compile or run limit of another language
            return ExecutionResult("timed_out", message=verdict.removeprefix("timed_out").strip(), **common)
        launched = self._classify(outcome, stdout, stderr, wall, timeout_s, cpu_s)
        if launched.status in ("timed_out", "error"):
            return launched
        how = (f"killed by signal {outcome['signal']}" if outcome.get("signal") is not None
               else f"exit code {outcome.get('exit_code')}")
        return ExecutionResult("failed", message=f"the program ended before the tests finished ({how}); no verdict",
                               **common)

    def _classify(self, outcome: dict, stdout: str, stderr: str, wall: float, timeout_s: float | None = None,
                  cpu_s: float | None = None) -> ExecutionResult:
        common = dict(stdout=stdout, stderr=stderr, wall_s=wall)
        timeout_s, cpu_s = timeout_s or self.cfg.timeout_s, cpu_s or self.cfg.cpu_s
        if "error" in outcome:
            return ExecutionResult("error", message=outcome["error"], **common)
        if outcome.get("timed_out"):
            return ExecutionResult("timed_out", message=f"wall clock > {timeout_s}s", **common)
        sig = outcome.get("signal")
        if sig is not None:
            cpu_exhausted = sig == SIGXCPU or (sig == signal.SIGKILL
                                              and outcome.get("cpu_s", 0) >= cpu_s - 0.5)
            if cpu_exhausted:
                return ExecutionResult("timed_out", signal=sig, message=f"CPU time > {cpu_s}s",
                                       **common)
            return ExecutionResult("failed", signal=sig, message=f"killed by signal {sig}", **common)
        code = outcome.get("exit_code")
        return ExecutionResult("passed" if code == 0 else "failed", exit_code=code, **common)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
