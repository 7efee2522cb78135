"""What the README says about installing: pyproject.toml's torch floor is one the installed transformers does not turn
off, and CI (`.ci/run`) runs the README's "Run the tests" lines, with a torch that pyproject.toml admits."""

from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version


ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later


def project_requirement(name: str) -> Requirement:
    """pyproject.toml's requirement on the package `name`."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(requirement for requirement in map(Requirement, dependencies) if requirement.name == name)


def floor(requirement: Requirement) -> Version:
    """The lowest version `requirement` admits by its `>=` bounds."""
    return max(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")


def readme_test_commands() -> list[str]:
    """The commands of the README's "Run the tests" block, comments removed."""
    section = (ROOT / "README.md").read_text().split("## Run the tests", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_torch_floor_is_one_the_installed_transformers_keeps_on():
    # transformers lists no torch among its plain requirements, only under its `torch` extra: pip installs the newest
    # transformers whatever torch is there, and that transformers turns PyTorch off below its own floor.
    wanted = next(
        requirement
        for requirement in map(Requirement, requires("transformers"))
        if requirement.name == "torch" and requirement.marker and requirement.marker.evaluate({"extra": "torch"})
    )
    assert floor(project_requirement("torch")) >= floor(wanted), f"transformers wants {wanted}"


def test_ci_runs_the_readmes_test_lines_with_a_torch_the_project_admits():
    commands = readme_test_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert len(commands) == 3 and all(command in ci_lines for command in commands), commands
    pins = [word.split("==", 1)[1] for command in commands for word in command.split() if word.startswith("torch==")]
    assert len(pins) == 1 and Version(pins[0]) in project_requirement("torch").specifier, pins
