"""The edge runtime's shape as tests: layers flow one way, no import cycle, no workstation
package needed, and the runtime installs and runs with its own extras alone."""
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """import-linter's layers contract (cli > service > plant > line > vision > config) and the
    ban on train/, calibration/, torch and tqdm, as written in pyproject.toml."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def strongly_connected(graph, modules):
    """Tarjan's algorithm over direct imports: every group of modules that import each other."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            groups.append(group)

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycle_anywhere_in_edge():
    graph = grimp.build_graph("edge")
    modules = set(graph.modules)
    cycles = [sorted(g) for g in strongly_connected(graph, modules) if len(g) > 1]
    assert cycles == []


def test_cycle_finder_finds_a_cycle():
    """The check above must be able to fail: two modules importing each other are found."""
    class Graph:
        imports = {"a": {"b"}, "b": {"a"}, "c": {"a"}}

        def find_modules_directly_imported_by(self, module):
            return self.imports[module]

    groups = strongly_connected(Graph(), {"a", "b", "c"})
    assert {"a", "b"} in groups and {"c"} in groups


def test_every_test_the_docs_name_exists():
    """README and docs/ back each claim with a test name; a renamed or deleted test must not
    leave a claim pointing at nothing."""
    import ast
    import re

    defined = {}
    for path in (REPO / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    named = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for line in doc.read_text().splitlines():
            current = None
            for file, name in re.findall(r"`(?:tests/)?(test_\w+\.py)?::(test_\w+)`", line):
                current = file or current
                named.append((doc.name, current, name))
    assert len(named) > 30
    missing = [(doc, file, name) for doc, file, name in named if file is None or name not in defined.get(file, ())]
    assert missing == []
