"""Reading a HumanEval problem for translation (MultiPL-E's method, our own code): the entry point's signature,
its docstring and doctests, the `check(candidate)` asserts as (arguments, expected value) cases, and the types of
the parameters and of the result, from the Python annotations where they say enough and from the test values
otherwise.

A problem that cannot be translated raises Untranslatable with the reason (listed by the benchmark): more than one
function in the prompt (helpers written in Python), tests that are not plain asserts on one call (loops, random
inputs, a helper that checks the answer), values whose types have no common type (e.g. int or str), `Any`.

Types are tuples: ("int",), ("float",), ("str",), ("bool",), ("none",), ("unknown",), ("list", T),
("tuple", (T, ...)), ("dict", K, V), ("optional", T).
"""
from __future__ import annotations

import ast
import dataclasses
import math

INT, FLOAT, STR, BOOL, NONE, UNKNOWN = ("int",), ("float",), ("str",), ("bool",), ("none",), ("unknown",)
_SCALARS = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL, "None": NONE}


class Untranslatable(ValueError):
    """The problem cannot be translated; str() is the reason."""


@dataclasses.dataclass
class Case:
    args: list                    # Python values, one per parameter
    expected: object              # the Python value the call must equal
    tolerance: float | None = None   # `abs(candidate(...) - expected) < tolerance` asserts


@dataclasses.dataclass
class ParsedProblem:
    task_id: str
    name: str                     # the entry point
    params: list[str]
    param_types: list[tuple]
    return_type: tuple
    docstring: str                # cleaned (ast.get_docstring), doctests included
    cases: list[Case]

    @property
    def multipl_e_name(self) -> str:
        """MultiPL-E's problem name: HumanEval_<number>_<entry point>."""
        return f"{self.task_id.replace('/', '_')}_{self.name}"


# ------------------------------------------------------------------ types
def type_of_value(value) -> tuple:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Untranslatable(f"a non-finite float ({value!r}) in the tests")
        return FLOAT
    if isinstance(value, str):
        return STR
    if value is None:
        return NONE
    if isinstance(value, list):
        return ("list", unify_all([type_of_value(v) for v in value]))
    if isinstance(value, tuple):
        return ("tuple", tuple(type_of_value(v) for v in value))
    if isinstance(value, dict):
        return ("dict", unify_all([type_of_value(k) for k in value]), unify_all([type_of_value(v) for v in value.values()]))
    raise Untranslatable(f"a value of type {type(value).__name__} in the tests")


def unify_all(types) -> tuple:
    out = UNKNOWN
    for t in types:
        out = unify(out, t)
    return out


def unify(a: tuple, b: tuple) -> tuple:
    """The smallest type both fit in: int with float is float, None with T is optional T, tuples of different
    lengths with one element type are lists; otherwise Untranslatable (mixed types)."""
    if a == b:
        return a
    if a == UNKNOWN:
        return b
    if b == UNKNOWN:
        return a
    if {a, b} == {INT, FLOAT}:
        return FLOAT
    if a == NONE:
        return b if b[0] == "optional" else ("optional", b)
    if b == NONE:
        return unify(b, a)
    if a[0] == "optional" or b[0] == "optional":
        inner_a = a[1] if a[0] == "optional" else a
        inner_b = b[1] if b[0] == "optional" else b
        return ("optional", unify(inner_a, inner_b))
    if a[0] == b[0] == "list":
        return ("list", unify(a[1], b[1]))
    if a[0] == b[0] == "dict":
        return ("dict", unify(a[1], b[1]), unify(a[2], b[2]))
    if a[0] == b[0] == "tuple":
        if len(a[1]) == len(b[1]):
            return ("tuple", tuple(unify(x, y) for x, y in zip(a[1], b[1])))
        return ("list", unify_all([*a[1], *b[1]]))
    if {a[0], b[0]} == {"list", "tuple"}:      # a function annotated List that the tests feed tuples (or back)
        lst, tup = (a, b) if a[0] == "list" else (b, a)
        return ("list", unify_all([lst[1], *tup[1]]))
    raise Untranslatable(f"values of mixed types ({describe(a)} and {describe(b)})")


def describe(t: tuple) -> str:
    if len(t) == 1:
        return t[0]
    if t[0] == "tuple":
        return "tuple[" + ", ".join(describe(x) for x in t[1]) + "]"
    return t[0] + "[" + ", ".join(describe(x) for x in t[1:]) + "]"


def type_of_annotation(node) -> tuple:
    """A Python annotation as a type; UNKNOWN where it says too little (no annotation, bare `list`)."""
    if node is None:
        return UNKNOWN
    if isinstance(node, ast.Constant) and node.value is None:
        return NONE
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return type_of_annotation(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        if node.id in _SCALARS:
            return _SCALARS[node.id]
        if node.id in ("list", "List"):
            return ("list", UNKNOWN)
        if node.id in ("tuple", "Tuple"):
            return ("list", UNKNOWN)
        if node.id in ("dict", "Dict"):
            return ("dict", UNKNOWN, UNKNOWN)
        raise Untranslatable(f"the annotation {node.id}")
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        head = node.value.id
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head in ("List", "list"):
            return ("list", type_of_annotation(args[0]))
        if head in ("Tuple", "tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return ("list", type_of_annotation(args[0]))
            return ("tuple", tuple(type_of_annotation(a) for a in args))
        if head in ("Dict", "dict"):
            return ("dict", type_of_annotation(args[0]), type_of_annotation(args[1]))
        if head == "Optional":
            return ("optional", type_of_annotation(args[0]))
        if head == "Union":
            parts = [type_of_annotation(a) for a in args]
            if NONE in parts and len(parts) == 2:
                return ("optional", next(p for p in parts if p != NONE))
            raise Untranslatable(f"the annotation {ast.unparse(node)} (a union)")
    raise Untranslatable(f"the annotation {ast.unparse(node)}")


def resolve_unknowns(t: tuple) -> tuple:
    """What neither the annotation nor any test value says (e.g. a list only ever empty) becomes int."""
    if t == UNKNOWN:
        return INT
    if t == NONE:
        raise Untranslatable("a value that is always None")
    if t[0] in ("list", "optional"):
        return (t[0], resolve_unknowns(t[1]))
    if t[0] == "dict":
        return ("dict", resolve_unknowns(t[1]), resolve_unknowns(t[2]))
    if t[0] == "tuple":
        return ("tuple", tuple(resolve_unknowns(x) for x in t[1]))
    return t


# ------------------------------------------------------------------ tests
_EVAL_NAMES = {"range": range, "list": list, "tuple": tuple, "str": str, "int": int, "float": float,
               "len": len, "sorted": sorted, "True": True, "False": False, "None": None}


def python_value(node, names: dict | None = None):
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        pass
    try:   # simple expressions such as "a" * 10, [1] * 3, 2 ** 10, -x, a name assigned earlier in check()
        return eval(compile(ast.Expression(node), "<test>", "eval"), {"__builtins__": {}},
                    dict(_EVAL_NAMES) | (names or {}))
    except Exception:  # noqa: BLE001
        raise Untranslatable(f"a test expression that is not a value: {ast.unparse(node)[:80]}") from None


def _candidate_call(node, names=None) -> list | None:
    """The arguments of `candidate(...)` (also inside tuple(...) or list(...), which compare as the same list)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("tuple", "list")
            and len(node.args) == 1 and not node.keywords):
        node = node.args[0]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate":
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise Untranslatable("a test call with keyword or starred arguments")
        return [python_value(a, names) for a in node.args]
    return None


def _is_abs(node) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Name) and f.id == "abs") or (
        isinstance(f, ast.Attribute) and f.attr == "fabs" and isinstance(f.value, ast.Name) and f.value.id == "math")


def case_of_assert(test, names: dict | None = None) -> Case | None:
    """One assert of check(candidate) as a Case; None for asserts that test nothing (assert True, "msg")."""
    if isinstance(test, ast.Constant) and test.value is True:
        return None
    args = _candidate_call(test, names)
    if args is not None:
        return Case(args, True)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        args = _candidate_call(test.operand, names)
        if args is not None:
            return Case(args, False)
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        op, left, right = test.ops[0], test.left, test.comparators[0]
        if isinstance(op, (ast.Eq, ast.Is)):
            for call, other in ((left, right), (right, left)):
                args = _candidate_call(call, names)
                if args is not None:
                    if _candidate_call(other, names) is not None:
                        break
                    expected = python_value(other, names)
                    if isinstance(other, ast.Call) and isinstance(expected, tuple):   # tuple([..]): a list
                        expected = list(expected)
                    return Case(args, expected)
        if isinstance(op, (ast.Lt, ast.LtE)) and _is_abs(left) and len(left.args) == 1:
            inner = left.args[0]
            if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub):
                args = _candidate_call(inner.left, names)
                if args is not None:
                    tol = python_value(right, names)
                    return Case(args, float(python_value(inner.right, names)), float(tol))
    raise Untranslatable(f"an assert that is not `candidate(...) == value`: {ast.unparse(test)[:80]}")


def parse_cases(test_code: str) -> list[Case]:
    module = ast.parse(test_code)
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        raise Untranslatable("no single check(candidate) function in the tests")
    cases, names = [], {}
    for stmt in checks[0].body:
        if isinstance(stmt, ast.Assert):
            case = case_of_assert(stmt.test, names)
            if case is not None:
                cases.append(case)
        elif (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
              and stmt.targets[0].id != "candidate"):
            names[stmt.targets[0].id] = python_value(stmt.value, names)   # lst = list(range(...))
        elif isinstance(stmt, ast.Expr) and (isinstance(stmt.value, (ast.Constant, ast.Name)) or (
                isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name)
                and stmt.value.func.id == "print")):
            continue          # a docstring or a print: tests nothing
        elif isinstance(stmt, (ast.Import, ast.ImportFrom, ast.Pass)):
            continue
        else:
            raise Untranslatable(f"the tests use a `{type(stmt).__name__.lower()}` statement "
                                 f"({ast.unparse(stmt).splitlines()[0][:60]})")
    if not cases:
        raise Untranslatable("no assert on a call of the candidate")
    return cases


# ------------------------------------------------------------------ the whole problem
def parse_problem(row: dict) -> ParsedProblem:
    """A HumanEval row (task_id, prompt, entry_point, test) read for translation, or Untranslatable."""
    module = ast.parse(row["prompt"])
    functions = [n for n in module.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(functions) != 1:
        raise Untranslatable(f"the prompt defines {len(functions)} functions (Python helpers cannot be translated)")
    fn = functions[0]
    if fn.name != row["entry_point"]:
        raise Untranslatable(f"the prompt's function {fn.name} is not the entry point {row['entry_point']}")
    a = fn.args
    if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs or a.defaults:
        raise Untranslatable("a signature with *args, **kwargs, keyword-only or default arguments")
    params = [p.arg for p in a.args]
    cases = parse_cases(row["test"])
    for case in cases:
        if len(case.args) != len(params):
            raise Untranslatable(f"a test call with {len(case.args)} arguments for {len(params)} parameters")
    param_types = []
    for i, p in enumerate(a.args):
        t = unify_all([type_of_annotation(p.annotation), *(type_of_value(c.args[i]) for c in cases)])
        param_types.append(resolve_unknowns(t))
    ret = type_of_annotation(fn.returns)
    for c in cases:
        ret = unify(ret, FLOAT if c.tolerance is not None else type_of_value(c.expected))
    for i, c in enumerate(cases):   # e.g. any_int(3, 4, 7) is True but any_int(3.0, 4, 7) is False
        for d in cases[:i]:
            if c.args == d.args and repr(c.args) != repr(d.args) and c.expected != d.expected:
                raise Untranslatable("the tests tell apart values that one type makes equal "
                                     f"({d.args!r} and {c.args!r})")
    return ParsedProblem(task_id=row["task_id"], name=fn.name, params=params, param_types=param_types,
                         return_type=resolve_unknowns(ret), docstring=ast.get_docstring(fn) or "", cases=cases)


def doctest_examples(docstring: str, name: str) -> list[tuple[int, int, list, object]]:
    """(first line, end line, args, expected) of every `>>> name(literals)` example followed by a literal
    result line in the docstring; other doctests stay as they are written."""
    lines = docstring.splitlines()
    out = []
    for i, line in enumerate(lines):
        text = line.strip()
        if not text.startswith(">>>") or i + 1 >= len(lines):
            continue
        try:
            call = ast.parse(text[3:].strip(), mode="eval").body
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == name):
                continue
            args = [ast.literal_eval(x) for x in call.args]
            if call.keywords:
                continue
            expected = ast.literal_eval(lines[i + 1].strip())
        except (SyntaxError, ValueError, TypeError):
            continue
        out.append((i, i + 2, args, expected))
    return out
