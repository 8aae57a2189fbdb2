"""The wheels the GPU check carries (benchmarks/device/requirements.txt): exactly what the code
that runs on the GPU machine imports, transitively, beyond what the machine's image holds; the
fetched folder; and the GPU check's dry run from that folder in the oldest-torch environment."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "benchmarks" / "device"
WHEELS = DEVICE / "wheels"
OLDEST = ROOT / ".venv-oldest"
TORCH = "2.11.0"  # the GPU machine's, and scripts/test_oldest.sh's
#: What the GPU check runs there: all of it may execute, so every import in it counts.
RUNS_THERE = [
    "torchrl_mcmc",
    "examples",
    "benchmarks/update_speed.py",
    "tests/test_cuda.py",
    "tests/test_hmc_actor.py",
    "tests/test_langevin.py",
    "tests/conftest.py",
]
#: The GPU machine: CPython 3.12 on x86-64 Linux.
MACHINE = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
MACHINE_TAGS = {
    *cpython_tags(
        (3, 12), abis=["cp312"], platforms=[f"manylinux_2_{n}_x86_64" for n in range(40)]
    ),
    *compatible_tags((3, 12), "cp312", platforms=["manylinux2014_x86_64", "manylinux1_x86_64"]),
    *compatible_tags((3, 12), "cp312", platforms=[f"manylinux_2_{n}_x86_64" for n in range(40)]),
}
LIMIT_MIB = 40


def _names(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


def _pins(path: Path = DEVICE / "requirements.txt") -> dict[str, str]:
    """``{distribution: version}`` of a requirements file of ``name==version`` lines."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.split("#")[0].strip():
            requirement = Requirement(line.split("#")[0])
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line!r} is not an exact version"
            pins[canonicalize_name(requirement.name)] = spec.version
    return pins


IMAGE = _names(DEVICE / "image.txt")


# ------------------------------------------------------------------ what the code imports
def _optional(tree: ast.AST) -> set[int]:
    """Line numbers of the imports inside ``try: ... except ImportError`` (optional ones)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt)}
    return lines


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """The top-level names of the absolute imports in ``path`` (optional ones left out)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    optional = _optional(tree)
    names = set()
    for node in nodes:
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _first_party(name: str) -> Path | None:
    """The repository's own module ``name`` (a package, a script, a test helper), if it is one."""
    for path in (ROOT / name, ROOT / f"{name}.py", ROOT / "tests" / f"{name}.py"):
        if path.exists():
            return path
    return None


def third_party_imports() -> dict[str, set[str]]:
    """``{import name: files}`` of what runs on the GPU machine, the standard library and the
    repository's own modules left out. The repository's modules that it imports and that are
    not themselves listed (``benchmarks.learning``) count with their module-level imports, the
    ones executed on import."""
    files = [p for entry in RUNS_THERE for p in _py_files(ROOT / entry)]
    found: dict[str, set[str]] = {}
    seen = set(files)

    def visit(path: Path, module_level_only: bool) -> None:
        for name in _imports(path, module_level_only):
            if name in sys.stdlib_module_names:
                continue
            own = _first_party(name)
            if own is None:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
            elif own.is_dir():
                # benchmarks.learning: the submodules the listed files import
                for sub in _submodules_imported(path, name):
                    if sub not in seen:
                        seen.add(sub)
                        visit(sub, module_level_only=True)

    for path in files:
        visit(path, module_level_only=False)
    return found


def _py_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _submodules_imported(path: Path, package: str) -> list[Path]:
    """The files of ``package``'s modules that ``path`` imports (``from package.x import``)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == package:  # from benchmarks import learning
                modules += [f"{package}.{alias.name}" for alias in node.names]
            elif node.module.startswith(f"{package}."):  # from benchmarks.learning import X
                modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules += [a.name for a in node.names if a.name.startswith(f"{package}.")]
    out = []
    for module in modules:
        base = ROOT / Path(*module.split("."))
        out += [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()]
    return out


def _declared_extras() -> dict[str, set[str]]:
    """The extras pyproject.toml asks of its dependencies (``gymnasium[mujoco]``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        extras[canonicalize_name(requirement.name)] = set(requirement.extras)
    return extras


def needed_distributions() -> dict[str, str]:
    """``{distribution: why}``: what the imports need, with their requirements (as installed
    here, for the GPU machine's Python), down to what the image holds (whose own needs are
    the image's)."""
    providers = metadata.packages_distributions()
    needed: dict[str, str] = {}
    missing = []
    queue: list[tuple[str, set[str], str]] = []
    for name, files in sorted(third_party_imports().items()):
        if name not in providers:
            missing.append(f"{name} (imported by {sorted(files)[0]})")
            continue
        for dist in providers[name]:
            queue.append((canonicalize_name(dist), set(), f"import {name}"))
    assert not missing, f"imports no installed distribution provides: {missing}"
    declared = _declared_extras()
    while queue:
        dist, extras, why = queue.pop()
        extras = extras | declared.get(dist, set())
        key = dist if not extras else f"{dist}[{','.join(sorted(extras))}]"
        if key in needed:
            continue
        needed[key] = why
        if dist in IMAGE:
            continue
        try:
            requirements = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            pytest.fail(f"{dist} ({why}) is not installed here: its requirements are unknown")
        for line in requirements:
            requirement = Requirement(line)
            marker = requirement.marker or Marker("python_version >= '0'")
            if any(marker.evaluate({**MACHINE, "extra": e}) for e in (extras or {""})):
                child = canonicalize_name(requirement.name)
                queue.append((child, set(requirement.extras), f"{why} -> {dist}"))
    return {key.split("[")[0]: why for key, why in needed.items()}


def test_the_wheel_list_is_what_the_imports_need_beyond_the_image() -> None:
    needed = needed_distributions()
    carried = set(_pins())
    lacking = {d: why for d, why in needed.items() if d not in IMAGE and d not in carried}
    assert not lacking, f"benchmarks/device/requirements.txt lacks: {lacking}"
    unneeded = carried - set(needed)
    assert not unneeded, f"benchmarks/device/requirements.txt carries unneeded {unneeded}"
    already = carried & IMAGE
    assert not already, f"benchmarks/device/requirements.txt carries what the image has: {already}"
    # What scripts/test_oldest.sh installs in the image's place covers what is needed of it.
    stand_ins = _names(DEVICE / "image-requirements.txt")
    assert stand_ins <= IMAGE
    needed_of_image = {d for d in needed if d in IMAGE} - {"torch"}
    assert needed_of_image <= stand_ins, needed_of_image - stand_ins


def test_the_import_scan_sees_imports_in_functions_and_skips_optional_ones(tmp_path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom a.b import c\ndef f():\n    import d\n"
        "try:\n    import e\nexcept ImportError:\n    e = None\n"
    )
    assert _imports(source) == {"os", "a", "d"}
    assert _imports(source, module_level_only=True) == {"os", "a"}


def test_the_pins_are_in_the_package_ranges() -> None:
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    checked = 0
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name]), (line, pins[name])
            checked += 1
    assert checked >= 5  # torchrl, tensordict, gymnasium, mujoco, hydra-core
    # The image's torch is in the package's range too.
    requirements = [Requirement(line) for line in project["dependencies"]]
    (torch_range,) = [r.specifier for r in requirements if r.name == "torch"]
    assert torch_range.contains(TORCH) and torch_range.contains("2.13.0")


# ------------------------------------------------------------------ the fetched folder
needs_wheels = pytest.mark.skipif(
    not WHEELS.is_dir(),
    reason="no benchmarks/device/wheels: bash benchmarks/device/fetch_wheels.sh",
)


@needs_wheels
def test_the_folder_holds_one_wheel_per_pin_for_the_machine() -> None:
    pins = _pins()
    found = {}
    for wheel in sorted(WHEELS.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        assert name not in found, f"two wheels of {name}"
        assert tags & MACHINE_TAGS, f"{wheel.name} does not install on CPython 3.12 x86-64"
        found[name] = str(version)
    assert found == pins
    size = sum(w.stat().st_size for w in WHEELS.glob("*.whl"))
    assert size <= LIMIT_MIB * 2**20, f"{size / 2**20:.1f} MiB"


@needs_wheels
def test_each_wheels_requirements_are_carried_or_in_the_image() -> None:
    """From the wheels' own metadata: the pinned versions' needs, met by a pin or the image."""
    pins = _pins()
    unmet = []
    for wheel in sorted(WHEELS.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            (meta,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            lines = archive.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.partition(":")[2].strip())
            if requirement.marker and not requirement.marker.evaluate({**MACHINE, "extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            version = pins.get(name, TORCH if name == "torch" else None)
            if version is not None:
                ok = requirement.specifier.contains(version, prereleases=True)
            else:
                ok = name in IMAGE
            if not ok:
                unmet.append(f"{wheel.name}: {requirement}")
    assert not unmet, unmet


# ------------------------------------------------------------------ the GPU check's dry run
@pytest.mark.skipif(
    Path(sys.prefix).resolve() != OLDEST.resolve() or not WHEELS.is_dir(),
    reason="runs in scripts/test_oldest.sh's environment, with the fetched wheels",
)
def test_the_device_check_dry_run_installs_from_the_wheels_alone(tmp_path: Path) -> None:
    """The GPU check as it runs there, on the CPU: the image's stand-in (this environment
    without the carried packages), the wheels installed from the folder with no index, the
    CUDA tests listed, the tiny benchmark run."""
    output = tmp_path / "update_speed_dry.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        DRY_RUN="1",
        OUTPUT=str(output),
        PYTHON=str(OLDEST / "bin" / "python"),
        WHEELS=str(WHEELS),
        SITE=str(tmp_path / "site"),
    )
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "device check: passed" in done.stdout
    (listed,) = re.findall(r"^(\d+) CUDA tests$", done.stdout, re.MULTILINE)
    assert int(listed) >= 10, done.stdout
    # The carried packages were imported from where the check installed them, torch the image's.
    assert f"torch {TORCH}" in done.stdout
    assert f"torchrl from {tmp_path / 'site' / 'torchrl'}" in done.stdout
    data = json.loads(output.read_text())
    assert data["versions"]["torch"].startswith(TORCH)
    installed = {
        canonicalize_name(p.name.split("-")[0]) for p in (tmp_path / "site").glob("*.dist-info")
    }
    assert installed == set(_pins())
