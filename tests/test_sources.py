"""cmt.runtime.sources: the files a job runs, read from import statements, against the standard library's own
import finder."""

from modulefinder import ModuleFinder
from pathlib import Path

import pytest

import cmt.analysis
from cmt.runtime.sources import imported_modules, package_files

ANALYSIS = Path(cmt.analysis.__file__).parent


@pytest.mark.parametrize("module", sorted(p.stem for p in ANALYSIS.glob("*.py") if p.stem != "__init__"))
def test_package_files_are_the_modules_the_finder_follows(module):
    finder = ModuleFinder(path=[str(ANALYSIS.parents[1])])  # only src/: other packages stay unread
    finder.run_script(str(ANALYSIS / f"{module}.py"))
    imported = {Path(m.__file__) for key, m in finder.modules.items()
                if key == "cmt.analysis" or key.startswith("cmt.analysis.")}  # fmt: skip
    files = package_files("cmt.analysis", module, ANALYSIS)
    assert files[0] == ANALYSIS / f"{module}.py"
    assert set(files) == imported | {files[0]}


def test_imports_inside_functions_relative_ones_and_other_packages(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    for name in ("__init__", "a", "b", "c", "d"):
        (package / f"{name}.py").write_text("")
    (package / "a.py").write_text(
        "import os\nfrom cmt.runtime import io\n\ndef f():\n    from pkg.b import thing\n    from . import c\n"
        "    from pkg import name_of_init\n    from ..other import x\n"
    )
    (package / "c.py").write_text("import pkg.d\n")
    assert imported_modules(package / "a.py", "pkg") == {"pkg", "pkg.b", "pkg.c"}
    assert package_files("pkg", "a", package) == tuple(package / f for f in ("a.py", "__init__.py", "b.py", "c.py",
                                                                               "d.py"))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"no module 'pkg\.nope'"):
        package_files("pkg", "nope", package)
