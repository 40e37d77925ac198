"""The conda env files cannot be solved here (no channel is reachable); their pip pins must match pyproject."""

import re
import tomllib

import pytest
import yaml
from helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins(requirements) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", req.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


CORE = pins(PYPROJECT["dependencies"])
EXTRAS = {name: pins(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}

ENVS = {
    "workflow/envs/train.yml": ["train", "qlora"],
    "workflow/envs/generate.yml": ["train"],
    "workflow/envs/analysis.yml": ["analysis"],
    "environment.yml": ["train", "analysis", "workflow"],
}


def env_pip(path) -> list[str]:
    env = yaml.safe_load((REPO / path).read_text())
    assert "python=3.11" in env["dependencies"]
    (pip,) = [d for d in env["dependencies"] if isinstance(d, dict)]
    return pip["pip"]


@pytest.mark.parametrize(("path", "extras"), ENVS.items())
def test_env_pins_match_pyproject(path, extras):
    expected = dict(CORE)
    for extra in extras:
        expected.update(EXTRAS[extra])
    assert pins(env_pip(path)) == expected


@pytest.mark.parametrize("path", ENVS)
def test_env_installs_the_project(path):
    assert any(line.startswith("--editable") for line in env_pip(path))


def test_every_dependency_is_pinned_exactly():
    for req in PYPROJECT["dependencies"] + [
        r for reqs in PYPROJECT["optional-dependencies"].values() for r in reqs
    ]:
        assert "==" in req, req


def test_every_rule_names_an_existing_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env}"
