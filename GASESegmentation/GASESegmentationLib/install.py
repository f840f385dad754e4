"""First use: check the Python packages GASE needs and install the missing ones after a confirmation.

PyTorch comes from the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build that matches the
driver); the other packages are pinned in ``Resources/requirements.txt`` and installed with pip, with
the already-present torch, numpy, scipy and SimpleITK held at their versions (a constraints file), so
installing GASE never swaps the PyTorch extension's torch or Slicer's own numpy.

The steps are plain functions with the Slicer calls injected, so they are tested without Slicer;
:func:`ensure_dependencies_in_slicer` wires in the real ones.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gase.errors import GaseError

TORCH_REQUIREMENT = ">=2.3"
# Packages whose own dependency list would pull torch from PyPI (the wrong CUDA build): installed with
# --no-deps, their other dependencies (numpy) being present already.
NO_DEPS = ("monai",)
# Present before GASE installs anything (Slicer's own or the PyTorch extension's): never changed.
HELD = ("torch", "numpy", "scipy", "SimpleITK")


class DependencyError(GaseError):
    """A required package is missing and could not be installed; the message says what to do."""


@dataclass(frozen=True)
class Requirement:
    """One ``name==version`` line of the requirements file (with an optional environment marker)."""

    name: str
    version: str
    line: str

    @property
    def spec(self) -> str:
        return self.line


_LINE = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*(;.*)?$")


def read_requirements(path: str | Path) -> list[Requirement]:
    """Pinned requirements (``name==version [; marker]``) of a requirements file, comments skipped."""
    reqs = []
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise DependencyError(f"{path}: '{line}' is not a pinned requirement (name==version).")
        marker = (match.group(3) or "").lstrip(";").strip()
        if marker and not _marker_applies(marker):
            continue
        reqs.append(Requirement(match.group(1), match.group(2), line))
    return reqs


def _marker_applies(marker: str) -> bool:
    """Evaluate the python_version markers used in requirements.txt (others: assume they apply)."""
    import sys

    match = re.fullmatch(r'python_version\s*(<|<=|>=|>|==)\s*["\'](\d+)\.(\d+)["\']', marker)
    if not match:
        return True
    op, major, minor = match.group(1), int(match.group(2)), int(match.group(3))
    here, there = sys.version_info[:2], (major, minor)
    return {"<": here < there, "<=": here <= there, ">=": here >= there, ">": here > there,
            "==": here == there}[op]


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(requirements: Sequence[Requirement],
            version_of: Callable[[str], str | None] = installed_version) -> list[Requirement]:
    """Requirements not installed at exactly their pinned version."""
    return [r for r in requirements if version_of(r.name) != r.version]


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def constraints_text(version_of: Callable[[str], str | None] = installed_version) -> str:
    """pip constraints holding the already-installed :data:`HELD` packages at their versions."""
    lines = [f"{name}=={v}" for name in HELD if (v := version_of(name))]
    return "\n".join(lines) + "\n"


def ensure_dependencies(requirements: Sequence[Requirement], *, confirm: Callable[[str, str], bool],
                        install_torch: Callable[[], bool], pip_install: Callable[[list[str], Path | None, bool], None],
                        torch_present: Callable[[], bool] = torch_available,
                        version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """Install what is missing; returns the requirement lines installed (empty when all were present).

    ``confirm(message, details)`` asks the user once for everything; ``install_torch()`` installs PyTorch
    and says whether it worked; ``pip_install(specs, constraints_file, no_deps)`` installs with pip.
    Raises :class:`DependencyError` (declined or failed) with what to do next.
    """
    need_torch = not torch_present()
    todo = missing(requirements, version_of)
    if not need_torch and not todo:
        return []
    details = "\n".join((["torch (from the PyTorch extension, CUDA build chosen for this computer)"]
                         if need_torch else []) + [r.spec for r in todo])
    if not confirm("GASE needs Python packages that are not installed yet. Install them now? This downloads "
                   "them (PyTorch can be 1-3 GB) and may take several minutes.", details):
        raise DependencyError("GASE cannot run without its Python packages. Click Apply again to install "
                              "them, or install them from the Python console: " + " ".join(r.spec for r in todo))
    if need_torch:
        try:
            ok = install_torch()
        except DependencyError:
            raise
        except Exception as exc:  # the PyTorch extension reports its own errors as exceptions
            raise DependencyError(f"Installing PyTorch failed: {exc}. Open the PyTorch Utils module, install "
                                  "PyTorch there (pick the computation backend by hand if needed), restart "
                                  "Slicer and try again.") from None
        if not ok or not torch_present():
            raise DependencyError("PyTorch was not installed. Open the PyTorch Utils module (PyTorch "
                                  "extension) and install PyTorch there, then restart Slicer.")
    installed = []
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "gase-constraints.txt"
        constraints.write_text(constraints_text(version_of), encoding="utf-8")
        groups = ([r for r in todo if r.name.lower() in NO_DEPS], True), \
                 ([r for r in todo if r.name.lower() not in NO_DEPS], False)
        for reqs, no_deps in groups:
            if not reqs:
                continue
            specs = [f"{r.name}=={r.version}" for r in reqs]
            try:
                pip_install(specs, None if no_deps else constraints, no_deps)
            except Exception as exc:
                raise DependencyError(f"Installing {', '.join(specs)} failed ({exc}). Check the internet "
                                      "connection (or proxy settings), then click Apply again; the Python "
                                      "console shows pip's full log.") from None
            installed += specs
    still = missing(requirements, version_of)
    if still:
        raise DependencyError("These packages are still missing after installation: "
                              f"{', '.join(r.spec for r in still)}. Restart Slicer and try again.")
    return installed


def ensure_dependencies_in_slicer(requirements_path: str | Path) -> list[str]:  # pragma: no cover - needs Slicer
    """:func:`ensure_dependencies` with Slicer's dialogs, ``PyTorchUtils`` and pip."""
    import slicer

    def confirm(message: str, details: str) -> bool:
        return bool(slicer.util.confirmOkCancelDisplay(message, "GASE - install Python packages",
                                                       detailedText=details))

    def install_torch() -> bool:
        try:
            import PyTorchUtils
        except ImportError:
            raise DependencyError("The PyTorch extension is not installed. Install 'PyTorch' from the Extensions "
                                  "Manager, restart Slicer and try again.") from None
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=TORCH_REQUIREMENT) is not None

    def pip_install(specs: list[str], constraints: Path | None, no_deps: bool) -> None:
        try:
            import slicer.packaging as packaging  # Slicer >= 5.12
        except ImportError:
            packaging = None
        if not no_deps and packaging is not None and hasattr(packaging, "pip_ensure"):
            # Slicer >= 5.12: progress dialog and "restart needed" detection; we asked already.
            packaging.pip_ensure(specs, constraints=str(constraints) if constraints else None,
                                 prompt_install=False, requester="GASE")
            return
        args = (["--no-deps"] if no_deps else []) + (["-c", str(constraints)] if constraints else []) + specs
        slicer.util.pip_install(args)

    return ensure_dependencies(read_requirements(requirements_path), confirm=confirm,
                               install_torch=install_torch, pip_install=pip_install)
