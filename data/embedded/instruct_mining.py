"""Docstring → function pairs mined from real Python source with `ast` (the embedded instruction data).

The user turn is the function's own docstring behind one fixed request line; the answer is the
function's exact source (decorators included, dedented for methods). Nothing else is written.
"""
from __future__ import annotations

import ast
import textwrap

USER_TEMPLATE = "Write a Python {kind} `{name}({args}){returns}` that: {docstring}"

MIN_DOCSTRING_WORDS = 4
MAX_ANSWER_CHARS = 3000  # keeps a pair inside the tiny model's instruct sequences


def _is_trivial_body(body: list[ast.stmt]) -> bool:
    """Body (without its docstring) that is only `pass`, `...` or `raise NotImplementedError`."""
    rest = body[1:] if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
    if not rest:
        return True
    if len(rest) > 1:
        return False
    stmt = rest[0]
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis:
        return True
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        target = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(target, ast.Name) and target.id == "NotImplementedError"
    return False


def _function_source(lines: list[str], node: ast.AST) -> str:
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return textwrap.dedent("\n".join(lines[start - 1: node.end_lineno]))


def _candidates(tree: ast.Module):
    """Module-level functions and methods of module-level classes, in source order."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, None
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield item, node.name


def mine_pairs(source: str, source_path: str) -> list[dict]:
    """Chat rows {"messages": [user, assistant], "source_path": ...} for every documented, non-trivial
    function of `source`. Files that do not parse give no rows."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines()
    rows = []
    for node, class_name in _candidates(tree):
        name = node.name
        if name.startswith("__") and name.endswith("__") and name != "__init__":
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        if len(doc.split()) < MIN_DOCSTRING_WORDS or _is_trivial_body(node.body):
            continue
        answer = _function_source(lines, node)
        if len(answer) > MAX_ANSWER_CHARS:
            continue
        is_async = isinstance(node, ast.AsyncFunctionDef)
        kind = ("async " if is_async else "") + ("method" if class_name else "function")
        user = USER_TEMPLATE.format(
            kind=kind,
            name=f"{class_name}.{name}" if class_name else name,
            args=ast.unparse(node.args),
            returns=f" -> {ast.unparse(node.returns)}" if node.returns is not None else "",
            docstring=doc,
        )
        rows.append({
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "source_path": source_path,
        })
    return rows


_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")


def _doc_owners(node: ast.AST):
    """Modules, classes and functions, descending through statement lists only (a full ast.walk into
    every expression costs several times the parse)."""
    if isinstance(node, _DOC_OWNERS):
        yield node
    for field in _STATEMENT_LISTS:
        for child in getattr(node, field, ()) or ():
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                yield from _doc_owners(child)


def module_docstrings(source: str) -> str | None:
    """All docstrings of a module (module, classes, functions) in source order, blank-line separated;
    None when the file does not parse or has no docstring of at least a few words."""
    if '"""' not in source and "'''" not in source:
        return None  # cheap pre-filter: (almost) every docstring is triple-quoted
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    found = []
    for node in _doc_owners(tree):
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc.split()) >= MIN_DOCSTRING_WORDS:
            found.append((getattr(node, "lineno", 0), doc))
    found.sort(key=lambda item: item[0])
    return "\n\n".join(doc for _, doc in found) or None
