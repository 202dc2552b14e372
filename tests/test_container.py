"""The container image and the compose stack, without a Docker engine (none runs here or in CI).

Checked instead: compose.yaml parses and every local path it names exists; the Dockerfile's COPY
sources exist and pass .dockerignore; the wheel built from exactly those sources installs into a
clean venv whose `ssmd-connector` (the image's entrypoint) runs `--version` and `--check` against
the compose environment with a key written the way the stack's simulator writes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssmd import __version__
from ssmd.exchange.cli import DEMO_KEY_FILENAME, DEMO_KEY_ID_FILENAME, write_demo_key

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_ENV = REPO / "environments" / "compose.yaml"
IMAGE_CONFIG = "/etc/ssmd/env.yaml"
SUBPROCESS_TIMEOUT_S = 180


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _copy_sources() -> list[str]:
    """Build-context sources of every COPY (not COPY --from=another stage)."""
    sources = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *from_context, _destination = rest.split()
            sources.extend(from_context)
    return sources


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    first = Path(path).parts[0]
    return any(first == pattern or path == pattern for pattern in patterns)


def test_compose_file_parses_and_names_the_three_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"nats", "exchange", "connector"}
    assert "-js" in services["nats"]["command"]
    assert services["exchange"]["entrypoint"] == ["ssmd"]
    assert services["exchange"]["command"][0] == "exchange"
    assert "--host=0.0.0.0" in services["exchange"]["command"]
    assert set(services["connector"]["depends_on"]) == {"nats", "exchange"}


def test_every_local_path_in_compose_exists() -> None:
    compose = _compose()
    named_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = REPO / build["context"]
            assert context.is_dir(), name
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source}"
            else:
                assert source in named_volumes, f"{name}: undeclared volume {source}"


def test_compose_shares_the_simulator_key_with_the_connector() -> None:
    services = _compose()["services"]
    key_dir = "/var/lib/ssmd/shared"
    assert f"--generate-key={key_dir}" in services["exchange"]["command"]
    assert f"shared:{key_dir}" in services["exchange"]["volumes"]
    assert f"shared:{key_dir}:ro" in services["connector"]["volumes"]
    assert f"./environments/compose.yaml:{IMAGE_CONFIG}:ro" in services["connector"]["volumes"]
    environment = yaml.safe_load(COMPOSE_ENV.read_text())
    assert environment["credentials"]["private_key_file"] == f"{key_dir}/{DEMO_KEY_FILENAME}"
    assert environment["credentials"]["key_id_file"] == f"{key_dir}/{DEMO_KEY_ID_FILENAME}"
    assert "entrypoint" not in services["connector"]  # the image's own: ssmd-connector
    assert environment["exchange"]["ws_url"].startswith("ws://exchange:8765/")
    assert environment["transport"]["servers"] == ["nats://nats:4222"]


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "README.md", "ssmd", "environments/compose.yaml"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _dockerignored(source), source


def test_dockerfile_runtime_contract() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith("AS build")
    assert froms[1].endswith("AS runtime")
    assert ("ENTRYPOINT", '["ssmd-connector"]') in instructions
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert not users[-1].startswith(("root", "0"))
    assert any(
        keyword == "ENV" and f"SSMD_ENV={IMAGE_CONFIG}" in rest for keyword, rest in instructions
    )
    healthchecks = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "http://127.0.0.1:9464/health" in healthchecks[0]
    # The example config serves /health where the HEALTHCHECK looks for it.
    environment = yaml.safe_load(COMPOSE_ENV.read_text())
    assert environment["ops"]["address"] == "0.0.0.0:9464"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built like the image's build stage: from the Dockerfile's COPY sources only."""
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, context / name)
    shutil.copytree(REPO / "ssmd", context / "ssmd", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, "."],
        cwd=context,
        check=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    (built,) = dist.glob("ssmd-*.whl")
    return built


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel (and its dependencies) installed: the image's runtime."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", venv], check=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel],
        check=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    return venv


def _clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SSMD_", "KALSHI_", "VIRTUAL_ENV", "PYTHON"))
    }


def test_wheel_holds_the_package_and_both_commands(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {"ssmd/cli.py", "ssmd/py.typed", "ssmd/exchange/cli.py"} <= names
    assert not any(name.startswith("tests/") for name in names)
    assert "ssmd-connector = ssmd.cli:connector_main" in scripts
    assert "ssmd = ssmd.cli:toolbox_main" in scripts


def test_entrypoint_runs_from_a_clean_venv(clean_venv: Path, tmp_path: Path) -> None:
    connector = clean_venv / "bin" / "ssmd-connector"
    version = subprocess.run(
        [connector, "--version"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        check=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert version.stdout.strip() == f"ssmd {__version__}"


def test_entrypoint_checks_the_compose_environment(clean_venv: Path, tmp_path: Path) -> None:
    # The key as the stack's simulator writes it into the shared volume.
    shared = tmp_path / "shared"
    key_id, pem_path, _public_key = write_demo_key(shared)
    environment = yaml.safe_load(COMPOSE_ENV.read_text())
    environment["credentials"]["private_key_file"] = str(pem_path)
    environment["credentials"]["key_id_file"] = str(shared / DEMO_KEY_ID_FILENAME)
    env_path = tmp_path / "env.yaml"
    env_path.write_text(yaml.safe_dump(environment))
    env = _clean_env() | {"SSMD_ENV": str(env_path)}
    checked = subprocess.run(
        [clean_venv / "bin" / "ssmd-connector", "--check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert checked.returncode == 0, checked.stderr
    summary = json.loads(checked.stdout)
    assert summary["name"] == "compose"
    assert summary["transport"]["servers"] == ["nats://nats:4222"]
    pem_body = pem_path.read_text().splitlines()[1]
    assert pem_body not in checked.stdout + checked.stderr
    assert key_id not in checked.stdout + checked.stderr


def test_entrypoint_without_the_key_fails_with_a_usage_error(
    clean_venv: Path, tmp_path: Path
) -> None:
    env = _clean_env() | {"SSMD_ENV": str(COMPOSE_ENV)}
    checked = subprocess.run(
        [clean_venv / "bin" / "ssmd-connector", "--check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert checked.returncode == 2
    assert "ssmd-demo-key.id" in checked.stderr
    assert "credentials.key_id_file" in checked.stderr
