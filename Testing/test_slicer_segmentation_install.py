"""First-use dependency installation: pinned requirements, one confirmation, torch via PyTorchUtils,
held packages never changed, clear messages when something fails. Slicer's calls are injected fakes."""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "Resources" / "requirements.txt"


def test_requirements_are_pinned_and_cover_the_core_dependencies():
    from GASESegmentationLib.install import HELD, read_requirements

    reqs = read_requirements(REQUIREMENTS)
    assert reqs and all(re.fullmatch(r"\d+(\.\d+)+", r.version) for r in reqs)
    names = {r.name.lower() for r in reqs}
    assert "torch" not in names  # the PyTorch extension provides it
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    core = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in declared}
    held = {h.lower() for h in HELD}
    assert core - held <= names, f"pyproject dependencies missing from requirements.txt: {core - held - names}"
    assert not names & held
    # Exactly one pin per package for this Python (markers select the 3.10 fallbacks).
    assert len(names) == len(reqs)


def test_markers_select_by_python_version(tmp_path):
    from GASESegmentationLib.install import DependencyError, read_requirements

    f = tmp_path / "r.txt"
    f.write_text('a==1.0; python_version >= "3.11"\na==0.9; python_version < "3.11"\n# comment\nb==2.0  # pin\n')
    versions = {r.name: r.version for r in read_requirements(f)}
    assert versions == {"a": "1.0" if sys.version_info >= (3, 11) else "0.9", "b": "2.0"}
    f.write_text("c>=1.0\n")
    with pytest.raises(DependencyError, match="not a pinned requirement"):
        read_requirements(f)


class FakeSlicer:
    """Records what ensure_dependencies asks of Slicer; packages appear in ``installed`` once installed."""

    def __init__(self, installed: dict, torch: bool, accept: bool = True, torch_ok: bool = True,
                 pip_fails: bool = False):
        self.installed = dict(installed)
        self.torch = torch
        self.accept, self.torch_ok, self.pip_fails = accept, torch_ok, pip_fails
        self.asked, self.pip_calls = [], []

    def confirm(self, message, details):
        self.asked.append(details)
        return self.accept

    def install_torch(self):
        self.torch = self.torch_ok
        return self.torch_ok

    def pip_install(self, specs, constraints, no_deps):
        self.pip_calls.append((list(specs), None if constraints is None else Path(constraints).read_text(), no_deps))
        if self.pip_fails:
            raise RuntimeError("pip exited with code 1")
        for spec in specs:
            name, version = spec.split("==")
            self.installed[name] = version

    def run(self, reqs):
        from GASESegmentationLib.install import ensure_dependencies

        return ensure_dependencies(reqs, confirm=self.confirm, install_torch=self.install_torch,
                                   pip_install=self.pip_install, torch_present=lambda: self.torch,
                                   version_of=self.installed.get)


@pytest.fixture
def reqs(tmp_path):
    from GASESegmentationLib.install import read_requirements

    f = tmp_path / "requirements.txt"
    f.write_text("monai==1.6.1\npynrrd==1.1.3\nsafetensors==0.8.0\n")
    return read_requirements(f)


def test_nothing_to_do_asks_nothing(reqs):
    fake = FakeSlicer({"monai": "1.6.1", "pynrrd": "1.1.3", "safetensors": "0.8.0"}, torch=True)
    assert fake.run(reqs) == [] and fake.asked == [] and fake.pip_calls == []


def test_missing_packages_are_installed_after_one_confirmation(reqs):
    fake = FakeSlicer({"pynrrd": "1.1.3", "numpy": "2.4.6", "torch": "2.5.1+cu121", "scipy": "1.17.1"}, torch=False)
    installed = fake.run(reqs)
    assert len(fake.asked) == 1 and "torch (from the PyTorch extension" in fake.asked[0]
    assert "monai==1.6.1" in fake.asked[0] and "pynrrd" not in fake.asked[0]
    assert sorted(installed) == ["monai==1.6.1", "safetensors==0.8.0"]
    (monai_specs, monai_constraints, monai_no_deps), (specs, constraints, no_deps) = fake.pip_calls
    assert monai_specs == ["monai==1.6.1"] and monai_no_deps and monai_constraints is None
    assert specs == ["safetensors==0.8.0"] and not no_deps
    # torch (the PyTorch extension's CUDA build) and Slicer's numpy/scipy are held where they are.
    assert "torch==2.5.1+cu121" in constraints and "numpy==2.4.6" in constraints and "scipy==1.17.1" in constraints


def test_declining_or_failures_give_clear_messages(reqs):
    from GASESegmentationLib.install import DependencyError

    with pytest.raises(DependencyError, match="cannot run without"):
        FakeSlicer({}, torch=True, accept=False).run(reqs)
    with pytest.raises(DependencyError, match="PyTorch Utils module"):
        FakeSlicer({}, torch=False, torch_ok=False).run(reqs)
    with pytest.raises(DependencyError, match="internet connection"):
        FakeSlicer({}, torch=True, pip_fails=True).run(reqs)

    class Broken(FakeSlicer):
        def pip_install(self, specs, constraints, no_deps):  # "succeeds" but installs nothing
            self.pip_calls.append(specs)

    with pytest.raises(DependencyError, match="still missing"):
        Broken({}, torch=True).run(reqs)
