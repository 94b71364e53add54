#!/usr/bin/env python3
"""Vendor the JSON schemas `tests/k8s` validates the manifests against (run by hand, not by `make`).

    vendor_k8s_schemas.py crd SOURCE_LABEL CRD.yaml...       the operators' released CRDs → k8s/schemas/crds/
    vendor_k8s_schemas.py kubernetes SOURCE_LABEL DIR KIND...  built-in kinds → k8s/schemas/kubernetes/<version>/

CRDs: the storage version's `openAPIV3Schema` becomes a JSON schema, made strict the way the API
server's strict field validation (`kubectl apply --validate=strict`) treats a structural schema: an
object with declared properties accepts no other field unless it is `x-kubernetes-preserve-unknown-fields`,
so a typo in a field name fails. `x-kubernetes-int-or-string` and `nullable` become JSON-schema types;
descriptions are dropped (size). Built-in kinds: DIR is a `*-local-strict` directory of
openapi2jsonschema output (e.g. the one inside the kubernetes-validate wheel); the kind files are copied
and `_definitions.json` is cut down to the definitions they reach. Every file written is recorded in
k8s/schemas/VERSIONS.json with SOURCE_LABEL (the release it came from).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "k8s" / "schemas"
_DROP = {"description", "nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
         "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
         "x-kubernetes-map-type", "x-kubernetes-embedded-resource"}


def strict(node: Any) -> Any:
    """One openAPIV3Schema node as a strict JSON schema (recursively)."""
    if isinstance(node, list):
        return [strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key not in _DROP:
            out[key] = strict(value)
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = sorted({*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"})
    if ("properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def vendor_crd(path: Path) -> list[Path]:
    written = []
    for crd in yaml.safe_load_all(path.read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("storage"):  # the version the operator stores: the one manifests use
                continue
            schema = strict(version["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
            schema["properties"]["kind"] = {"type": "string", "enum": [kind]}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            out = SCHEMAS / "crds" / f"{kind.lower()}_{group}_{version['name']}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            written.append(out)
    return written


def vendor_kubernetes(src: Path, kinds: list[str]) -> list[Path]:
    version = re.sub(r"-local-strict$", "", src.name)
    dest = SCHEMAS / "kubernetes" / version
    dest.mkdir(parents=True, exist_ok=True)
    definitions = json.loads((src / "_definitions.json").read_text())["$defs"]
    wanted: set[str] = set()

    def reach(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and "#/$defs/" in ref:
                name = ref.split("#/$defs/")[1]
                if name not in wanted:
                    wanted.add(name)
                    reach(definitions[name])
            for value in node.values():
                reach(value)
        elif isinstance(node, list):
            for value in node:
                reach(value)

    written = []
    for kind_file in kinds:
        schema = json.loads((src / f"{kind_file}.json").read_text())
        reach(schema)
        out = dest / f"{kind_file}.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        written.append(out)
    out = dest / "_definitions.json"
    out.write_text(json.dumps({"$defs": {k: definitions[k] for k in sorted(wanted)}}, indent=1,
                              sort_keys=True) + "\n")
    return [*written, out]


def record(label: str, files: list[Path]) -> None:
    index = SCHEMAS / "VERSIONS.json"
    versions = json.loads(index.read_text()) if index.exists() else {}
    for f in files:
        versions[str(f.relative_to(SCHEMAS))] = label
    index.write_text(json.dumps(dict(sorted(versions.items())), indent=1) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "crd":
        record(argv[1], [f for p in argv[2:] for f in vendor_crd(Path(p))])
    elif len(argv) >= 4 and argv[0] == "kubernetes":
        record(argv[1], vendor_kubernetes(Path(argv[2]), argv[3:]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
