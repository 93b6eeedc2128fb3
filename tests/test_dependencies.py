"""Every third-party package that src/finexp imports is declared in pyproject.toml (dependencies or an extra).

A package that is only installed because something else pulls it in (numpy through torch, PyYAML through Lightning)
breaks the day that something stops depending on it. Import names map to distributions with
``importlib.metadata.packages_distributions()`` (``sklearn`` -> scikit-learn, ``yaml`` -> PyYAML).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

from import_walk import module_names, third_party_imports

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``PyYAML`` == ``pyyaml``, ``scikit_learn`` == ``scikit-learn``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Mapping) -> set[str]:
    """The canonical names of ``[project] dependencies`` and of every optional-dependencies extra."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {}).values()
    requirements = [*project.get("dependencies", []), *(r for extra in extras for r in extra)]
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert match, f"pyproject.toml: cannot read the requirement {requirement!r}"
        names.add(canonical(match.group(1)))
    return names - {canonical(project["name"])}  # finexp[onnx] in dev: those extras are counted already


def undeclared(
    imports: Mapping[str, list[str]], declared: set[str], distributions: Mapping[str, list[str]]
) -> dict[str, str]:
    """Import name -> why it is a problem, for every import no declared distribution provides."""
    problems = {}
    for name, where in sorted(imports.items()):
        more = f" (+{len(where) - 1} more)" if len(where) > 1 else ""
        provided = distributions.get(name)
        if not provided:
            problems[name] = f"{name}: imported at {where[0]}{more}, but no installed distribution provides it"
        elif not {canonical(d) for d in provided} & declared:
            problems[name] = (
                f"{name}: imported at {where[0]}{more}, provided by {' or '.join(sorted(set(provided)))}, "
                "which pyproject.toml does not declare"
            )
    return problems


def test_every_third_party_import_of_src_finexp_is_declared():
    imports = third_party_imports(module_names())
    assert {"torch", "pytorch_lightning", "hydra", "sklearn"} <= set(imports)  # the walk sees the real imports
    declared = declared_distributions(tomllib.loads(PYPROJECT.read_text()))
    problems = undeclared(imports, declared, packages_distributions())
    missing = sorted({d for name in problems for d in packages_distributions().get(name, [name])}, key=str.lower)
    assert not problems, f"declare in pyproject.toml: {', '.join(missing)}\n" + "\n".join(problems.values())


def test_the_check_maps_import_names_to_distributions_and_names_what_is_missing(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import json\nfrom . import core\nimport pkg.core\n")
    (package / "core.py").write_text(
        "import sklearn.metrics\nfrom omegaconf import OmegaConf\n\n"
        "def later():\n    import yaml\n    import not_a_real_package_xyz\n"
    )
    imports = third_party_imports(module_names(tmp_path, "pkg"), "pkg", tmp_path)
    assert set(imports) == {"sklearn", "omegaconf", "yaml", "not_a_real_package_xyz"}  # stdlib and pkg left out
    assert imports["yaml"] == [f"{tmp_path.name}/pkg/core.py:5"]
    pyproject = {
        "project": {
            "name": "pkg",
            "dependencies": ["scikit_learn>=1.3", "OmegaConf >=2.3"],
            "optional-dependencies": {"dev": ["pkg[onnx]"], "onnx": ["onnx>=1.16"]},
        }
    }
    declared = declared_distributions(pyproject)
    assert declared == {"scikit-learn", "omegaconf", "onnx"}
    problems = undeclared(imports, declared, packages_distributions())
    assert set(problems) == {"yaml", "not_a_real_package_xyz"}
    assert "provided by PyYAML, which pyproject.toml does not declare" in problems["yaml"]
    assert "no installed distribution provides it" in problems["not_a_real_package_xyz"]
    assert undeclared(imports, declared | {"pyyaml"}, packages_distributions()).keys() == {"not_a_real_package_xyz"}


def _requirement_names(requirements: list[str]) -> set[str]:
    return {canonical(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in requirements}


def test_optional_stacks_are_extras_and_dev_installs_every_extra():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    core = _requirement_names(project["dependencies"])
    moved = {"serve": {"fastapi", "uvicorn", "pydantic", "starlette"}, "privacy": {"opacus"}, "explain": {"captum"}}
    for extra, names in moved.items():
        assert names <= _requirement_names(extras[extra]), extra
        assert not names & core, f"{sorted(names & core)} belong to finexp[{extra}], not the core dependencies"
    dev = set(extras["dev"])
    assert {f"finexp[{name}]" for name in extras if name != "dev"} <= dev  # CI's `pip install -e .[dev]`: all


def test_a_missing_optional_stack_stops_with_one_message_naming_its_extra():
    """Simulated absence (sys.modules[name] = None: find_spec says missing, an import fails): runs that need none
    of the stacks still import and build; those that do are told which extra to install."""
    script = """
import sys
for name in ("opacus", "captum", "fastapi", "uvicorn"):
    sys.modules[name] = None
import finexp.analysis.pipeline  # the trust report without explanations needs no captum
from omegaconf import OmegaConf
from finexp.config.checks import validate_analysis, validate_serving
from finexp.extras import MissingExtraError
from finexp.privacy import build_privacy

assert build_privacy("label_dp", epsilon=1.0).dp_sgd is None
analysis = OmegaConf.load("conf/analysis/default.yaml")
validate_analysis(analysis)
for call in (
    lambda: build_privacy("dp_sgd", epsilon=1.0),
    lambda: validate_analysis(OmegaConf.merge(analysis, {"explain": True})),
    lambda: validate_serving(OmegaConf.create({"ckpt": "a.ckpt", "serve": {"port": 8000}})),
):
    try:
        call()
    except MissingExtraError as err:
        print(err)
"""
    root = PYPROJECT.parent
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == [
        "privacy=dp_sgd needs opacus, which is not installed: pip install 'finexp[privacy]'",
        "analysis.explain=true needs captum, which is not installed: pip install 'finexp[explain]'",
        "finexp-serve needs fastapi, uvicorn, which are not installed: pip install 'finexp[serve]'",
    ]
