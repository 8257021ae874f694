"""The execution sandbox: every hostile program ends as failed / timed_out, is contained, and the
evaluator survives and reports each one correctly. CI runs these as root (dedicated uid + netns)."""
import os
import socket
import tempfile
import threading
import time

import pytest

from codellama_recipe.evaluation.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.timeout(180)

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxConfig(timeout_s=3, cpu_s=3, memory_mb=512, max_procs=16, max_file_mb=1,
                                 max_output_kb=4, workers=2))


def processes_with_marker(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


class LoopbackServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def test_hostile_programs_are_each_reported_correctly(sandbox, tmp_path):
    """One parallel batch: the evaluator survives all of them and classifies each."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o755)      # readable and traversable by anyone, writable only by its owner
    os.chmod(victim, 0o644)
    server = LoopbackServer()
    programs = {
        "ok": ("print('hello')", "passed"),
        "assertion": ("assert 1 + 1 == 3", "failed"),
        "syntax": ("def f(:\n  pass", "failed"),
        "infinite_loop": ("while True:\n    pass", "timed_out"),
        "sleeper": ("import time\ntime.sleep(60)", "timed_out"),
        "memory_bomb_at_once": ("x = bytearray(8 * 1024 ** 3)", "failed"),
        "memory_bomb_growing": ("chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 1024 ** 2))", "failed"),
        "fork_storm": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                       "timed_out"),
        "huge_output": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", "failed"),
        "crash_signal": ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "failed"),
        "exit_code": ("raise SystemExit(3)", "failed"),
        # Without a network namespace (non-root, no user namespaces) the network is reachable, as documented.
        "loopback": (f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)",
                     "failed" if sandbox.capabilities.network_isolated else "passed"),
    }
    if IS_ROOT:
        programs["delete_outside"] = (f"import os\nos.remove({str(victim)!r})", "failed")
        programs["write_outside"] = (f"open({str(victim)!r}, 'w').write('changed')", "failed")
        programs["create_outside"] = (f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')", "failed")
    names = list(programs)
    started = time.monotonic()
    results = sandbox.run_many([programs[n][0] for n in names])
    elapsed = time.monotonic() - started
    server.close()
    got = {n: r.status for n, r in zip(names, results)}
    assert got == {n: programs[n][1] for n in names}
    by_name = dict(zip(names, results))
    assert "MemoryError" in by_name["memory_bomb_at_once"].stderr
    assert "MemoryError" in by_name["memory_bomb_growing"].stderr
    assert by_name["ok"].stdout == "hello\n"
    assert by_name["exit_code"].exit_code == 3
    assert by_name["crash_signal"].signal == 11
    assert len(by_name["huge_output"].stdout) < 5 * 1024          # captured output is capped
    if sandbox.capabilities.network_isolated:
        assert server.accepted == 0
        assert "Network is unreachable" in by_name["loopback"].stderr
    if IS_ROOT:
        assert victim.read_text() == "keep me"
        assert not (tmp_path / "new.txt").exists()
        # refused, or (private filesystem) not even visible: the program's /tmp is a scratch tmpfs of its own
        expected = "FileNotFoundError" if sandbox.capabilities.private_filesystem else "PermissionError"
        assert expected in by_name["delete_outside"].stderr
    # 4 programs wait for the 3 s timeout; with 2 workers the batch stays well under a minute.
    assert elapsed < 60


def test_control_run_reaches_the_loopback_server_when_network_allowed(tmp_path):
    """The loopback check above can fail: with network=allow the same program connects."""
    server = LoopbackServer()
    try:
        open_sandbox = Sandbox(SandboxConfig(timeout_s=5, network="allow", workers=1))
        result = open_sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)")
        time.sleep(0.3)
    finally:
        server.close()
    assert result.status == "passed", result.stderr
    assert server.accepted == 1


@pytest.mark.skipif(not IS_ROOT, reason="the network namespace and uid switch are guaranteed as root (CI)")
def test_root_capabilities_are_all_enforced(sandbox):
    caps = sandbox.capabilities
    assert caps.is_root and caps.drop_uid and caps.network_isolated
    result = sandbox.run("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid, groups = result.stdout.split(maxsplit=2)
    assert int(uid) >= 1 and int(uid) == int(gid) and groups.strip() == "[]"


def test_process_limit_and_escaped_processes_are_killed(sandbox):
    marker = f"sandbox-escapee-{os.getpid()}-{time.time_ns()}"
    program = f"""
import os, sys, time
made = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.setsid()   # leave the process group: only the launcher's reaping can find it
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", {marker!r}])
    made += 1
print(made)
"""
    result = sandbox.run(program)
    assert result.status == "passed", result.stderr
    assert int(result.stdout) < 16                 # RLIMIT_NPROC stopped the storm
    assert processes_with_marker(marker) == []     # and nothing outlived the program


def test_environment_is_scrubbed_and_cwd_is_private(sandbox, monkeypatch):
    monkeypatch.setenv("SECRET_API_TOKEN", "do-not-leak")
    result = sandbox.run("import os\nassert 'SECRET_API_TOKEN' not in os.environ, 'leaked'\n"
                         "assert os.environ['HOME'] == os.getcwd()\n"
                         "open('scratch.txt', 'w').write('x')\nprint(os.getcwd())")
    assert result.status == "passed", result.stderr
    assert not os.path.exists(result.stdout.strip())   # the private directory is removed afterwards


def test_unremovable_looking_leftovers_are_cleaned_and_nothing_outside_is_touched(sandbox):
    tmp_mode = os.stat(tempfile.gettempdir()).st_mode
    result = sandbox.run("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\n"
                         "os.chmod('a/b', 0)\nos.chmod('a', 0o500)\nprint(os.getcwd())")
    assert result.status == "passed", result.stderr
    assert not os.path.exists(result.stdout.strip())
    assert os.stat(tempfile.gettempdir()).st_mode == tmp_mode


@pytest.mark.skipif(not IS_ROOT, reason="files of the dedicated sandbox uid are swept only as root")
def test_without_a_private_filesystem_files_left_in_scratch_dirs_are_removed(monkeypatch):
    _probe_without(monkeypatch, private_filesystem=False, private_filesystem_error="EPERM (simulated)")
    sandbox = Sandbox(SandboxConfig(timeout_s=5, workers=1))
    assert not sandbox.capabilities.private_filesystem
    assert "no private filesystem: EPERM (simulated)" in sandbox.capabilities.describe()
    tmp_mode = os.stat("/tmp").st_mode
    marker = f"sandbox-litter-{os.getpid()}-{time.time_ns()}"
    result = sandbox.run(f"import os\nfor d in ('/tmp', '/dev/shm'):\n"
                         f"    os.makedirs(os.path.join(d, {marker!r}, 'sub'))\n"
                         f"open('/tmp/{marker}.txt', 'w').write('x')")
    assert result.status == "passed", result.stderr
    assert not any(os.path.exists(p) for p in (f"/tmp/{marker}", f"/dev/shm/{marker}", f"/tmp/{marker}.txt"))
    assert os.stat("/tmp").st_mode == tmp_mode


def _world_writable_dirs():
    found = []
    for root, dirs, _ in os.walk("/"):
        if root in ("/proc", "/sys") or root.startswith(("/proc/", "/sys/")):
            dirs[:] = []
            continue
        for d in list(dirs):
            path = os.path.join(root, d)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not os.path.islink(path) and st.st_mode & 0o002:
                found.append(path)
    return found


@pytest.mark.skipif(not IS_ROOT, reason="the private filesystem needs root (CI)")
def test_nothing_written_anywhere_survives_the_program(sandbox):
    """Every world-writable directory on the machine (/run/lock included) and every file the program could open:
    the program sees them read-only or as a private scratch tmpfs, so nothing it wrote is left afterwards."""
    assert sandbox.capabilities.private_filesystem, sandbox.capabilities.notes
    dirs = _world_writable_dirs()
    assert "/tmp" in dirs
    marker = f"sandbox-litter-{os.getpid()}-{time.time_ns()}"
    program = (f"import os, tempfile\nwritten = []\nfor d in {dirs!r}:\n"
               f"    try:\n        open(os.path.join(d, {marker!r}), 'w').write('x')\n        written.append(d)\n"
               f"    except OSError:\n        pass\n"
               f"tempfile.NamedTemporaryFile(delete=False).write(b'x')\n"
               f"open('own-dir-is-writable', 'w').write('x')\nprint(written)")
    result = sandbox.run(program)
    assert result.status == "passed", result.stderr
    assert "/tmp" in result.stdout                           # programs still have a working /tmp
    leftovers = [d for d in dirs if os.path.exists(os.path.join(d, marker))]
    assert leftovers == []


def _probe_without(monkeypatch, **changes):
    """Pretend the probe found less than this machine offers (the settings CI cannot reach directly)."""
    import codellama_recipe.evaluation.sandbox as sandbox_module
    real = sandbox_module._probe

    def probe(uid, candidates):
        report = dict(real(uid, candidates))
        for key, value in changes.items():
            report[key] = value(candidates) if callable(value) else value
        return report
    monkeypatch.setattr(sandbox_module, "_probe", probe)


def test_without_network_namespace_the_network_is_reported_open(monkeypatch):
    _probe_without(monkeypatch, network_namespace=False, network_namespace_error="EPERM (simulated)")
    sandbox = Sandbox(SandboxConfig(timeout_s=5, workers=1))
    assert not sandbox.capabilities.network_isolated
    assert "network namespace unavailable" in sandbox.capabilities.describe()
    server = LoopbackServer()
    try:
        result = sandbox.run(f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)")
    finally:
        server.close()
    assert result.status == "passed"
    with pytest.raises(ValueError, match="sandbox.network"):
        Sandbox(SandboxConfig(network="require"))


@pytest.mark.skipif(not IS_ROOT, reason="the interpreter bind mount is the root fallback")
def test_interpreter_unreadable_by_the_sandbox_uid_is_bind_mounted(monkeypatch):
    _probe_without(monkeypatch, interpreters=lambda candidates: {c: False for c in candidates})
    sandbox = Sandbox(SandboxConfig(timeout_s=10, workers=1))
    assert sandbox.capabilities.interpreter_via_bind_mount
    result = sandbox.run("import json, math, os\nprint(os.getuid())\nopen('/etc/codellama-test', 'w')")
    refused = "Read-only file system" if sandbox.capabilities.private_filesystem else "PermissionError"
    assert result.status == "failed" and refused in result.stderr
    assert int(result.stdout) != 0


def test_unresponsive_launcher_is_killed_by_the_evaluator(sandbox, monkeypatch, tmp_path):
    import codellama_recipe.evaluation.sandbox as sandbox_module
    marker = f"hung-launcher-{os.getpid()}-{time.time_ns()}"
    fake = tmp_path / "hung_launcher.py"
    fake.write_text(f"import time\ntime.sleep(120)  # {marker}\n")
    monkeypatch.setattr(sandbox_module, "LAUNCHER", fake)
    monkeypatch.setattr(sandbox_module, "BACKUP_GRACE_S", 1.0)
    started = time.monotonic()
    result = sandbox.run("print(1)")
    assert result.status == "timed_out" and "unresponsive" in result.message
    assert time.monotonic() - started < sandbox.cfg.timeout_s + 10
    assert processes_with_marker(str(fake)) == []


def test_launch_failure_is_an_error_not_a_crash(sandbox, monkeypatch):
    monkeypatch.setattr(sandbox.capabilities, "interpreter", "/nonexistent/python3")
    result = sandbox.run("print(1)")
    assert result.status == "error"
    assert "could not start" in result.message


def _folders_in(root):
    return sorted(p for p in os.listdir(root) if p.startswith("codellama-sandbox-") and not p.endswith(".owner"))


def _wait_for_folder(root, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _folders_in(root)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no sandbox folder appeared in {root}")


def test_folders_of_a_killed_evaluator_are_removed_by_the_next_one_and_a_live_ones_are_kept(tmp_path):
    import subprocess
    import sys
    evaluator = ("import sys\nfrom codellama_recipe.evaluation.sandbox import Sandbox, SandboxConfig\n"
                 "Sandbox(SandboxConfig(timeout_s=3, cpu_s=3, workers=1, tmp_root=sys.argv[1]))"
                 ".run('import time\\ntime.sleep(30)')\n")
    proc = subprocess.Popen([sys.executable, "-c", evaluator, str(tmp_path)])
    try:
        _wait_for_folder(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    assert _folders_in(tmp_path)                                    # what SIGKILL leaves behind

    live = Sandbox(SandboxConfig(timeout_s=5, cpu_s=5, workers=1, tmp_root=str(tmp_path)))
    assert _folders_in(tmp_path) == []
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=live.run("import time\ntime.sleep(2)")))
    worker.start()
    running = _wait_for_folder(tmp_path)
    Sandbox(SandboxConfig(timeout_s=5, workers=1, tmp_root=str(tmp_path)))     # a second evaluator starts
    assert set(running) <= set(_folders_in(tmp_path))                # the live evaluator's folders stay
    worker.join()
    assert result["r"].status == "passed", result["r"].stderr
