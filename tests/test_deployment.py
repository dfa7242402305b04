"""The deployment files say what the README and docs/deployment.md say: a configurable bind address and advertised
host, the trainer and viewer users, and replica-set URIs that follow a new primary."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_the_compose_file_publishes_on_the_bind_address_and_advertises_the_host_name() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["mongodb"]
    assert service["ports"] == ["${MONGO_BIND_ADDRESS:-127.0.0.1}:${MONGO_PORT:-27017}:${MONGO_PORT:-27017}"]
    assert service["environment"]["MONGO_ADVERTISED_HOST"] == "${MONGO_ADVERTISED_HOST:-localhost}"
    assert "process.env.MONGO_ADVERTISED_HOST" in " ".join(service["healthcheck"]["test"])
    assert "./deploy/create-users.js:/docker-entrypoint-initdb.d/create-users.js:ro" in service["volumes"]
    assert "--replSet" in service["command"] and "--keyFile" in service["command"]


def test_the_replica_set_example_has_a_first_member_that_creates_the_users() -> None:
    services = yaml.safe_load((ROOT / "deploy" / "replica-set" / "docker-compose.yml").read_text())["services"]
    assert "MONGO_INITDB_ROOT_USERNAME" in services["first"]["environment"]
    assert "MONGO_INITDB_ROOT_USERNAME" not in services["member"]["environment"]
    assert any("create-users.js" in volume for volume in services["first"]["volumes"])
    assert not any("create-users.js" in volume for volume in services["member"]["volumes"])
    initiate = (ROOT / "deploy" / "replica-set" / "initiate.js").read_text()
    assert "rs.initiate" in initiate and "members.length !== 3" in initiate


def test_the_users_script_creates_trainer_read_write_and_viewer_read() -> None:
    script = (ROOT / "deploy" / "create-users.js").read_text()
    assert '["trainer", "readWrite", "TRAINER_PASSWORD"]' in script
    assert '["viewer", "read", "VIEWER_PASSWORD"]' in script


def test_readme_and_docs_uris_name_the_replica_set_and_never_connect_directly() -> None:
    for page in [ROOT / "README.md", ROOT / "docs" / "deployment.md"]:
        uris = re.findall(r"mongodb://[^\s'\"`]+", page.read_text())
        replica_set_uris = [uri for uri in uris if "replicaSet=" in uri]
        assert replica_set_uris, page.name
    uris = [uri for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
            for uri in re.findall(r"mongodb://[^\s'\"`]+", page.read_text())]
    assert not [uri for uri in uris if "directConnection=true" in uri]


def test_ci_runs_the_server_tests_on_the_deployed_mongodb_and_the_oldest_supported() -> None:
    from dacapo_store.maintenance.doctor import OLDEST_SERVER

    job = yaml.safe_load((ROOT / ".github" / "workflows" / "mongodb.yml").read_text())["jobs"]["tests"]
    deployed = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["mongodb"]["image"]
    assert job["strategy"]["matrix"]["mongodb"] == [deployed.removeprefix("mongo:"), "{}.{}".format(*OLDEST_SERVER)]
    runs = [step["run"] for step in job["steps"] if "run" in step]
    [start_step] = [run for run in runs if ".ci/start-mongodb \"$MONGODB_VERSION\"" in run]
    uri = "mongodb://admin:$MONGO_PASSWORD@localhost:27017/?authSource=admin&replicaSet=rs0"
    assert f"DACAPO_STORE_TEST_MONGODB_URI={uri}" in start_step
    assert "bash .ci/run" in runs  # as it is
    assert any("-m mongodb" in run and 'grep -q "^SKIPPED"' in run for run in runs)
    start = (ROOT / ".ci" / "start-mongodb").read_text()
    for needed in ("--replSet rs0", "--keyFile", "MONGO_INITDB_ROOT_PASSWORD", "enableTestCommands=1", "replSetInitiate"):
        assert needed in start
