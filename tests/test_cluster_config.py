"""The shipped Ray cluster configs pass Ray's own validation (what `ray up` runs first:
``prepare_config`` then ``validate_config``), broken copies are rejected, and the parts
that `ray submit` depends on are there: the project mounted and installed from the
mount, Ray started on head and workers, one MLflow tracking URI for every node."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-local.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def mount_of_project(config: dict) -> str:
    """The remote path that the repository root (".") is mounted at."""
    mounts = {remote: local for remote, local in config["file_mounts"].items() if Path(local).resolve() == Path(".").resolve()}
    assert len(mounts) == 1, f"expected the checkout ('.') mounted once, found {config['file_mounts']}"
    return next(iter(mounts))


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_passes_ray_validation_quickly(name):
    start = time.perf_counter()
    prepared = ray_validate(load(name))
    assert time.perf_counter() - start < 5
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("breakage", ["unknown top-level key", "unknown nested key", "wrong type", "commands not a list"])
def test_broken_copy_is_rejected(name, breakage):
    config = load(name)
    if breakage == "unknown top-level key":
        config["setup_command"] = config.pop("setup_commands")  # a typo Ray must not ignore
    elif breakage == "unknown nested key":
        if config["provider"]["type"] == "local":
            config["auth"]["ssh_usr"] = "root"  # (the provider section itself takes any key)
        else:
            config["available_node_types"]["gpu_worker"]["min_wokers"] = 1
    elif breakage == "wrong type":
        config["upscaling_speed"] = "fast"
    else:
        config["head_start_ray_commands"] = "ray start --head"
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


def test_local_variant_accepts_an_overridden_key(tmp_path):
    """The integration test writes a copy with its own key; that copy must still validate."""
    config = load("cluster-local.yaml")
    key = tmp_path / "id_ed25519"
    key.write_text("placeholder")
    config["auth"]["ssh_private_key"] = str(key)
    copy_path = tmp_path / "cluster-local.yaml"
    copy_path.write_text(yaml.safe_dump(config))
    assert ray_validate(yaml.safe_load(copy_path.read_text()))["auth"]["ssh_private_key"] == str(key)


def test_cloud_config_has_gpu_workers_and_installs_the_gpu_extra_from_the_mount(monkeypatch):
    monkeypatch.chdir(ROOT)  # `ray up` resolves the local side of file_mounts from the cwd
    config = load("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu and all(re.match(r"(g\d|p\d)", t["node_config"]["InstanceType"]) for t in gpu)
    assert all(t["max_workers"] >= 1 for t in gpu)
    mount = mount_of_project(config)
    remote = mount.replace("~", "$HOME")
    setup = "\n".join(config["setup_commands"])
    assert f'-e "{remote}[gpu]"' in setup, "setup_commands must install the mounted project with its gpu extra"
    assert (ROOT / "pyproject.toml").exists()


@pytest.mark.parametrize("name", CONFIGS)
def test_ray_and_one_mlflow_server_are_started(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load(name)
    head = "\n".join(config["head_start_ray_commands"])
    assert "ray start --head" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in "\n".join(config["worker_start_ray_commands"])
    server = re.search(r"mlflow server .*--host (\S+) --port (\d+)", head)
    assert server, "the head must run the MLflow tracking server"
    port = server.group(2)
    head_uri = "\n".join(config["head_setup_commands"])
    worker_uri = "\n".join(config["worker_setup_commands"])
    assert "MLFLOW_TRACKING_URI" in head_uri and f":{port}" in head_uri
    assert f"MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:{port}" in worker_uri
    # the login shells `ray submit` uses must find an interpreter with the mounted project
    setup = "\n".join(config["setup_commands"])
    assert "~/.bashrc" in setup and "PATH=" in setup
    mount = mount_of_project(config)
    assert mount.replace("~", "$HOME") in setup or mount in setup


def test_local_variant_stays_on_this_machine():
    config = load("cluster-local.yaml")
    assert config["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert config["auth"]["ssh_user"] == "root"
    text = (ROOT / "cluster-local.yaml").read_text()
    assert "0.0.0.0" not in "\n".join(config["head_start_ray_commands"])
    assert re.search(r"--host 127\.0\.0\.1 --port 5050", text)
