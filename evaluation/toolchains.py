"""How the sandbox compiles and runs a program in each MultiPL-E language, and how a test program proves that its
tests ran to their end.

A judged program is `prompt + completion + "\\n" + tests` (MultiPL-E's concatenation). `with_sentinel` puts one
statement after the last assertion of the tests that prints a placeholder on a line of its own; inside the sandbox
the harness (sandbox_harness_compiled.py) replaces the placeholder with a fresh random token, compiles the program
once, deletes the source of a compiled language, runs it, and passes it only when the token was printed *and* the
program then exited with status 0. Exiting early with status 0 (exit(0), System.exit(0), process.exit(0), `exit`
in Bash, PHP's exit) therefore fails, as Python's SystemExit does in the Python judge.

Toolchains are looked up on the sandbox's PATH (/usr/local/bin:/usr/bin:/bin); `make toolchains` installs the
missing ones (apt: g++, default-jdk-headless, nodejs, npm, php-cli, mono-mcs, mono-runtime; npm: typescript).
"""
from __future__ import annotations

import dataclasses
import shutil

PLACEHOLDER = "CODELLAMA_TESTS_FINISHED_5f0e3c1d"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
_JVM = ("-Xmx512m", "-Xss16m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData")


@dataclasses.dataclass(frozen=True)
class Toolchain:
    language: str
    source: str                               # the program's file name in the sandbox directory
    compile: tuple[tuple[str, ...], ...]      # commands run once, in order (empty: interpreted)
    run: tuple[str, ...]
    tools: tuple[str, ...]                    # executables that must be on the sandbox's PATH
    compile_s: float = 30.0                   # wall-clock limits of the compile step and of the run
    run_s: float = 10.0
    memory_mb: int = 4096                     # RLIMIT_AS of every process (JVM and V8 reserve much address space)

    def missing(self) -> list[str]:
        return [t for t in self.tools if shutil.which(t, path=SANDBOX_PATH) is None]

    def with_limits(self, compile_s=None, run_s=None, memory_mb=None) -> "Toolchain":
        return dataclasses.replace(self, compile_s=compile_s or self.compile_s, run_s=run_s or self.run_s,
                                   memory_mb=memory_mb or self.memory_mb)

    def job(self) -> dict:
        """What the harness inside the sandbox reads (job.json)."""
        return {"language": self.language, "source": self.source, "compile": [list(c) for c in self.compile],
                "run": list(self.run), "compile_s": self.compile_s, "run_s": self.run_s,
                "placeholder": PLACEHOLDER, "remove_source": bool(self.compile)}


TOOLCHAINS: dict[str, Toolchain] = {t.language: t for t in (
    Toolchain("cpp", "program.cpp", (("g++", "-std=c++17", "-O0", "-o", "program", "program.cpp"),),
              ("./program",), ("g++",), compile_s=40.0, run_s=10.0),
    Toolchain("java", "Problem.java",
              (("javac", *(f"-J{o}" for o in _JVM), "-encoding", "UTF-8", "-nowarn", "Problem.java"),),
              ("java", "-ea", *_JVM, "-cp", ".", "Problem"), ("javac", "java"), compile_s=40.0, run_s=15.0),
    Toolchain("ts", "program.ts", (("tsc", "--target", "es2020", "--lib", "es2020", "--noImplicitAny", "false",
                                    "--strict", "false", "program.ts"),),
              ("node", "program.js"), ("tsc", "node"), compile_s=40.0, run_s=10.0),
    Toolchain("js", "program.js", (), ("node", "program.js"), ("node",), run_s=10.0),
    Toolchain("sh", "program.sh", (), ("bash", "program.sh"), ("bash",), run_s=10.0),
    Toolchain("php", "program.php", (), ("php", "-d", "display_errors=stderr", "program.php"), ("php",),
              run_s=10.0),
    Toolchain("cs", "program.cs", (("mcs", "-d:DEBUG", "-r:System.Numerics.dll", "-nowarn:162,219,414,429,1717",
                                    "-out:program.exe", "program.cs"),),
              ("mono", "program.exe"), ("mcs", "mono"), compile_s=40.0, run_s=15.0),
)}

# Where a compiled/interpreted program prints the token: one statement per language.
_SENTINEL = {
    "cpp": '    std::cout << "\\n{p}" << std::endl;\n',
    "java": '    System.out.println("\\n{p}");\n',
    "cs": '    Console.WriteLine("\\n{p}");\n',
    "ts": 'console.log("\\n{p}");\n',
    "js": 'console.log("\\n{p}");\n',
    "sh": "printf '\\n%s\\n' '{p}'\n",
    "php": 'echo "\\n{p}\\n";\n',
}


def _before_closing_brace(tests: str, statement: str, which: int) -> str:
    """Insert before the which-th closing brace counted from the end (1 = the last one)."""
    end = len(tests)
    for _ in range(which):
        end = tests.rfind("}", 0, end)
        if end < 0:
            raise ValueError("the tests have no closing brace to put the sentinel before")
    line_start = tests.rfind("\n", 0, end) + 1
    return tests[:line_start] + statement + tests[line_start:]


def with_sentinel(language: str, tests: str) -> str:
    """The tests with the sentinel statement after their last assertion (MultiPL-E's layouts: C++ ends with
    main's closing brace; Java and C# with main's brace then the class's; TypeScript, JavaScript, Bash and PHP
    with the top-level call that runs the tests)."""
    statement = _SENTINEL[language].format(p=PLACEHOLDER)
    if language == "cpp":
        return _before_closing_brace(tests, statement, 1)
    if language in ("java", "cs"):
        return _before_closing_brace(tests, statement, 2)
    if language == "ts":
        statement = "declare var console: any;\n" + statement
    if language == "php":
        body = tests.rstrip()
        if body.endswith("?>"):
            return body[:-2] + statement + "?>\n"
    return tests.rstrip("\n") + "\n" + statement
