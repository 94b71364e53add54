"""ray_cluster.yaml: valid by the cluster-launcher schema Ray ships, with the same topology and Serve
config as the RayService in k8s/."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import ray
import yaml

from meterray.settings import REPO_ROOT
from tests.k8s.manifests import one, render

CONFIG = REPO_ROOT / "ray_cluster.yaml"


def _config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def _errors(config: dict[str, Any]) -> list[str]:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def test_ray_cluster_yaml_is_valid_by_rays_own_schema() -> None:
    assert _errors(_config()) == []


def test_a_mistyped_field_or_a_wrong_value_fails_the_schema() -> None:
    config = copy.deepcopy(_config())
    config["max_worker"] = config.pop("max_workers")
    assert any("max_worker" in e for e in _errors(config))
    config = copy.deepcopy(_config())
    config["available_node_types"]["ingestion"]["min_workers"] = "one"
    assert _errors(config)


def test_the_topology_is_the_rayservices_head_without_work_ingestion_and_serve_workers() -> None:
    config = _config()
    types = config["available_node_types"]
    cluster = one(render("base"), "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert any("--num-cpus=0" in cmd for cmd in config["head_start_ray_commands"])
    assert set(types) - {config["head_node_type"]} == set(groups)
    ingestion_resources = json.loads(json.loads(groups["ingestion"]["rayStartParams"]["resources"]))
    assert {k: v for k, v in types["ingestion"]["resources"].items() if k != "CPU"} == ingestion_resources


def test_the_head_deploys_the_same_serve_config_as_the_rayservice() -> None:
    config = _config()
    mounted = {dest: src for dest, src in config["file_mounts"].items()}
    (dest,) = [d for d, src in mounted.items() if Path(src) == Path("./k8s/base/serve_config.yaml")]
    assert (REPO_ROOT / mounted[dest]).read_text() == one(render("base"), "RayService")["spec"]["serveConfigV2"]
    assert f"serve deploy {dest}" in config["head_start_ray_commands"]


def test_worker_groups_advertise_the_resources_meterrays_actors_ask_for() -> None:
    from meterray.placement import NODE_UNITS, ingestion_request, serve_request
    from meterray.settings import Settings

    settings = Settings.from_env({})
    types = _config()["available_node_types"]
    cluster = one(render("base"), "RayService")["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: json.loads(json.loads(g["rayStartParams"]["resources"]))
              for g in cluster["workerGroupSpecs"]}
    assert groups == {"ingestion": dict.fromkeys(ingestion_request(settings), NODE_UNITS),
                      "serve": dict.fromkeys(serve_request(settings), NODE_UNITS)}
    for name, advertised in groups.items():
        assert {k: v for k, v in types[name]["resources"].items() if k != "CPU"} == advertised
    # The head runs no work: no CPU for tasks and neither resource.
    assert set(types[_config()["head_node_type"]]["resources"]) == {"CPU"}
    assert "resources" not in cluster["headGroupSpec"]["rayStartParams"]
