"""Runs inside the sandbox's process, before the untrusted program: isolate, limit, run, reap, report.

Started by evaluation.sandbox as `python -S -B sandbox_launcher.py SPEC_JSON` in a fresh session with
the program's stdout/stderr already redirected. Standard library only, single-threaded, so fork() is safe.

Order matters:
  1. namespaces (network, and a user namespace when not root) - needs privileges we drop later;
  2. become a child subreaper, so every descendant of the program (even one that calls setsid()) is
     re-parented to this process when its parent dies, and can be found, killed and reaped here -
     some container init processes never reap orphans, and unreaped zombies would keep counting
     against the process limit of the sandbox uid;
  3. fork: the child applies the resource limits, drops to the sandbox uid, sets no_new_privs and
     execs the program; this process stays as it was (root, when started as root), so the program
     cannot signal or ptrace it;
  4. wait with a wall-clock alarm; when the program ends or the alarm fires, kill every remaining
     descendant, reap them all, and write one JSON status line to the status fd.

`--probe` instead reports which isolation features work here (one JSON line on stdout).
"""
import ctypes
import json
import os
import resource
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
KEPT_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

_libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(RuntimeError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{what} failed: {os.strerror(err)} (errno {err})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare(0x{flags:x})")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def bind_mount(source: str, target: str) -> None:
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None),
           f"bind mount {source} -> {target}")


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[tuple[str, int]]:
    """(mount point, flags to keep on a remount) of this mount namespace, parents first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            flags = 0
            for option in fields[5].split(","):
                flags |= KEPT_MOUNT_FLAGS.get(option, 0)
            found.append((_unescape(fields[4]), flags))
    return found


def make_filesystem_private(work: str, scratch_mb: int) -> None:
    """In a new mount namespace (root): every mount read-only but the program's own directory, and fresh
    tmpfs scratch dirs (/tmp, /var/tmp, /dev/shm), which vanish with the namespace. Nothing the program
    writes outside its directory (removed by the evaluator) outlives it."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
    _check(_libc.mount(work.encode(), work.encode(), None, MS_BIND | MS_REC, None), f"bind mount {work}")
    os.chdir(work)      # the bind mount, not the directory below it (which turns read-only)
    work_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for point, flags in mount_points():
            if point == work or point.startswith(work.rstrip("/") + "/"):
                continue
            ret = _libc.mount(None, point.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
            if ret != 0 and ctypes.get_errno() not in (2, 13):   # a mount point that vanished or is hidden
                _check(ret, f"remount {point} read-only")
        for directory in SCRATCH_DIRS:
            if os.path.isdir(directory) and not os.path.islink(directory):
                _check(_libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                                   f"mode=1777,size={int(scratch_mb)}m".encode()), f"tmpfs on {directory}")
        if not os.path.isdir(work):   # under a scratch dir: put it back at its path (programs use absolute paths)
            os.makedirs(work, mode=0o755)
            _check(_libc.mount(f"/proc/self/fd/{work_fd}".encode(), work.encode(), None, MS_BIND | MS_REC, None),
                   f"bind mount {work} into the scratch dir")
        os.chdir(work)
    finally:
        os.close(work_fd)


def enter_user_and_network_namespace() -> None:
    """Unprivileged: a new user namespace (mapping our own uid/gid) that owns a new network namespace."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWIPC)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def enter_namespaces(spec: dict) -> None:
    network = spec.get("netns")           # None | "root" | "userns"
    private = spec.get("private_fs")      # None | {"work": dir, "scratch_mb": size}
    mount_ns = bool(spec.get("bind")) or bool(private)
    if network == "root":
        # A private IPC namespace too: SysV shared memory / message queues die with the program.
        unshare(CLONE_NEWNET | CLONE_NEWIPC | (CLONE_NEWNS if mount_ns else 0))
    elif network == "userns":
        enter_user_and_network_namespace()
    elif mount_ns:
        unshare(CLONE_NEWNS)
    if spec.get("bind"):
        source, target = spec["bind"]
        bind_mount(source, target)
    if private:
        make_filesystem_private(private["work"], private["scratch_mb"])


def apply_limits_and_drop(spec: dict) -> None:
    """In the forked child, right before exec."""
    for name, (soft, hard) in spec.get("rlimits", {}).items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))
    uid, gid = spec.get("uid"), spec.get("gid")
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise LaunchError("setuid did not take effect")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def descendants(root_pid: int) -> list[int]:
    """All live processes below root_pid, from /proc (parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: parse after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_and_reap_all() -> None:
    """SIGKILL every descendant and reap until none is left (orphans re-parent to us, the subreaper)."""
    me = os.getpid()
    while True:
        for pid in descendants(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            return
        time.sleep(0.002)


class _WallTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _WallTimeout()


def supervise(child: int, timeout_s: float) -> dict:
    """Wait for the program; reap orphans on the way; return its outcome."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    started = time.monotonic()
    outcome = None
    try:
        while outcome is None:
            pid, status, usage = os.wait4(-1, 0)
            if pid == child:
                outcome = {"cpu_s": usage.ru_utime + usage.ru_stime}
                if os.WIFSIGNALED(status):
                    outcome["signal"] = os.WTERMSIG(status)
                else:
                    outcome["exit_code"] = os.WEXITSTATUS(status)
    except _WallTimeout:
        outcome = {"timed_out": True}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    outcome["wall_s"] = time.monotonic() - started
    kill_and_reap_all()
    return outcome


def launch(spec: dict, status_fd: int) -> dict:
    enter_namespaces(spec)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    error_r, error_w = os.pipe()       # the child reports a failure before exec here (closed on exec)
    os.set_inheritable(error_w, False)
    child = os.fork()
    if child == 0:
        os.close(error_r)
        try:
            os.close(status_fd)
            apply_limits_and_drop(spec)
            os.execv(spec["argv"][0], spec["argv"])
        except BaseException as e:  # noqa: BLE001 - anything here is a launch failure to report
            os.write(error_w, f"{type(e).__name__}: {e}".encode()[:4000])
        os._exit(127)
    os.close(error_w)
    chunks = []
    while chunk := os.read(error_r, 4096):
        chunks.append(chunk)
    os.close(error_r)
    if chunks:
        kill_and_reap_all()
        return {"error": "could not start the program: " + b"".join(chunks).decode(errors="replace")}
    return supervise(child, spec["timeout_s"])


# ---------------------------------------------------------------- probe
def _probe_in_child(action) -> str | None:
    """Run action() in a forked child; None if it worked, else the error text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            action()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(w, f"{type(e).__name__}: {e}".encode()[:2000])
            os._exit(1)
    os.close(w)
    message = b""
    while chunk := os.read(r, 4096):
        message += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    return message.decode(errors="replace") or f"status {status}"


def probe(spec: dict) -> dict:
    import socket
    import subprocess

    def network_isolated():
        if os.geteuid() == 0:
            unshare(CLONE_NEWNET | CLONE_NEWIPC)
        else:
            enter_user_and_network_namespace()
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("127.0.0.1", 9))
        except OSError as e:
            if e.errno in (101, 99):    # ENETUNREACH / EADDRNOTAVAIL: loopback is down, as expected
                return
            raise LaunchError(f"loopback still reachable after unshare ({e})")
        raise LaunchError("loopback still reachable after unshare")

    report = {"is_root": os.geteuid() == 0, "network_namespace": None, "drop_uid": None,
              "interpreters": {}}
    report["network_namespace_error"] = _probe_in_child(network_isolated)
    report["network_namespace"] = report["network_namespace_error"] is None
    uid, gid = spec.get("uid"), spec.get("gid")
    if report["is_root"] and uid is not None:
        def drop():
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        report["drop_uid_error"] = _probe_in_child(drop)
        report["drop_uid"] = report["drop_uid_error"] is None

        for candidate in spec.get("interpreters", []):
            def run_as_uid(candidate=candidate):
                drop()
                done = subprocess.run([candidate, "-S", "-c", "import encodings, json"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
                                      cwd="/", timeout=30)
                if done.returncode != 0:
                    raise LaunchError(done.stderr.decode(errors="replace")[-300:])
            report["interpreters"][candidate] = _probe_in_child(run_as_uid) is None
        if report["drop_uid"]:
            def mount_namespace():
                unshare(CLONE_NEWNS)
                _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make-rprivate")
            report["mount_namespace_error"] = _probe_in_child(mount_namespace)
            report["mount_namespace"] = report["mount_namespace_error"] is None
        if report.get("mount_namespace"):
            import shutil
            import tempfile

            work = tempfile.mkdtemp(prefix="codellama-sandbox-probe-")

            def private_filesystem():
                unshare(CLONE_NEWNS)
                make_filesystem_private(work, 1)
                open("written-here", "w").close()
                try:
                    open("/etc/codellama-sandbox-probe", "w").close()
                except OSError:
                    return
                raise LaunchError("/etc is still writable")
            try:
                report["private_filesystem_error"] = _probe_in_child(private_filesystem)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            report["private_filesystem"] = report["private_filesystem_error"] is None
    return report


def main() -> None:
    if sys.argv[1] == "--probe":
        print(json.dumps(probe(json.loads(sys.argv[2]))), flush=True)
        return
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    try:
        outcome = launch(spec, status_fd)
    except BaseException as e:  # noqa: BLE001 - report, never crash silently
        outcome = {"error": f"sandbox launcher: {type(e).__name__}: {e}"}
        try:
            kill_and_reap_all()
        except Exception:  # noqa: BLE001
            pass
    os.write(status_fd, (json.dumps(outcome) + "\n").encode())
    os.close(status_fd)


if __name__ == "__main__":
    main()
