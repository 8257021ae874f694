"""Judges one candidate of another language inside the sandbox (standard library only; copied next to the
candidate and run as the sandbox's program, as the sandbox user, like sandbox_harness.py for Python).

    1. read the verdict key (one line on stdin, then stdin is /dev/null), job.json, candidate.txt and tests.txt,
       and delete all three;
    2. replace the tests' sentinel placeholder with a fresh random token (the candidate's text is left as it is)
       and write the program `candidate + "\\n" + tests`;
    3. compile it once (job "compile" commands, each within compile_s seconds); a compiled language's source is
       deleted before the program runs;
    4. run it (job "run", within run_s seconds, stdin /dev/null, stdout to a file);
    5. "<key> passed" only when the program printed the token on a line of its own (the tests reached their
       end) and then exited with status 0. Otherwise "<key> failed <reason>" or "<key> timed_out <reason>".

The verdict is written on a duplicate of the harness's stdout, which the program never gets. Every process is
started in its own session and its whole group is killed at its time limit; the launcher kills whatever is left.
"""
import json
import os
import secrets
import signal
import subprocess
import sys

SHOWN_BYTES = 16384


def _tail(path: str, limit: int = SHOWN_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _run(argv, seconds: float, out_path: str, err_path: str):
    """(return code or None on timeout); the command's whole process group is killed at its limit."""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        except OSError as e:
            err.write(f"cannot start {argv[0]}: {e}\n".encode())
            return 127
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
            return None


def _first_error_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return ""


def main() -> None:
    key = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    verdict_fd = os.dup(1)

    def verdict(text: str) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(verdict_fd, f"\n{key} {text}\n".encode("utf-8", "replace"))
        os._exit(0)

    with open("job.json", encoding="utf-8") as f:
        job = json.load(f)
    with open("candidate.txt", encoding="utf-8") as f:
        candidate = f.read()
    with open("tests.txt", encoding="utf-8") as f:
        tests = f.read()
    for name in ("job.json", "candidate.txt", "tests.txt"):
        os.remove(name)
    token = "tests-finished-" + secrets.token_hex(16)
    with open(job["source"], "w", encoding="utf-8") as f:
        f.write(candidate + "\n" + tests.replace(job["placeholder"], token))

    for argv in job["compile"]:
        code = _run(argv, job["compile_s"], ".compile.out", ".compile.err")
        output = _tail(".compile.err") + _tail(".compile.out")
        sys.stderr.write(output)
        if code is None:
            verdict(f"timed_out compiling took more than {job['compile_s']}s")
        if code != 0:
            verdict(f"failed does not compile ({argv[0]} exit {code}): {_first_error_line(output)}")
    if job["remove_source"]:
        os.remove(job["source"])

    code = _run(job["run"], job["run_s"], ".run.out", ".run.err")
    stdout, stderr = _tail(".run.out"), _tail(".run.err")
    with open(".run.out", "rb") as f:
        finished = token.encode() in f.read().splitlines()
    sys.stdout.write("\n".join(line for line in stdout.splitlines() if line != token))
    sys.stderr.write(stderr)
    if code is None:
        verdict(f"timed_out the program ran for more than {job['run_s']}s")
    if finished and code == 0:
        verdict("passed")
    if finished:
        verdict(f"failed the program failed after its tests finished (exit {code})")
    if code == 0:
        verdict("failed the program exited (status 0) before the tests finished")
    how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
    verdict(f"failed a test failed or the program crashed ({how}): {_first_error_line(stderr)}")


if __name__ == "__main__":
    main()
