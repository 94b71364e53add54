"""The placement rule (meterray.placement): what actors ask for, what a local node advertises."""
import pytest

from meterray.placement import NODE_UNITS, ingestion_request, local_node_resources, serve_request
from meterray.settings import Settings, SettingsError


def test_by_default_ingestion_actors_ask_for_ingestion_and_replicas_for_serve_which_a_local_node_has() -> None:
    s = Settings.from_env({})
    assert ingestion_request(s) == {"ingestion": 1.0}
    assert serve_request(s) == {"serve": 1.0}
    assert local_node_resources(s) == {"ingestion": NODE_UNITS, "serve": NODE_UNITS}


def test_the_resource_names_and_amounts_are_settings() -> None:
    s = Settings.from_env({"METERRAY_INGESTION_RESOURCE": "meters", "METERRAY_INGESTION_RESOURCE_PER_ACTOR": "10",
                           "METERRAY_SERVE_RESOURCE": ""})
    assert ingestion_request(s) == {"meters": 10.0}
    assert serve_request(s) == {}  # empty name: replicas go anywhere
    assert local_node_resources(s) == {"meters": NODE_UNITS}


@pytest.mark.parametrize("name", ["CPU", "memory", "node:__internal_head__", "two words", "a{b}"])
def test_rays_own_or_malformed_resource_names_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="METERRAY_INGESTION_RESOURCE: .*not a custom resource name"):
        Settings.from_env({"METERRAY_INGESTION_RESOURCE": name})
    with pytest.raises(SettingsError, match="METERRAY_INGESTION_RESOURCE_PER_ACTOR"):
        Settings.from_env({"METERRAY_INGESTION_RESOURCE_PER_ACTOR": "0"})
