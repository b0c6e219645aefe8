"""docs/configuration.md documents every environment variable the settings read, and nothing else.

The settings module is parsed with `ast`, not imported: no database, no worker, no Django setup.
Every call that reads the environment is collected: the project's helpers (env_str, env_int,
env_bool, env_float, env_list, env_postgres, env_broker_url, ... from the config helper module),
django-environ's `env("X")` / `env.str("X")` / `env.bool("X")` / ..., and `os.environ.get("X")`,
`os.getenv("X")`, `os.environ["X"]`, `"X" in os.environ`. A helper that reads fixed names of
its own (rather than the name it is given) is parsed too, from its module's file, wherever the
package layout puts it. The names are compared with the first column of the table under the
heading "Environment variables the settings read" in docs/configuration.md, both ways.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ROOT / "orchestrator" / "settings.py"
DOC = ROOT / "docs" / "configuration.md"
SECTION = "## Environment variables the settings read"
# Where the env helpers live: after the package re-cut, then before it (whichever exists).
HELPER_MODULES = {
    "orchestrator.infra.config": ROOT / "orchestrator" / "infra" / "config.py",
    "orchestrator.config": ROOT / "orchestrator" / "config.py",
}
# django-environ's readers: env("X"), env.str("X"), env.bool("X"), ...
ENVIRON_METHODS = {
    "str",
    "bool",
    "int",
    "float",
    "list",
    "tuple",
    "dict",
    "json",
    "url",
    "db",
    "db_url",
    "cache",
    "cache_url",
    "email",
    "email_url",
    "search_url",
    "path",
    "get_value",
    "parse_value",
}


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_os_environ(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    ) or (isinstance(node, ast.Name) and node.id == "environ")


def _helper_file(module: str) -> Path | None:
    """The file of the env helper module `module` names, wherever it is now (it moved once)."""
    if module not in HELPER_MODULES:
        return None
    candidates = [HELPER_MODULES[module], *HELPER_MODULES.values()]
    return next((path for path in candidates if path.exists()), None)


class Reads(ast.NodeVisitor):
    """Collects the environment variable names a module reads with literal names.

    `helpers` maps a local name (a function, or a module alias) to the helper module's file.
    Calls to a helper are reads of their first argument; the helper's own body is scanned
    for fixed names separately (see `helper_reads`)."""

    def __init__(self, helpers: dict[str, Path], env_names: set[str]) -> None:
        self.helpers = helpers
        self.env_names = env_names  # names bound to environ.Env() in this module
        self.names: dict[str, int] = {}
        self.dynamic: list[int] = []  # lines that read a name that is not a string literal
        self.helper_calls: dict[Path, set[str]] = {}

    def _read(self, node: ast.AST | None, line: int) -> None:
        name = _literal(node)
        if name is None:
            self.dynamic.append(line)
        else:
            self.names.setdefault(name, line)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        first = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg in ("name", "var")), None)
        if isinstance(func, ast.Name) and func.id in self.helpers:
            self._read(first, node.lineno)
            self.helper_calls.setdefault(self.helpers[func.id], set()).add(func.id)
        elif isinstance(func, ast.Name) and func.id in self.env_names:
            self._read(first, node.lineno)  # env("X")
        elif isinstance(func, ast.Attribute):
            owner = func.value
            if isinstance(owner, ast.Name) and owner.id in self.helpers:  # config.env_int("X")
                self._read(first, node.lineno)
                self.helper_calls.setdefault(self.helpers[owner.id], set()).add(func.attr)
            elif isinstance(owner, ast.Name) and owner.id in self.env_names and func.attr in ENVIRON_METHODS:
                self._read(first, node.lineno)  # env.str("X"), env.bool("X"), ...
            elif _is_os_environ(owner) and func.attr in ("get", "setdefault", "pop"):
                self._read(first, node.lineno)  # os.environ.get("X")
            elif isinstance(owner, ast.Name) and owner.id == "os" and func.attr == "getenv":
                self._read(first, node.lineno)  # os.getenv("X")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_os_environ(node.value):
            self._read(node.slice, node.lineno)  # os.environ["X"]
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and any(
            _is_os_environ(c) for c in node.comparators
        ):
            self._read(node.left, node.lineno)  # "X" in os.environ
        self.generic_visit(node)


def _env_instances(tree: ast.Module) -> set[str]:
    """Names bound to `environ.Env()` (or imported as `env` from the helper module)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if (isinstance(func, ast.Attribute) and func.attr == "Env") or (
                isinstance(func, ast.Name) and func.id == "Env"
            ):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _helpers_imported(tree: ast.Module) -> tuple[dict[str, Path], set[str]]:
    """Local names that come from the env helper module: its functions, the module itself
    (`from orchestrator.infra import config`), and its `env` (an environ.Env)."""
    helpers: dict[str, Path] = {}
    env_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                function_of = _helper_file(node.module)
                module_alias = _helper_file(f"{node.module}.{alias.name}")
                if function_of is not None and alias.name == "env":
                    env_names.add(local)
                elif function_of is not None:
                    helpers[local] = function_of
                elif module_alias is not None:
                    helpers[local] = module_alias
        elif isinstance(node, ast.Import):
            for alias in node.names:
                path = _helper_file(alias.name)
                if path is not None and alias.asname:
                    helpers[alias.asname] = path
    return helpers, env_names


def helper_reads(path: Path, functions: set[str]) -> dict[str, int]:
    """Fixed names the given helper functions (and the helpers they call) read themselves."""
    tree = ast.parse(path.read_text(), filename=str(path))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    env_names = _env_instances(tree)
    found: dict[str, int] = {}
    seen: set[str] = set()
    todo = [f for f in functions if f in defs]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        visitor = Reads({}, env_names)
        visitor.visit(defs[name])
        found.update({k: v for k, v in visitor.names.items() if k not in found})
        # Helpers calling helpers (env_postgres -> env_db): follow them inside the module.
        for call in ast.walk(defs[name]):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in defs:
                todo.append(call.func.id)
    return found


def settings_env_names() -> tuple[set[str], list[int]]:
    tree = ast.parse(SETTINGS.read_text(), filename=str(SETTINGS))
    helpers, env_names = _helpers_imported(tree)
    visitor = Reads(helpers, env_names | _env_instances(tree))
    visitor.visit(tree)
    names = set(visitor.names)
    for path, functions in visitor.helper_calls.items():
        names |= set(helper_reads(path, functions))
    return names, visitor.dynamic


def documented_names() -> set[str]:
    lines = DOC.read_text().splitlines()
    assert SECTION in lines, f"{DOC.relative_to(ROOT)} has no heading {SECTION!r}"
    names: set[str] = set()
    rows = 0
    for line in lines[lines.index(SECTION) + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            continue
        first = line.strip("|").split("|")[0].strip()
        if set(first) <= set("-: ") or first.lower() == "variable":
            continue  # the separator and the header
        rows += 1
        found = re.findall(r"`([A-Z][A-Z0-9_]*)`", first)
        assert len(found) == 1, f"{DOC.relative_to(ROOT)}: one variable per row, got {first!r}"
        assert found[0] not in names, f"{DOC.relative_to(ROOT)}: {found[0]} has two rows"
        names.add(found[0])
    assert rows, f"{DOC.relative_to(ROOT)}: no table rows under {SECTION!r}"
    return names


def test_parser_sees_the_ways_settings_read_the_environment() -> None:
    source = (
        "import os\n"
        "import environ\n"
        "from orchestrator.infra.config import env_int, env_postgres\n"
        "env = environ.Env()\n"
        "A = env_int('A_INT', 1)\n"
        "B = env('B_PLAIN')\n"
        "C = env.bool('C_BOOL', default=False)\n"
        "D = os.environ.get('D_GET')\n"
        "E = os.environ['E_ITEM']\n"
        "F = 'F_IN' in os.environ\n"
        "G = os.getenv('G_GETENV')\n"
        "H = env_postgres('H_DB', 'postgres://x')\n"
    )
    tree = ast.parse(source)
    helpers, env_names = _helpers_imported(tree)
    visitor = Reads(helpers, env_names | _env_instances(tree))
    visitor.visit(tree)
    assert set(visitor.names) == {"A_INT", "B_PLAIN", "C_BOOL", "D_GET", "E_ITEM", "F_IN", "G_GETENV", "H_DB"}
    assert not visitor.dynamic


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    read, dynamic = settings_env_names()
    assert not dynamic, (
        f"orchestrator/settings.py reads environment variables whose names are not string literals "
        f"(lines {dynamic}): name them literally so they can be documented"
    )
    assert read, "found no environment reads in orchestrator/settings.py: has the way it reads them changed?"
    documented = documented_names()
    undocumented = sorted(read - documented)
    stale = sorted(documented - read)
    problems = []
    if undocumented:
        problems.append(f"read by orchestrator/settings.py but missing from docs/configuration.md: {undocumented}")
    if stale:
        problems.append(f"documented in docs/configuration.md but not read by orchestrator/settings.py: {stale}")
    assert not problems, "; ".join(problems)


def test_parser_follows_helpers_that_read_fixed_names(tmp_path: Path) -> None:
    helper = tmp_path / "config.py"
    helper.write_text(
        "import os\n"
        "import environ\n"
        "env = environ.Env()\n"
        "def env_db(name, default):\n"
        "    return env.str(name, default=default), os.environ.get('PGSSLMODE_FIXED')\n"
        "def env_postgres(name, default):\n"
        "    return env_db(name, default)\n"
    )
    assert helper_reads(helper, {"env_postgres"}) == {"PGSSLMODE_FIXED": 5}
