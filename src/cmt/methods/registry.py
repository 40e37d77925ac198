"""The method registry: each method module declares its `SPEC` once, and every list of methods derives from it
(the config schema's enums, the CLI's choices, the Phase-3 loss dispatch and the rules the workflow generates).

A method module is any module of this package that defines `SPEC = MethodSpec(...)`; its name must equal the
module's name, so that `src/cmt/methods/<name>.py`, with the modules of this package it imports (`method_files`),
holds the files whose edits rerun that method's jobs.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cmt.runtime.sources import package_files

# Paper families first, then the controls, which never enter the paper's families or its sign tests.
FAMILIES = ("label_generation", "regularization", "baseline", "control")
PAPER_FAMILIES = ("label_generation", "regularization", "baseline")


@dataclass(frozen=True)
class MethodSpec:
    """What the pipeline must know of a method, declared once in its module.

    selects: k is a selection count (k candidates are drawn, one is chosen);
    uses_reward_model: Phase 2 loads the organism's reward model;
    phase3_loss: the method has no Phase-2 labels and is instead a Phase-3 consistency loss on the act_bct pairs.
    """

    name: str
    family: str
    selects: bool = False
    uses_reward_model: bool = False
    phase3_loss: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name!r}: family {self.family!r} is not one of {FAMILIES}")
        if self.phase3_loss and (self.selects or self.uses_reward_model):
            raise ValueError(f"method {self.name!r}: a Phase-3 loss neither selects nor uses a reward model")


def _declares_spec(path: Path) -> bool:
    """Whether the module's top level assigns `SPEC` (read from its source, without importing it)."""
    if not path.is_file():
        return True  # not a plain source file: import it to find out
    assigned = [t for node in ast.parse(path.read_text(), str(path)).body if isinstance(node, ast.Assign)
                for t in node.targets]  # fmt: skip
    return any(isinstance(t, ast.Name) and t.id == "SPEC" for t in assigned)


@functools.cache
def _modules() -> dict[str, ModuleType]:
    import cmt.methods as package

    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        # Only a module that assigns SPEC is imported: a helper such as losses (torch) would otherwise be
        # imported by every Snakemake start, which reads the registry.
        if not _declares_spec(Path(package.__path__[0]) / f"{info.name}.py"):
            continue
        module = importlib.import_module(f"cmt.methods.{info.name}")
        spec = getattr(module, "SPEC", None)
        if spec is None:
            continue
        if spec.name != info.name:
            raise ValueError(
                f"cmt/methods/{info.name}.py declares SPEC.name {spec.name!r}; it must be {info.name!r}"
            )
        found[info.name] = module
    return found


def method_names(
    *, family: str | None = None, selects: bool | None = None, phase3_loss: bool | None = None
) -> list[str]:
    """Registered method names (sorted), optionally only those with the given family or capabilities."""
    return [
        name
        for name, module in _modules().items()
        if (family is None or module.SPEC.family == family)
        and (selects is None or module.SPEC.selects == selects)
        and (phase3_loss is None or module.SPEC.phase3_loss == phase3_loss)
    ]


def get_method(name: str) -> ModuleType:
    modules = _modules()
    if name not in modules:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(modules)}")
    return modules[name]


def get_spec(name: str) -> MethodSpec:
    return get_method(name).SPEC


def prompt_splits(name: str, settings: dict) -> tuple[str, ...]:
    """The splits whose prompts a method labels, in order: its module's `prompt_splits(settings)` where it has
    one, else its PROMPT_SPLIT (a control's own prompts), else the consistency prompts."""
    module = get_method(name)
    if hasattr(module, "prompt_splits"):
        return tuple(module.prompt_splits(settings))
    return (getattr(module, "PROMPT_SPLIT", "consistency"),)


PACKAGE = "cmt.methods"


@functools.cache
def method_files(name: str, package_dir: Path | None = None) -> tuple[Path, ...]:
    """The files of this package that a method's jobs run: its module, and every module of the package it
    imports, directly or through another one (dual_decoding's selection is rejection_sampling's). The workflow
    makes them inputs of the method's jobs, so that editing one reruns exactly the methods that use it.
    `package_dir`: the folder to read them in (the workflow's own src/cmt/methods); default this package's."""
    get_method(name)  # an unknown name fails here, naming the valid ones
    return package_files(PACKAGE, name, Path(package_dir or Path(__file__).parent))
