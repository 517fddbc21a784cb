"""The house's doors (README: Architecture), read from the source with ``ast``: every import,
module- or function-level, except those under ``if TYPE_CHECKING``.

- The gateway reaches jobs only through the job client: it imports none of a job's internals
  (its steps, streams, engine, worker, backends, tasks, placement, result cache).
- ``inference`` never imports ``gateway`` or ``dashboard``; nothing imports ``dashboard`` but
  ``config`` (its URLs); only ``inference/backends/`` imports torch.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What the gateway may not import from ``inference``: the job path goes through
#: ``inference.client`` (and the stream's format, ``inference.jobstream``).
JOB_INTERNALS = (
    "inference.jobs",
    "inference.streams",
    "inference.store",
    "inference.engine",
    "inference.batching",
    "inference.worker",
    "inference.backends",
    "inference.tasks",
    "inference.affinity",
    "inference.cache",
    "inference.selectors",
)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in a file, TYPE_CHECKING blocks left out."""

    def visit(node: ast.AST) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.If) and _type_checking(node):
            for branch in node.orelse:
                yield from visit(branch)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(ast.parse(path.read_text(), filename=str(path)))


def offenders(package: str, forbidden: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if "migrations" in path.parts or relative.startswith(skip):
            continue
        for line, module in imports(path):
            if any(module == name or module.startswith(name + ".") for name in forbidden):
                found.append(f"{relative}:{line} imports {module}")
    return sorted(set(found))


def test_the_gateway_reaches_jobs_only_through_the_job_client() -> None:
    assert offenders("gateway", JOB_INTERNALS) == []


def test_inference_never_imports_the_gateway_or_the_dashboard() -> None:
    assert offenders("inference", ("gateway", "dashboard")) == []


def test_nothing_but_config_imports_the_dashboard() -> None:
    assert offenders("gateway", ("dashboard",)) == []
    assert offenders("inference", ("dashboard",)) == []


def test_only_the_backends_import_torch() -> None:
    assert offenders("gateway", ("torch",)) == []
    assert offenders("dashboard", ("torch",)) == []
    assert offenders("config", ("torch",)) == []
    assert offenders("inference", ("torch",), skip=("inference/backends/",)) == []


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    """The reader itself: a function-level import counts, a TYPE_CHECKING one does not."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from inference.engine import Engine\n"
        "def f():\n"
        "    from inference.jobs.create import job_create\n"
    )
    found = [module for _, module in imports(source)]
    assert "inference.jobs.create" in found
    assert "inference.engine" not in found
