"""Translating a parsed HumanEval problem (multipl_e_parse.py) into C++, Java, TypeScript, JavaScript, Bash, PHP
and C#, the way MultiPL-E lays its problems out (our own translator; the layouts follow MultiPL-E's published
files so that `multipl_e.path` files and ours are judged alike):

    prompt      the language's preamble, the docstring as comments (doctests with their calls and results
                written in the language), the signature with types from the annotations / test values, and the
                opening of the body;
    tests       what follows the completion: for C++, Java, C# and Bash it closes the function first (the stop
                token is the closing brace), then every assert of check(candidate) in the language;
    stop_tokens where a completion ends.

Values: Python int → 64-bit integers (long), float → double, str, bool, list → the language's growable list,
tuple → its tuple (Java: a `Pair` / `Triplet` record declared in the prompt), dict → a map, None → the empty
optional (TypeScript / JavaScript: undefined, PHP: null). Bash has strings only: a list is its elements joined
by spaces, a list of lists one line per row, a dict "key,value" lines, a bool true / false.

`oracle_completion` writes a completion that answers every test case from a table of the cases (the argument
values and their expected results): it exercises the translation, the compiler and the judge end to end where
no translated canonical solution exists (bench/multipl_e_suite.py, tests/test_eval_multipl_e.py).
"""
from __future__ import annotations

from codellama_recipe.evaluation.multipl_e_parse import (
    FLOAT, INT, STR, Case, ParsedProblem, Untranslatable, doctest_examples)

INT64 = 2 ** 63


def _int(v, lang) -> str:
    if not -INT64 <= v < INT64:
        raise Untranslatable(f"an integer beyond 64 bits ({v}) for {lang}")
    return str(v)


def _float(v) -> str:
    text = repr(float(v))
    return text if any(c in text for c in ".en") else text + ".0"


def _c_string(s: str) -> str:
    """A double-quoted literal valid in C++, Java, C# and JavaScript (\\uXXXX escapes avoided: UTF-8 as is)."""
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _camel(name: str, upper_first: bool = False) -> str:
    parts = [p for p in name.split("_") if p]
    text = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:]) if parts else name
    return text[:1].upper() + text[1:] if upper_first else text


class Language:
    """One target language: its types, values, prompt, tests and stop tokens."""
    code = ""
    keywords: frozenset = frozenset()
    comment = "//"
    stop_tokens: tuple = ()

    def function_name(self, p: ParsedProblem) -> str:
        return p.name

    def param_name(self, name: str) -> str:
        return name + "_" if name in self.keywords else name

    # values and types ------------------------------------------------
    def type(self, t: tuple) -> str:
        raise NotImplementedError

    def value(self, v, t: tuple) -> str:
        raise NotImplementedError

    def shown(self, v, t: tuple) -> str:
        """A doctest's result as the docstring shows it."""
        return self.value(v, t)

    # layout ----------------------------------------------------------
    def comment_block(self, p: ParsedProblem, indent: str = "") -> str:
        lines = p.docstring.splitlines()
        examples = {start: (end, args, expected) for start, end, args, expected in
                    doctest_examples(p.docstring, p.name)}
        out, i = [], 0
        while i < len(lines):
            if i in examples:
                end, args, expected = examples[i]
                try:
                    call = self.call(p, args)
                    result = self.shown(expected, p.return_type)
                    out += [">>> " + call, result]
                    i = end
                    continue
                except (Untranslatable, KeyError, TypeError, ValueError, IndexError):
                    pass
            out.append(lines[i])
            i += 1
        return "".join(f"{indent}{self.comment} {line}".rstrip() + "\n" for line in out)

    def args(self, p: ParsedProblem, args: list) -> str:
        return ", ".join(self.value(v, t) for v, t in zip(args, p.param_types))

    def call(self, p: ParsedProblem, args: list) -> str:
        return f"{self.function_name(p)}({self.args(p, args)})"

    def prompt(self, p: ParsedProblem) -> str:
        raise NotImplementedError

    def tests(self, p: ParsedProblem) -> str:
        raise NotImplementedError

    def oracle_completion(self, p: ParsedProblem, cases: list[Case] | None = None) -> str:
        raise NotImplementedError

    def check_types(self, p: ParsedProblem) -> None:
        """Untranslatable when a type has no form in this language (e.g. a dict key of a tuple type)."""
        for t in [*p.param_types, p.return_type]:
            self.type(t)


# ------------------------------------------------------------------ C++
class Cpp(Language):
    code = "cpp"
    keywords = frozenset({"operator", "new", "delete", "class", "template", "typename", "this", "auto", "default",
                          "register", "union", "namespace", "private", "public", "friend", "virtual", "and", "or",
                          "not", "xor", "int", "long", "char", "float", "double", "bool", "string", "signed"})
    stop_tokens = ("\n}",)

    def type(self, t):
        kind = t[0]
        if kind == "int":
            return "long"
        if kind == "float":
            return "double"
        if kind == "str":
            return "std::string"
        if kind == "bool":
            return "bool"
        if kind == "list":
            return f"std::vector<{self.type(t[1])}>"
        if kind == "tuple":
            return "std::tuple<" + ", ".join(self.type(x) for x in t[1]) + ">"
        if kind == "dict":
            return f"std::map<{self.type(t[1])},{self.type(t[2])}>"
        if kind == "optional":
            return f"std::optional<{self.type(t[1])}>"
        raise Untranslatable(f"no C++ type for {t}")

    def value(self, v, t):
        kind = t[0]
        if kind == "optional":
            return "std::nullopt" if v is None else f"{self.type(t)}({self.value(v, t[1])})"
        if kind == "int":
            return _int(v, "C++")
        if kind == "float":
            return _float(v)
        if kind == "str":
            return f"std::string({_c_string(v)})"
        if kind == "bool":
            return "true" if v else "false"
        if kind == "list":
            return f"{self.type(t)}({{" + ", ".join(self.value(x, t[1]) for x in v) + "})"
        if kind == "tuple":
            return f"{self.type(t)}(" + ", ".join(self.value(x, y) for x, y in zip(v, t[1])) + ")"
        if kind == "dict":
            return f"{self.type(t)}({{" + ", ".join(
                "{" + self.value(k, t[1]) + ", " + self.value(x, t[2]) + "}" for k, x in v.items()) + "})"
        raise Untranslatable(f"no C++ value for {v!r}")

    def prompt(self, p):
        params = ", ".join(f"{self.type(t)} {self.param_name(n)}" for n, t in zip(p.params, p.param_types))
        return ("#include<assert.h>\n#include<bits/stdc++.h>\n" + self.comment_block(p)
                + f"{self.type(p.return_type)} {p.name}({params}) {{\n")

    def assertion(self, p, case):
        call = self.call(p, case.args)
        if case.tolerance is not None:
            return f"    assert(std::abs({call} - ({_float(case.expected)})) < {_float(case.tolerance)});\n"
        return f"    assert(({call} == {self.value(case.expected, p.return_type)}));\n"

    def tests(self, p):
        return "}\nint main() {\n" + "".join(self.assertion(p, c) for c in p.cases) + "}\n"

    def oracle_completion(self, p, cases=None):
        body = ""
        names = [self.param_name(n) for n in p.params]
        for c in cases if cases is not None else p.cases:
            cond = " && ".join(f"{n} == {self.value(v, t)}" for n, v, t in zip(names, c.args, p.param_types))
            body += f"    if ({cond or 'true'}) return {self.value(c.expected, p.return_type)};\n"
        return body + "    std::abort();\n"


# ------------------------------------------------------------------ Java
class Java(Language):
    code = "java"
    keywords = frozenset({"new", "class", "char", "int", "long", "float", "double", "boolean", "byte", "short",
                          "default", "package", "public", "private", "static", "final", "this", "super", "switch",
                          "case", "goto", "const", "native", "enum", "interface", "abstract", "throws", "void"})
    stop_tokens = ("\n    }\n",)
    _boxed = {"int": "Long", "float": "Double", "str": "String", "bool": "Boolean"}

    def function_name(self, p):
        name = _camel(p.name)
        return name + "_" if name in self.keywords else name

    def param_name(self, name):
        name = _camel(name)
        return name + "_" if name in self.keywords else name

    def type(self, t, boxed=False):
        kind = t[0]
        if kind in self._boxed:
            return self._boxed[kind] if boxed else {"int": "long", "float": "double", "str": "String",
                                                    "bool": "boolean"}[kind]
        if kind == "list":
            return f"ArrayList<{self.type(t[1], True)}>"
        if kind == "tuple":
            if len(t[1]) not in (2, 3):
                raise Untranslatable(f"a tuple of {len(t[1])} elements for Java")
            name = "Pair" if len(t[1]) == 2 else "Triplet"
            return f"{name}<" + ", ".join(self.type(x, True) for x in t[1]) + ">"
        if kind == "dict":
            return f"HashMap<{self.type(t[1], True)},{self.type(t[2], True)}>"
        if kind == "optional":
            return f"Optional<{self.type(t[1], True)}>"
        raise Untranslatable(f"no Java type for {t}")

    def value(self, v, t):
        kind = t[0]
        if kind == "optional":
            return "Optional.empty()" if v is None else f"Optional.of({self.value(v, t[1])})"
        if kind == "int":
            return _int(v, "Java") + "l"
        if kind == "float":
            return _float(v) + "d"
        if kind == "str":
            return _c_string(v)
        if kind == "bool":
            return "true" if v else "false"
        if kind == "list":
            if not v:
                return f"new {self.type(t)}()"
            return f"new {self.type(t)}(Arrays.asList(" + ", ".join(self.value(x, t[1]) for x in v) + "))"
        if kind == "tuple":
            return f"new {self.type(t)}(" + ", ".join(self.value(x, y) for x, y in zip(v, t[1])) + ")"
        if kind == "dict":
            if not v:
                return f"new {self.type(t)}()"
            return f"new {self.type(t)}(Map.ofEntries(" + ", ".join(
                f"Map.entry({self.value(k, t[1])}, {self.value(x, t[2])})" for k, x in v.items()) + "))"
        raise Untranslatable(f"no Java value for {v!r}")

    @staticmethod
    def _tuple_arities(t, out):
        if t[0] == "tuple":
            out.add(len(t[1]))
            for x in t[1]:
                Java._tuple_arities(x, out)
        elif t[0] in ("list", "optional"):
            Java._tuple_arities(t[1], out)
        elif t[0] == "dict":
            Java._tuple_arities(t[1], out)
            Java._tuple_arities(t[2], out)
        return out

    def prompt(self, p):
        params = ", ".join(f"{self.type(t)} {self.param_name(n)}" for n, t in zip(p.params, p.param_types))
        arities = set()
        for t in [*p.param_types, p.return_type]:
            self._tuple_arities(t, arities)
        records = ""
        if 2 in arities:
            records += "    record Pair<A, B>(A first, B second) {}\n"
        if 3 in arities:
            records += "    record Triplet<A, B, C>(A first, B second, C third) {}\n"
        return ("import java.util.*;\nimport java.lang.reflect.*;\nimport java.security.*;\nimport java.math.*;\n"
                "import java.io.*;\nimport java.util.stream.*;\nclass Problem {\n" + records
                + self.comment_block(p, "    ")
                + f"    public static {self.type(p.return_type)} {self.function_name(p)}({params}) {{\n")

    def _equal(self, left, right, t):
        if t[0] in ("int", "float", "bool"):
            return f"{left} == {right}"
        return f"{left}.equals({right})"

    def assertion(self, p, case):
        call = self.call(p, case.args)
        if case.tolerance is not None:
            return f"    assert(Math.abs({call} - ({_float(case.expected)}d)) < {_float(case.tolerance)}d);\n"
        return f"    assert({self._equal(call, '(' + self.value(case.expected, p.return_type) + ')', p.return_type)});\n"

    def tests(self, p):
        return ("    }\n    public static void main(String[] args) {\n"
                + "".join(self.assertion(p, c) for c in p.cases) + "    }\n\n}\n")

    def oracle_completion(self, p, cases=None):
        body = ""
        names = [self.param_name(n) for n in p.params]
        for c in cases if cases is not None else p.cases:
            cond = " && ".join(self._equal(n, self.value(v, t), t) for n, v, t in zip(names, c.args, p.param_types))
            body += f"        if ({cond or 'true'}) return {self.value(c.expected, p.return_type)};\n"
        return body + '        throw new RuntimeException("no such case");\n'


# ------------------------------------------------------------------ TypeScript and JavaScript
class JavaScript(Language):
    code = "js"
    keywords = frozenset({"new", "class", "function", "delete", "default", "this", "var", "let", "const", "switch",
                          "case", "in", "of", "typeof", "void", "with", "yield", "enum", "export", "import"})
    stop_tokens = ("\nfunction ", "\n/*", "\n//", "\nconsole.log")
    preamble = "const assert = require('node:assert');\n"

    def type(self, t):
        kind = t[0]
        if kind in ("int", "float"):
            return "number"
        if kind == "str":
            return "string"
        if kind == "bool":
            return "boolean"
        if kind == "list":
            inner = self.type(t[1])
            return f"({inner})[]" if "|" in inner else f"{inner}[]"
        if kind == "tuple":
            return "[" + ", ".join(self.type(x) for x in t[1]) + "]"
        if kind == "dict":
            if t[1] not in (STR, INT):
                raise Untranslatable(f"a dict key of type {t[1][0]} for TypeScript")
            return f"{{[key: {self.type(t[1])}]: {self.type(t[2])}}}"
        if kind == "optional":
            return f"{self.type(t[1])} | undefined"
        raise Untranslatable(f"no TypeScript type for {t}")

    def value(self, v, t):
        kind = t[0]
        if v is None:
            return "undefined"
        if kind == "optional":
            return self.value(v, t[1])
        if kind == "int":
            return str(v)
        if kind == "float":
            return _float(v)
        if kind == "str":
            return _c_string(v)
        if kind == "bool":
            return "true" if v else "false"
        if kind in ("list", "tuple"):
            types = t[1] if kind == "tuple" else [t[1]] * len(v)
            return "[" + ", ".join(self.value(x, y) for x, y in zip(v, types)) + "]"
        if kind == "dict":
            return "{" + ", ".join(f"{self.value(k, t[1])}: {self.value(x, t[2])}" for k, x in v.items()) + "}"
        raise Untranslatable(f"no JavaScript value for {v!r}")

    def signature(self, p):
        return f"function {p.name}(" + ", ".join(self.param_name(n) for n in p.params) + ") {\n"

    def prompt(self, p):
        return self.comment_block(p) + self.signature(p)

    def assertion(self, p, case):
        call = f"candidate({self.args(p, case.args)})"
        if case.tolerance is not None:
            return f"  assert.ok(Math.abs({call} - ({_float(case.expected)})) < {_float(case.tolerance)});\n"
        return f"  assert.deepEqual({call}, {self.value(case.expected, p.return_type)});\n"

    def tests(self, p):
        return (self.preamble + "\n\nfunction test() {\n" + f"  let candidate = {p.name};\n"
                + "".join(self.assertion(p, c) for c in p.cases) + "}\n\ntest();\n")

    def oracle_completion(self, p, cases=None):
        names = [self.param_name(n) for n in p.params]
        body = ""
        for c in cases if cases is not None else p.cases:
            args = "[" + ", ".join(self.value(v, t) for v, t in zip(c.args, p.param_types)) + "]"
            body += (f"  if (JSON.stringify([{', '.join(names)}]) === JSON.stringify({args})) "
                     f"return {self.value(c.expected, p.return_type)};\n")
        return body + '  throw new Error("no such case");\n}\n'


class TypeScript(JavaScript):
    code = "ts"
    stop_tokens = ("\nfunction ", "\n/*", "\n//", "\nclass")
    preamble = "declare var require: any;\nconst assert = require('node:assert');\n"

    def signature(self, p):
        params = ", ".join(f"{self.param_name(n)}: {self.type(t)}" for n, t in zip(p.params, p.param_types))
        return f"function {p.name}({params}): {self.type(p.return_type)} {{\n"


# ------------------------------------------------------------------ Bash
def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


class Bash(Language):
    code = "sh"
    comment = "#"
    stop_tokens = ("\n}",)

    def type(self, t):
        kind = t[0]
        if kind in ("int", "float", "str", "bool"):
            return {"int": "an integer", "float": "a floating point", "str": "a string", "bool": "a boolean"}[kind]
        if kind == "optional":
            return self.type(t[1]) + " (empty for None)"
        if kind in ("list", "tuple"):
            inner = t[1] if kind == "list" else None
            if inner is not None and inner[0] in ("list", "tuple"):
                return "a newline-separated, space-separated list"
            if inner is not None and inner[0] == "dict" or (kind == "tuple" and any(x[0] in ("list", "tuple", "dict")
                                                                                      for x in t[1])):
                raise Untranslatable("a nested structure for Bash")
            return "a space-separated list"
        if kind == "dict":
            if t[2][0] in ("list", "tuple", "dict"):
                raise Untranslatable("a dict of structures for Bash")
            return "a two column CSV in key,value order"
        raise Untranslatable(f"no Bash form for {t}")

    def text(self, v, t) -> str:
        kind = t[0]
        if v is None:
            return ""
        if kind == "optional":
            return self.text(v, t[1])
        if kind == "bool" or isinstance(v, bool):
            return "true" if v else "false"
        if kind == "float":
            return _float(v)
        if kind in ("int", "str"):
            return str(v)
        if kind in ("list", "tuple"):
            types = t[1] if kind == "tuple" else [t[1]] * len(v)
            nested = any(y[0] in ("list", "tuple") for y in types)
            return ("\n" if nested else " ").join(self.text(x, y) for x, y in zip(v, types))
        if kind == "dict":
            return "\n".join(f"{self.text(k, t[1])},{self.text(x, t[2])}" for k, x in v.items())
        raise Untranslatable(f"no Bash form for {v!r}")

    def value(self, v, t):
        return _sh_quote(self.text(v, t).rstrip("\n"))

    def shown(self, v, t):
        return self.text(v, t).rstrip("\n").replace("\n", "\n# ")

    def call(self, p, args):
        return f"{p.name} " + " ".join(self.value(v, t) for v, t in zip(args, p.param_types))

    def prompt(self, p):
        params = "".join(f"# ${i} is {self.type(t)}\n" for i, t in enumerate(p.param_types, 1))
        return ("#!/bin/bash\n" + self.comment_block(p) + "#\n" + params + f"{p.name}() {{\n")

    def assertion(self, p, case):
        call = "$(candidate " + " ".join(self.value(v, t) for v, t in zip(case.args, p.param_types)) + ")"
        if case.tolerance is not None:
            return (f"    awk -v got=\"{call}\" -v want={_sh_quote(_float(case.expected))} "
                    f"'BEGIN {{ d = got - want; if (d < 0) d = -d; exit !(got != \"\" && d < "
                    f"{_float(case.tolerance)}) }}' || exit 1\n")
        return f"    [[ {call} = {self.value(case.expected, p.return_type)} ]] || exit 1\n"

    def tests(self, p):
        return ("}\n\ncandidate() {\n" + f'    {p.name} "$@"\n' + "}\n\nset -e\nrun_test() {\n"
                + "".join(self.assertion(p, c) for c in p.cases) + "}\n\nrun_test\n")

    def oracle_completion(self, p, cases=None):
        body = ""
        for c in cases if cases is not None else p.cases:
            cond = " && ".join(f'"${i}" == {self.value(v, t)}' for i, (v, t) in enumerate(zip(c.args, p.param_types), 1))
            body += (f"    if [[ {cond or '1 == 1'} ]]; then printf '%s\\n' "
                     f"{self.value(c.expected, p.return_type)}; return 0; fi\n")
        return body + "    return 1\n"


# ------------------------------------------------------------------ PHP
def _php_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _has_float(t) -> bool:
    return t == FLOAT or (len(t) > 1 and any(_has_float(x) for x in (t[1] if t[0] == "tuple" else t[1:])))


class Php(Language):
    code = "php"
    stop_tokens = ("\nfunction", "\n?>", "\n//", "\n#")
    # PHP's own functions that HumanEval entry points are named after (checked with function_exists, PHP 8.2):
    # they cannot be declared again.
    builtins = frozenset({"strlen"})

    def check_types(self, p):
        if p.name.lower() in self.builtins:
            raise Untranslatable(f"{p.name} is a PHP built-in function (cannot be redeclared)")

    def type(self, t):
        return "mixed"

    def value(self, v, t):
        kind = t[0]
        if v is None:
            return "null"
        if kind == "optional":
            return self.value(v, t[1])
        if kind == "bool" or isinstance(v, bool):
            return "true" if v else "false"
        if kind == "int":
            return _int(v, "PHP")
        if kind == "float":
            return _float(v)
        if kind == "str":
            return _php_string(v)
        if kind in ("list", "tuple"):
            types = t[1] if kind == "tuple" else [t[1]] * len(v)
            return "array(" + ", ".join(self.value(x, y) for x, y in zip(v, types)) + ")"
        if kind == "dict":
            return "array(" + ", ".join(f"{self.value(k, t[1])} => {self.value(x, t[2])}" for k, x in v.items()) + ")"
        raise Untranslatable(f"no PHP value for {v!r}")

    def call(self, p, args):
        return f"{p.name}({self.args(p, args)})"

    def prompt(self, p):
        return ("<?php\n" + self.comment_block(p) + f"function {p.name}("
                + ", ".join("$" + n for n in p.params) + ") {\n")

    def assertion(self, p, case):
        call = f"candidate({self.args(p, case.args)})"
        if case.tolerance is not None:
            return (f"    if (abs({call} - {_float(case.expected)}) >= {_float(case.tolerance)}) "
                    '{ throw new Exception("Test failed!"); }\n')
        # strict comparison, except where floats are involved (Python's 2 == 2.0)
        op = "!=" if _has_float(p.return_type) else "!=="
        return f"    if ({call} {op} {self.value(case.expected, p.return_type)}) {{ throw new Exception(\"Test failed!\"); }}\n"

    def tests(self, p):
        return ("function candidate(...$args) {\n" + f"    return {p.name}(...$args);\n" + "}\n\n"
                "function test(): void {\n" + "".join(self.assertion(p, c) for c in p.cases) + "}\n\ntest();\n")

    def oracle_completion(self, p, cases=None):
        names = ["$" + n for n in p.params]
        body = ""
        for c in cases if cases is not None else p.cases:
            args = "array(" + ", ".join(self.value(v, t) for v, t in zip(c.args, p.param_types)) + ")"
            body += f"    if (array({', '.join(names)}) === {args}) return {self.value(c.expected, p.return_type)};\n"
        return body + '    throw new Exception("no such case");\n}\n'


# ------------------------------------------------------------------ C#
class CSharp(Java):
    code = "cs"
    keywords = frozenset({"operator", "string", "char", "int", "long", "float", "double", "bool", "object", "new",
                          "class", "base", "params", "ref", "out", "in", "is", "as", "event", "lock", "fixed",
                          "checked", "decimal", "default", "delegate", "internal", "namespace", "this", "typeof"})
    stop_tokens = ("\n    }\n",)

    def function_name(self, p):
        return _camel(p.name, upper_first=True)

    def param_name(self, name):
        return "@" + name if name in self.keywords else name

    def type(self, t, boxed=False):
        kind = t[0]
        if kind in ("int", "float", "str", "bool"):
            return {"int": "long", "float": "double", "str": "string", "bool": "bool"}[kind]
        if kind == "list":
            return f"List<{self.type(t[1])}>"
        if kind == "tuple":
            return "Tuple<" + ", ".join(self.type(x) for x in t[1]) + ">"
        if kind == "dict":
            return f"Dictionary<{self.type(t[1])},{self.type(t[2])}>"
        if kind == "optional":
            inner = self.type(t[1])
            return inner + "?" if t[1][0] in ("int", "float", "bool") else inner   # reference types hold null
        raise Untranslatable(f"no C# type for {t}")

    def value(self, v, t):
        kind = t[0]
        if kind == "optional":
            return "null" if v is None else self.value(v, t[1])
        if kind == "int":
            return _int(v, "C#") + "L"
        if kind == "float":
            return _float(v) + "d"
        if kind == "str":
            return _c_string(v)
        if kind == "bool":
            return "true" if v else "false"
        if kind == "list":
            return f"new {self.type(t)}(new {self.type(t[1])}[]{{" + ", ".join(self.value(x, t[1]) for x in v) + "})"
        if kind == "tuple":
            return f"Tuple.Create(" + ", ".join(
                f"({self.type(y)}){self.value(x, y)}" for x, y in zip(v, t[1])) + ")"
        if kind == "dict":
            return f"new {self.type(t)}{{" + ", ".join(
                f"{{{self.value(k, t[1])}, {self.value(x, t[2])}}}" for k, x in v.items()) + "}"
        raise Untranslatable(f"no C# value for {v!r}")

    def prompt(self, p):
        params = ", ".join(f"{self.type(t)} {self.param_name(n)}" for n, t in zip(p.params, p.param_types))
        return ("using System;\nusing System.Numerics;\nusing System.Diagnostics;\nusing System.Collections;\n"
                "using System.Collections.Generic;\nusing System.Linq;\nusing System.Text;\n"
                "using System.Security.Cryptography;\nclass Problem {\n" + self.comment_block(p, "    ")
                + f"    public static {self.type(p.return_type)} {self.function_name(p)}({params}) {{\n")

    def _equal(self, left, right, t):
        return f"Same({left}, {right})"

    def assertion(self, p, case):
        call = self.call(p, case.args)
        if case.tolerance is not None:
            cond = f"Math.Abs({call} - ({_float(case.expected)}d)) < {_float(case.tolerance)}d"
        else:
            cond = self._equal(call, self.value(case.expected, p.return_type), p.return_type)
        return f'    if (!({cond})) throw new Exception("Test failed!");\n'

    def tests(self, p):
        # Lists and dictionaries compare by reference in C#: Same compares them (and tuples of them) by content.
        same = ("    static bool Same(object a, object b) {\n"
                "        if (a == null || b == null) return a == null && b == null;\n"
                "        if (a is IDictionary && b is IDictionary) {\n"
                "            var x = (IDictionary)a; var y = (IDictionary)b;\n"
                "            if (x.Count != y.Count) return false;\n"
                "            foreach (var k in x.Keys) if (!y.Contains(k) || !Same(x[k], y[k])) return false;\n"
                "            return true;\n"
                "        }\n"
                "        if (a is string || b is string) return a.Equals(b);\n"
                "        if (a is IEnumerable && b is IEnumerable) {\n"
                "            var x = ((IEnumerable)a).Cast<object>().ToList(); var y = ((IEnumerable)b).Cast<object>().ToList();\n"
                "            return x.Count == y.Count && x.Zip(y, Same).All(s => s);\n"
                "        }\n"
                "        if (a is ITuple && b is ITuple) {\n"
                "            var x = (ITuple)a; var y = (ITuple)b;\n"
                "            if (x.Length != y.Length) return false;\n"
                "            for (int i = 0; i < x.Length; i++) if (!Same(x[i], y[i])) return false;\n"
                "            return true;\n"
                "        }\n"
                "        return a.Equals(b);\n"
                "    }\n")
        return ("    }\n" + same.replace("ITuple", "System.Runtime.CompilerServices.ITuple")
                + "    public static void Main(string[] args) {\n"
                + "".join(self.assertion(p, c) for c in p.cases) + "    }\n\n}\n")

    def oracle_completion(self, p, cases=None):
        body = ""
        names = [self.param_name(n) for n in p.params]
        for c in cases if cases is not None else p.cases:
            cond = " && ".join(self._equal(n, self.value(v, t), t) for n, v, t in zip(names, c.args, p.param_types))
            body += f"        if ({cond or 'true'}) return {self.value(c.expected, p.return_type)};\n"
        return body + '        throw new Exception("no such case");\n'


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (Cpp(), Java(), TypeScript(), JavaScript(), Bash(),
                                                                Php(), CSharp())}


def translate(p: ParsedProblem, language: str) -> dict:
    """MultiPL-E's row for this problem: {name, language, prompt, tests, stop_tokens}; or Untranslatable."""
    lang = LANGUAGES[language]
    lang.check_types(p)
    for case in p.cases:   # every value renders (e.g. no integer beyond 64 bits)
        lang.args(p, case.args)
        lang.value(case.expected, p.return_type)
    return {"name": p.multipl_e_name, "language": language, "prompt": lang.prompt(p), "tests": lang.tests(p),
            "stop_tokens": list(lang.stop_tokens)}

