"""The source files a job runs, read from import statements, so that the workflow can make them inputs.

`package_files("cmt.methods", "gst", dir)` is gst.py and every module of cmt.methods it imports, directly or
through another module, at its top or inside a function. Editing one of them then reruns exactly the jobs that
run it. Modules of other packages are not followed: each rule names the packages whose code decides its output.
"""

from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(path: Path, package: str) -> set[str]:
    """The modules of `package` (a dotted name, "cmt.methods") that the file at `path`, a module of that
    package, imports: the package itself for any of them (Python runs its __init__ first), and each submodule
    named."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level <= 1:  # `from ..x` leaves the package
            base = ".".join(filter(None, [package if node.level else "", node.module]))
            # `from cmt.methods import losses` names a submodule, `from cmt.methods import Candidate` a name of
            # __init__: which one is decided by the file that exists
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name == package:
                found.add(name)
            elif name.startswith(f"{package}."):
                found.add(package)
                module = name[len(package) + 1 :].split(".")[0]
                if (path.parent / f"{module}.py").is_file():
                    found.add(f"{package}.{module}")
    return found


def package_files(package: str, module: str, package_dir: Path) -> tuple[Path, ...]:
    """`module`'s file in `package_dir` (the folder of `package`), then, sorted, the file of every module of
    the package it imports, directly or through another one."""
    package_dir = Path(package_dir)

    def path_of(name: str) -> Path:
        return package_dir / ("__init__.py" if name == package else f"{name[len(package) + 1 :]}.py")

    own = f"{package}.{module}"
    if not path_of(own).is_file():
        raise FileNotFoundError(f"{path_of(own)}: no module {own!r}")
    seen, todo = {own}, [own]
    while todo:
        for name in sorted(imported_modules(path_of(todo.pop()), package) - seen):
            seen.add(name)
            todo.append(name)
    return (path_of(own), *sorted(path_of(name) for name in seen - {own}))
