"""docs/reference.md is generated from core/schema.py (core/config_reference.py) and must match it; every field
of the schema says what it means, in a comment that the page reads."""
import dataclasses
import difflib

from codellama_recipe.core import schema
from codellama_recipe.core.config_reference import (COMMANDS, REFERENCE_PATH, REGENERATE, fields_without_meaning,
                                                    meaning, render)


def test_every_schema_field_has_a_meaning():
    missing = fields_without_meaning()
    assert not missing, ("fields of core/schema.py without a meaning; give each a trailing `# …` comment or a "
                         "comment line directly above it: " + ", ".join(missing))


def test_reference_page_is_not_stale():
    page = render()
    committed = REFERENCE_PATH.read_text(encoding="utf-8") if REFERENCE_PATH.exists() else ""
    if committed != page:
        diff = "\n".join(list(difflib.unified_diff(committed.splitlines(), page.splitlines(), "committed",
                                                   "generated", lineterm="", n=0))[:20])
        raise AssertionError(f"docs/reference.md is stale: run {REGENERATE}\n{diff}")


def test_every_command_schema_has_a_section():
    assert {root for _, _, root in COMMANDS} == set(schema.SCHEMAS.values())
    page = REFERENCE_PATH.read_text(encoding="utf-8")
    for command, _, root in COMMANDS:
        assert f"## {command}\n" in page
        # every top-level key of the root appears as a row
        for f in dataclasses.fields(root):
            assert f"| `{f.name}` |" in page.split(f"## {command}\n")[1].split("\n## ")[0], (command, f.name)


@dataclasses.dataclass
class _Example:
    trailing: int = 1          # said after the field
    continued: int = 2         # said after the field ...
                               # ... and continued below it
    # said above the field
    above: int = 3
    silent: int = 4


def test_meanings_are_read_from_trailing_continued_and_above_comments():
    assert meaning(_Example, "trailing") == "said after the field"
    assert meaning(_Example, "continued") == "said after the field ... ... and continued below it"
    assert meaning(_Example, "above") == "said above the field"
    assert meaning(_Example, "silent") == ""
    assert meaning(schema.ModelNode, "dim") == meaning(schema.ModelConfig, "dim") != ""   # inherited fields
