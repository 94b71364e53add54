"""k8s/: every overlay renders, and every object it renders is valid by the Kubernetes schemas and the
operators' released CRD schemas vendored in k8s/schemas (offline), so a mistyped field fails here."""
from __future__ import annotations

import copy
import importlib
import json
from typing import Any

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from meterray.auth_backends import auth_backends
from meterray.notify import email_backend
from meterray.settings import Settings
from storage.kafka.topics import ALL_TOPICS, TOPIC_CONFIG
from tests.k8s.manifests import K8S, OVERLAYS, SCHEMAS, containers, errors, one, render

TARGETS = ["base", *(f"overlays/{o}" for o in OVERLAYS)]
EXPECTED_KINDS = {"Namespace", "ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "Job", "RayService",
                  "Kafka", "KafkaNodePool", "KafkaTopic", "Cluster", "ClickHouseInstallation", "PodMonitor"}


def test_both_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_is_valid_by_its_schema(target: str) -> None:
    objects = render(target)
    assert {o["kind"] for o in objects} == EXPECTED_KINDS
    problems = {f"{o['kind']}/{o['metadata']['name']}": errors(o) for o in objects}
    assert {k: v for k, v in problems.items() if v} == {}


def test_every_vendored_schema_names_its_release() -> None:
    versions = json.loads((SCHEMAS / "VERSIONS.json").read_text())
    files = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*.json") if p.name != "VERSIONS.json"}
    assert files == versions.keys()
    assert all(label.strip() for label in versions.values())


@pytest.mark.parametrize(("kind", "name", "path", "typo"), [
    ("RayService", "meterray", ["spec", "rayClusterConfig", "headGroupSpec"], ("rayStartParams", "rayStartParam")),
    ("RayService", "meterray", ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers",
                                0], ("envFrom", "envFom")),
    ("Deployment", "mosquitto", ["spec"], ("replicas", "replica")),
    ("Job", "meterray-migrate", ["spec", "template", "spec"], ("restartPolicy", "restartpolicy")),
    ("KafkaTopic", "readings-raw", ["spec"], ("partitions", "partition")),
    ("Kafka", "meterray-kafka", ["spec", "kafka"], ("listeners", "listener")),
    ("KafkaNodePool", "dual-role", ["spec"], ("roles", "role")),
    ("Cluster", "meterray-pg", ["spec"], ("instances", "instance")),
    ("ClickHouseInstallation", "meterray", ["spec", "configuration"], ("clusters", "cluster")),
    ("PodMonitor", "ray-nodes", ["spec"], ("podMetricsEndpoints", "podMetricEndpoints")),
])
def test_a_mistyped_field_fails_validation(kind: str, name: str, path: list[Any], typo: tuple[str, str]) -> None:
    obj = copy.deepcopy(one(render("overlays/dev"), kind, name))
    node: Any = obj
    for key in path:
        node = node[key]
    right, wrong = typo
    node[wrong] = node.pop(right)
    found = errors(obj)
    assert any(wrong in e for e in found), found


def test_a_wrong_type_fails_validation() -> None:
    topic = copy.deepcopy(one(render("overlays/dev"), "KafkaTopic", "readings"))
    topic["spec"]["partitions"] = "four"
    assert any("partitions" in e for e in errors(topic))


def _pod_environments(objects: tuple[dict[str, Any], ...]) -> list[dict[str, str]]:
    """What each Ray container sees: the ConfigMap its envFrom names, then its env, a secret reference
    standing for a value of the secret's shape (a DSN, a URL, or a long random-looking string)."""
    rayservice = one(objects, "RayService")
    names = {ref["configMapRef"]["name"] for c in containers(rayservice) for ref in c.get("envFrom", [])}
    assert len(names) == 1, names
    data = one(objects, "ConfigMap", names.pop())["data"]
    environments = []
    for c in containers(rayservice):
        environ = dict(data)
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if not env["name"].startswith("METERRAY_"):
                continue
            if ref is None:
                environ[env["name"]] = env["value"]
            elif env["name"].endswith("_DSN"):
                environ[env["name"]] = f"postgresql://app:secret@{ref['name']}:5432/app"
            elif env["name"].endswith("_URL"):
                environ[env["name"]] = f"https://{ref['key']}.example"
            else:
                environ[env["name"]] = f"{ref['name']}-{ref['key']}-" + "x" * 48
        environments.append(environ)
    return environments


def _settings_of(objects: tuple[dict[str, Any], ...]) -> Settings:
    """The settings the Ray pods run with (all containers alike: they share the env anchor)."""
    return Settings.from_env(environ=_pod_environments(objects)[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_are_the_pipelines_topics_with_the_runtimes_partition_count(overlay: str) -> None:
    objects = render(f"overlays/{overlay}")
    settings = _settings_of(objects)
    kafka = one(objects, "Kafka")
    topics = [o for o in objects if o["kind"] == "KafkaTopic"]
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(settings.topic(t) for t in ALL_TOPICS)
    for name, config in TOPIC_CONFIG.items():  # e.g. the compacted `devices` topic: as ensure_topics makes it
        manifest = next(t for t in topics if t["spec"]["topicName"] == settings.topic(name))
        assert {k: manifest["spec"].get("config", {}).get(k) for k in config} == config, name
    assert {t["spec"]["partitions"] for t in topics} == {settings.kafka_partitions}
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics} == {kafka["metadata"]["name"]}
    pool = one(objects, "KafkaNodePool")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert {t["spec"]["replicas"] for t in topics} == {min(3, pool["spec"]["replicas"])}
    assert settings.kafka_bootstrap == f"{kafka['metadata']['name']}-kafka-bootstrap:9092"


def test_prod_runs_more_partitions_than_dev() -> None:
    # The partition count differs per overlay, so the check above compares two real values each time.
    prod, dev = _settings_of(render("overlays/prod")), _settings_of(render("overlays/dev"))
    assert prod.kafka_partitions > dev.kafka_partitions


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_references_never_literals(target: str) -> None:
    objects = render(target)
    assert not [o for o in objects if o["kind"] == "Secret"]
    for obj in objects:
        for c in containers(obj):
            for env in c.get("env", []):
                if any(word in env["name"].upper() for word in ("PASSWORD", "DSN", "SECRET", "TOKEN")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (obj["metadata"]["name"], env)
                value = str(env.get("value", ""))
                assert "password" not in value.lower() or "$(" in value, env
    redis_password = one(objects, "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisPassword"]
    assert set(redis_password) == {"valueFrom"}
    users = one(objects, "ClickHouseInstallation")["spec"]["configuration"]["users"]
    assert not [k for k in users if k.endswith(("/password", "/password_sha256_hex", "/password_double_sha1_hex"))]
    for cm in (o for o in objects if o["kind"] == "ConfigMap"):
        assert not [k for k in cm.get("data", {}) if any(w in k.upper() for w in ("PASSWORD", "DSN", "SECRET"))]


@pytest.mark.parametrize("target", TARGETS)
def test_the_ray_topology_head_without_work_ingestion_workers_and_gcs_on_redis(target: str) -> None:
    objects = render(target)
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}  # Ray 2.60 default: KubeRay makes and wires the token
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"ingestion", "serve"}
    assert "ingestion" in json.loads(json.loads(groups["ingestion"]["rayStartParams"]["resources"]))
    redis_host, _, redis_port = cluster["gcsFaultToleranceOptions"]["redisAddress"].partition(":")
    service = one(objects, "Service", redis_host)
    assert [p["port"] for p in service["spec"]["ports"]] == [int(redis_port)]
    assert one(objects, "Deployment", redis_host)["spec"]["template"]["metadata"]["labels"].items() >= \
        service["spec"]["selector"].items()


@pytest.mark.parametrize("target", TARGETS)
def test_serve_config_is_valid_and_its_import_paths_build_applications(target: str) -> None:
    objects = render(target)
    text = one(objects, "RayService")["spec"]["serveConfigV2"]
    assert text == (K8S / "base" / "serve_config.yaml").read_text()
    config = ServeDeploySchema.model_validate(yaml.safe_load(text))
    assert {a.name: a.route_prefix for a in config.applications} == {
        "ingestion": None, "monitoring": "/", "users": "/api/v1/auth", "users-me": "/api/v1/me",
        "users-admin": "/api/v1/users",
        "notifications": "/api/v1/notifications"}
    for app in config.applications:
        module, _, attr = app.import_path.partition(":")
        builder = getattr(importlib.import_module(module), attr)
        assert isinstance(builder(app.args or {}), Application), app.import_path


def test_the_migrations_job_migrates_postgresql_with_the_dsn_of_the_cnpg_secret() -> None:
    objects = render("overlays/prod")
    cluster = one(objects, "Cluster")
    job = one(objects, "Job", "meterray-migrate")
    (c,) = containers(job)
    assert c["command"] == ["meterray", "migrate", "--no-topics"]
    (dsn,) = [e for e in c["env"] if e["name"] == "METERRAY_PG_DSN"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": f"{cluster['metadata']['name']}-app", "key": "uri"}
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "meterray", "owner": "meterray"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_has_what_its_environment_demands(overlay: str) -> None:
    """Production refuses to start without its keys (no silent development fallback), so a key the overlay
    forgets must show here, not as a crash-looping pod; and dev must not pretend to be production."""
    objects = render(f"overlays/{overlay}")
    for environ in _pod_environments(objects):
        settings = Settings.from_env(environ)  # raises, naming the variable, when something is missing
        auth_backends(settings)  # and so do the start-up checks of the users and notifications services
        email_backend(settings)
        assert settings.env == ("production" if overlay == "prod" else "development")
    if overlay == "prod":
        for c in containers(one(objects, "RayService")):
            refs = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
            assert {"METERRAY_TOKEN_SIGNING_KEY", "METERRAY_SECRET_KEY", "METERRAY_FNS_API_KEY",
                    "METERRAY_GKH_API_KEY"} <= refs, c["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_ray_container_runs_serve_as_meterray_sizes_it(target: str) -> None:
    """Serve's proxy and replicas read these when they start (serve_apps.capacity): every Ray pod has them,
    as a local Ray does (meterray.app.runtime.init_ray), and the proxy times requests out as locally."""
    from serve_apps.capacity import SERVE_THROUGHPUT_ENV

    objects = render(target)
    ray_containers = containers(one(objects, "RayService"))
    assert ray_containers
    for c in ray_containers:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert {k: env.get(k) for k in SERVE_THROUGHPUT_ENV} == SERVE_THROUGHPUT_ENV, c["name"]
    config = yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])
    assert config["http_options"]["request_timeout_s"] == Settings().api_request_timeout_s
