"""The repository stands alone: nothing tracked points outside it, and every documentation link resolves.

Users get only this repository: no team notes beside the checkout, no benchmark folder next to it. The recipe
is stated in docs/recipe.md; facts about machines are stated where they matter. Only `.ci/run` may know the CI
machine's layout (it exports the benchmark folders when they exist there).
"""
import re
import shutil
import subprocess

import pytest
from conftest import REPO

# Built from pieces so that this file does not match itself.
FORBIDDEN = [
    re.compile(r"\bRECIPE" + r"(\.md\b| §)"),
    re.compile(r"\bENVIRONMENT" + r"\.md\b"),
    re.compile(re.escape(".." + "/shared")),
]
ALLOWED = {".ci/run"}

LINK = re.compile(r"\]\(([^)\s]+)\)")                               # [text](target)
# a path of a docs page, with an optional #anchor, in any file
DOC_PATH = re.compile(r"(?<![\w/.-])(docs/[\w./-]+?\.md)(#[\w-]+)?")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def text(path: str) -> str | None:
    try:
        return (REPO / path).read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None  # binary, or deleted but not yet staged


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(md: str) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            s = slug(m.group(2))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
    return found


@pytest.fixture(scope="module")
def files():
    return {p: t for p in tracked_files() if (t := text(p)) is not None}


def test_no_tracked_file_points_outside_the_repository(files):
    hits = []
    for path, body in files.items():
        if path in ALLOWED:
            continue
        for n, line in enumerate(body.splitlines(), 1):
            if any(f.search(line) for f in FORBIDDEN):
                hits.append(f"{path}:{n}: {line.strip()[:100]}")
    assert not hits, "cite docs/recipe.md or the paper instead:\n" + "\n".join(hits)


def test_recipe_page_exists_and_is_linked_from_the_readme(files):
    assert "docs/recipe.md" in files
    assert "](docs/recipe.md)" in files["README.md"]


def _check(target_file, anchor, where, problems, cache):
    if not target_file.is_file():
        shown = target_file.relative_to(REPO) if target_file.is_relative_to(REPO) else target_file
        problems.append(f"{where}: {shown} does not exist")
        return
    if anchor and target_file.suffix == ".md":
        if target_file not in cache:
            cache[target_file] = anchors(target_file.read_text(encoding="utf-8"))
        if anchor not in cache[target_file]:
            problems.append(f"{where}: no heading #{anchor} in {target_file.relative_to(REPO)}")


def test_every_markdown_link_resolves(files):
    problems, cache = [], {}
    for path, body in files.items():
        if not path.endswith(".md"):
            continue
        base = (REPO / path).parent
        fenced = False
        for n, line in enumerate(body.splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if fenced:
                continue
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (base / file_part).resolve() if file_part else REPO / path
                _check(dest, anchor, f"{path}:{n}", problems, cache)
    assert not problems, "\n".join(problems)


def test_every_docs_path_mentioned_anywhere_exists(files):
    problems, cache = [], {}
    for path, body in files.items():
        for n, line in enumerate(body.splitlines(), 1):
            for doc, anchor in DOC_PATH.findall(line):
                _check(REPO / doc, anchor.lstrip("#"), f"{path}:{n}", problems, cache)
    assert not problems, "\n".join(problems)
