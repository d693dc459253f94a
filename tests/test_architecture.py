"""The import rules of ARCHITECTURE.md, enforced: arrows point down, roles never import one another.

Every ``import`` of every module under walstream/ is read (function-level
and TYPE_CHECKING imports included), so a rule cannot be dodged by a lazy
import. A failure names the module, the import and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "walstream"

# Layers from the bottom up; a module may import its own layer and those below.
LAYERS: list[tuple[str, set[str]]] = [
    ("vocabulary", {"walstream.lsn", "walstream.errors", "walstream.pgtypes"}),
    ("sans-IO", {"walstream.protocol", "walstream.wal"}),
    ("storage and client", {"walstream.storage", "walstream.client"}),
    ("roles", {"walstream.receiver", "walstream.startup", "walstream.sender"}),
    ("compositions", {"walstream.standby", "walstream.relay", "walstream.monitor"}),
    ("edges", {"walstream.cli", "walstream.demo", "walstream.embedded", "walstream"}),
]
# Side by side, never importing one another: what two of them share lives below.
SIBLINGS: list[set[str]] = [
    {"walstream.protocol", "walstream.wal"},
    {"walstream.storage", "walstream.client"},
    LAYERS[3][1],
    LAYERS[4][1],
]


def group_name(group: set[str]) -> str:
    return " and ".join(sorted(group)) + " never import one another"


# What the sans-IO layers must never touch: sockets, event loops, files, clocks, threads.
IO_MODULES = {
    "asyncio", "socket", "ssl", "selectors", "select", "os", "io", "time", "threading",
    "concurrent", "subprocess", "pathlib", "shutil", "tempfile", "signal", "uvloop",
}  # fmt: skip
CLI_ONLY = {"argparse", "getpass", "signal", "shlex"}
# The one sans-IO module allowed to look around: it picks the compiled or the
# pure WAL scan once, at import (an environment variable, the extension's file
# time). What it picks does no I/O.
IO_EXEMPT = {"walstream.wal.kernel"}
# The sans-IO cores that live inside a role, beside the shell that drives them.
SANS_IO_IN_ROLES = {
    "walstream.receiver.policy",
    "walstream.sender.walsender",
    "walstream.sender.syncrep",
    "walstream.sender.lag",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append(".".join([*base, *([node.module] if node.module else [])]))
            elif node.module == "walstream":  # a submodule, or a name of the package's own
                for alias in node.names:
                    sub = PACKAGE / alias.name
                    is_module = sub.is_dir() or sub.with_suffix(".py").is_file()
                    found.append(f"walstream.{alias.name}" if is_module else "walstream")
            else:
                found.append(node.module or "")
    return found


def _prefix_of(module: str) -> str | None:
    """The longest layer prefix naming ``module`` (``walstream`` itself only exactly)."""
    matches = [
        p
        for _, prefixes in LAYERS
        for p in prefixes
        if module == p or (p != "walstream" and module.startswith(p + "."))
    ]
    return max(matches, key=len) if matches else None


def _layer(prefix: str) -> int:
    return next(i for i, (_, prefixes) in enumerate(LAYERS) if prefix in prefixes)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: _module_name(p))
def test_imports_point_down(path: Path) -> None:
    me = _module_name(path)
    # A role's ``python -m`` entry point is an edge: it only runs the role's command line.
    mine = "walstream.cli" if me.endswith(".__main__") else _prefix_of(me)
    assert mine is not None, f"{me} is in no layer of ARCHITECTURE.md"
    my_layer = _layer(mine)
    for target in _imports(path):
        top = target.split(".")[0]
        if (my_layer <= 1 and me not in IO_EXEMPT) or me in SANS_IO_IN_ROLES:
            assert top not in IO_MODULES, f"{me} imports {target}: the sans-IO layers do no I/O"
        if mine not in ("walstream.cli", "walstream.demo", "walstream"):
            assert top not in CLI_ONLY, f"{me} imports {target}: command lines live in cli/"
        if top != "walstream" or target == "walstream":
            continue
        theirs = _prefix_of(target)
        assert theirs is not None, f"{me} imports {target}, which is in no layer"
        layer = _layer(theirs)
        assert layer <= my_layer, (
            f"{me} ({LAYERS[my_layer][0]}) imports {target} ({LAYERS[layer][0]}): arrows point down"
        )
        for group in SIBLINGS:
            if mine in group and theirs in group:
                assert theirs == mine, f"{me} imports {target}: {group_name(group)}"


def test_every_layer_has_a_module() -> None:
    names = {_module_name(p) for p in _modules()}
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            assert any(n == prefix or n.startswith(prefix + ".") for n in names), (layer, prefix)


def test_the_sans_io_cores_in_roles_exist() -> None:
    names = {_module_name(p) for p in _modules()}
    assert names >= SANS_IO_IN_ROLES
