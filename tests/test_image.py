"""The container image: the Dockerfile pins the Ray that pyproject.toml allows (and the tests run), and
the manifests and ray_cluster.yaml name the image of this project version and that Ray."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from meterray.settings import REPO_ROOT
from tests.k8s.manifests import OVERLAYS, containers, one, render

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def _arg(name: str) -> str:
    found = re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert len(found) == 1, found
    return found[0]


def _ray_requirement() -> Requirement:
    (req,) = [Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "ray"]
    return req


RAY_VERSION = _arg("RAY_VERSION")
IMAGE = f"meterray/meterray:{PYPROJECT['version']}-ray{RAY_VERSION}"


def test_the_dockerfile_pins_the_ray_pyproject_allows_and_the_tests_ran_with() -> None:
    req = _ray_requirement()
    assert req.specifier.contains(RAY_VERSION), (RAY_VERSION, str(req))
    assert RAY_VERSION == ray.__version__
    assert f'"ray[{",".join(sorted(req.extras))}]==${{RAY_VERSION}}"' in DOCKERFILE


def test_the_dockerfile_is_slim_non_root_and_installs_the_project_from_a_wheel() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert froms and all(f.startswith("python:${PYTHON_VERSION}-slim") for f in froms), froms
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(_arg("PYTHON_VERSION") + ".0")
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert users and users[-1] == "1000"
    assert "pip wheel" in DOCKERFILE and "/tmp/wheels/meterray-*.whl" in DOCKERFILE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_run_this_image_and_this_ray(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    ours = [c["image"] for o in objects for c in containers(o) if "meterray" in c["image"]]
    assert ours and set(ours) == {IMAGE}
    rayservice = one(objects, "RayService")
    assert {c["image"] for c in containers(rayservice)} == {IMAGE}
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == RAY_VERSION
    (job,) = [o for o in objects if o["kind"] == "Job"]
    assert [c["image"] for c in containers(job)] == [IMAGE]


def test_ray_cluster_yaml_runs_this_image() -> None:
    config = yaml.safe_load((REPO_ROOT / "ray_cluster.yaml").read_text())
    assert config["docker"]["image"] == IMAGE
    assert f"docker build -t {IMAGE} ." in DOCKERFILE


def test_the_wheel_the_image_installs_holds_every_package_the_serve_config_imports(tmp_path: Path) -> None:
    # What the build stage copies, and nothing more, must make a wheel with the whole project in it.
    build = DOCKERFILE.split("AS build", 1)[1].split("\nFROM ", 1)[0]
    copied = [src for line in re.findall(r"^COPY (.+)$", build, re.MULTILINE) for src in line.split()[:-1]]
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    assert packages <= set(copied), packages - set(copied)
    for src in copied:
        (shutil.copytree if (REPO_ROOT / src).is_dir() else shutil.copy)(REPO_ROOT / src, tmp_path / src)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run([*pip_wheel, "-w", str(tmp_path / "dist"), str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("meterray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    serve_config = yaml.safe_load((REPO_ROOT / "k8s" / "base" / "serve_config.yaml").read_text())
    for app in serve_config["applications"]:
        assert app["import_path"].split(":")[0].replace(".", "/") + ".py" in names
    migrations = {p.name for p in (REPO_ROOT / "storage" / "postgres" / "migrations").glob("*.sql")}
    assert migrations and {n.rsplit("/", 1)[-1] for n in names if n.startswith("storage/postgres/migrations/")} \
        == migrations
    meta = zipfile.ZipFile(wheel)
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert "meterray = meterray.app.cli:main" in meta.read(f"{dist_info}/entry_points.txt").decode()
    requires = [Requirement(line.split(": ", 1)[1]) for line in meta.read(f"{dist_info}/METADATA").decode().splitlines()
                if line.startswith("Requires-Dist: ")]
    assert [r for r in requires if r.name == "ray"] == [_ray_requirement()]
