"""The house rules on the package's size, checked: files, functions and classes.

    python scripts/house_rules.py        # prints what breaks a rule, exits 1 if anything does

No file of ``napari_medseg`` over 600 lines, no function over 80, no class over 300.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FILE, MAX_FUNCTION, MAX_CLASS = 600, 80, 300


def breaches(root: Path) -> list[str]:
    """One line per file, function or class of ``root`` that is too long."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root.parent)
        source = path.read_text(encoding="utf-8")
        lines = source.count("\n")
        if lines > MAX_FILE:
            found.append(f"{name}: {lines} lines (max {MAX_FILE})")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if size > limit:
                found.append(f"{name}:{node.lineno} {node.name}: {size} lines (max {limit})")
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent / "napari_medseg"
    found = breaches(root)
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
