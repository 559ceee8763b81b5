"""Record the Python API surface of one TensorRT release from its pybind11 sources.

    python tests/tensorrt_api/extract.py <TensorRT git checkout> <tag> > tests/tensorrt_api/<version>.json

It reads `python/src/**/*.cpp` at the tag (git show, no checkout needed) and writes every bound
class (methods with their keyword names, properties, read-only properties, base class) and
every enum (member names in declaration order). The stub `tensorrt` modules in this folder are
made from these files, so code that calls a name a release does not have fails here as it
would on that release's Jetson.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

BINDING = re.compile(r'py::(class_|enum_)<([^;{]*?)>\s*(?:\w+\s*)?[({]\s*(\w+)\s*,\s*"(\w+)"')
MEMBER = re.compile(r'\.(def|def_static|def_property|def_property_readonly|def_readwrite|def_readonly|value)\(\s*"(\w+)"')
INIT = re.compile(r'\.def\(\s*py::init')
KEYWORD = re.compile(r'"(\w+)"_a')


def sources(repo: str, tag: str) -> list:
    names = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", tag, "python/src"],
                           capture_output=True, text=True, check=True).stdout.split()
    return [subprocess.run(["git", "-C", repo, "show", f"{tag}:{name}"], capture_output=True, text=True,
                           check=True).stdout for name in names if name.endswith(".cpp")]


def strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    return re.sub(r'//[^\n"]*\n', "\n", code)


def statement(code: str, start: int) -> str:
    """From `start` to the `;` that closes the statement (outside brackets and strings)."""
    depth, i, in_string = 0, start, False
    while i < len(code):
        c = code[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == ";" and depth <= 0:
            return code[start:i]
        i += 1
    return code[start:]


def members(body: str) -> dict:
    found = {"methods": {}, "properties": [], "readonly": [], "values": []}
    for match in MEMBER.finditer(body):
        kind, name = match.groups()
        if kind == "value":
            found["values"].append(name)
        elif kind in ("def", "def_static"):
            args = balanced(body, match.start() + len(kind) + 1)
            found["methods"][name] = KEYWORD.findall(args)
        elif kind in ("def_property", "def_readwrite"):
            found["properties"].append(name)
        else:
            found["readonly"].append(name)
    for match in INIT.finditer(body):
        found["methods"]["__init__"] = KEYWORD.findall(balanced(body, match.start() + 4))
    return found


def balanced(text: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:i]
    return text[open_paren + 1:]


def surface(repo: str, tag: str) -> dict:
    classes, enums = {}, {}
    for code in map(strip_comments, sources(repo, tag)):
        variables = {}  # `py::class_<X> binding{m, "X"}` then `binding.def(...)`
        for match in BINDING.finditer(code):
            kind, template, scope, name = match.groups()
            body = statement(code, match.start())
            declared = re.match(r"py::\w+<[^;{]*?>\s*(\w+)\s*[({]", code[match.start():])
            if declared:
                variables[declared.group(1)] = name
            found = members(body)
            if kind == "enum_":
                enums[name] = found["values"]
                if scope in variables and ".export_values()" in body:  # members also on the class
                    classes[variables[scope]].setdefault("exported_enums", []).append(name)
                continue
            bases = [b.strip() for b in template.split(",")[1:]]
            entry = classes.setdefault(name, {"methods": {}, "properties": [], "readonly": [], "bases": []})
            entry["bases"] = [b for b in bases if b.startswith("I") and not b.startswith("std")] or entry["bases"]
            merge(entry, found)
        for variable, name in variables.items():  # members added to a named binding later on
            for match in re.finditer(rf"\b{variable}\s*\.\s*(?=def)", code):
                merge(classes[name], members("." + statement(code, match.end())))
    for entry in classes.values():
        entry["properties"] = sorted(set(entry["properties"]))
        entry["readonly"] = sorted(set(entry["readonly"]))
    return {"tag": tag, "classes": dict(sorted(classes.items())), "enums": dict(sorted(enums.items()))}


def merge(entry: dict, found: dict) -> None:
    entry["methods"].update(found["methods"])
    entry["properties"] += found["properties"]
    entry["readonly"] += found["readonly"]


if __name__ == "__main__":
    json.dump(surface(sys.argv[1], sys.argv[2]), sys.stdout, indent=1, sort_keys=False)
    print()
