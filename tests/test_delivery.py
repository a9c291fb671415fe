"""The README's commands, CI, Docker and workflows stay true to each other."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taskrun.settings import defaults_table

from .conftest import PROJECT

README = (PROJECT / "README.md").read_text()
RUN_COMMAND = "pip install -r requirements.txt && streamlit run app.py"
TEST_COMMAND = "pip install -r requirements-dev.txt && python -m pytest"


def fenced_commands(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_gives_one_run_and_one_test_command():
    commands = fenced_commands(README)
    assert RUN_COMMAND in commands and TEST_COMMAND in commands


def test_ci_gate_runs_the_readme_test_command_verbatim():
    ci = (PROJECT / ".ci" / "run").read_text()
    assert TEST_COMMAND in ci.splitlines()
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci


def test_dockerfile_installs_and_runs_like_the_readme():
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "-r requirements.txt" in dockerfile and "pip install" in dockerfile
    assert '"streamlit", "run", "app.py"' in dockerfile
    assert "EXPOSE 8501" in dockerfile and "/api/system/health" in dockerfile
    assert "FROM python:3.11-slim AS build" in dockerfile and "tini" in dockerfile
    # The server runs as root so that tasks run as another uid, behind the wall.
    assert re.search(r"^USER 0$", dockerfile, re.M) and "TASKRUN_TASK_UID=10002" in dockerfile
    assert "bubblewrap" in dockerfile and "useradd --no-create-home --uid 10002" in dockerfile


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(PROJECT / ".venv" / "bin" / "hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "info", "Dockerfile"],
                            cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file():
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    svc = compose["services"]["taskrun"]
    assert svc["restart"] == "unless-stopped" and svc["init"] is True
    assert "/api/system/health" in " ".join(svc["healthcheck"]["test"])
    assert {v.split(":")[0] for v in svc["volumes"]} == set(compose["volumes"])
    assert svc["deploy"]["resources"]["limits"]["memory"]
    assert svc["cap_drop"] == ["ALL"] and "SETUID" in svc["cap_add"]
    assert (PROJECT / ".env.example").exists()


def test_replicas_compose_file_shares_the_database_tasks_and_key_but_no_data_dir():
    compose = yaml.safe_load((PROJECT / "compose.replicas.yml").read_text())
    servers = {n: s for n, s in compose["services"].items() if n.startswith("taskrun-")}
    assert len(servers) == 2 and "postgres" in compose["services"]
    data = [next(v for v in s["volumes"] if v.endswith(":/app/data")) for s in servers.values()]
    assert len(set(data)) == 2  # a data dir each
    for svc in servers.values():
        env = svc["environment"]
        assert env["TASKRUN_DATABASE_URL"].startswith("postgresql://")
        assert "TASKRUN_SECRET_KEY" in env and env["TASKRUN_ADVERTISE_URL"].endswith(":8501")
        assert "taskrun-tasks:/app/tasks" in svc["volumes"]
        assert "/api/system/health" in " ".join(svc["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["ci.yml", "build-and-push.yml", "release.yml"])
def test_workflows_are_valid_and_reference_real_files(name):
    text = (PROJECT / ".github" / "workflows" / name).read_text()
    flow = yaml.safe_load(text)
    assert flow["jobs"] and flow["permissions"]
    on = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as True
    assert on
    for job in flow["jobs"].values():
        assert job["timeout-minutes"] <= 30 and job["steps"]
        for step in job["steps"]:
            assert "uses" in step or "run" in step
    for ref in re.findall(r"(requirements[\w-]*\.txt|Dockerfile|\.ci/run)", text):
        assert (PROJECT / ref).exists(), ref
    if name == "ci.yml":
        assert TEST_COMMAND in text and "ruff check" in text and "hadolint" in text
        assert flow["concurrency"]["cancel-in-progress"] is True


def test_docs_configuration_table_is_generated_from_the_settings():
    sys.path.insert(0, str(PROJECT / "docs" / "hooks"))
    try:
        import settings_table
    finally:
        sys.path.pop(0)
    page = (PROJECT / "docs" / "configuration.md").read_text()
    built = settings_table.on_page_markdown(page)
    assert settings_table.MARKER in page and settings_table.MARKER not in built
    for name, default, help_ in defaults_table():
        assert f"| `{name}` | {default} | {help_} |" in built, name


def test_docs_build_strict_with_no_broken_link(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    result = subprocess.run([mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").exists()


def _third_party_imports() -> set[str]:
    found = set()
    files = [*PROJECT.glob("taskrun/**/*.py"), *PROJECT.glob("pages/*.py"), PROJECT / "app.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    local = {"taskrun", "pages", "app"}
    return {m for m in found - local if m not in sys.stdlib_module_names}


def test_requirements_cover_every_import():
    reqs = (PROJECT / "requirements.txt").read_text().lower()
    # Optional backends: imported on first use, installed from a file of their own.
    extras = {"ray": (PROJECT / "requirements-ray.txt").read_text().lower()}
    names = {"code_editor": "streamlit-code-editor", "sqlalchemy": "sqlalchemy",
             "argon2": "argon2-cffi", "cron_descriptor": "cron-descriptor",
             "ray": "ray[default]", "prometheus_client": "prometheus-client"}
    # Used when installed, never required: Excel outputs are read with openpyxl if present.
    when_installed = {"openpyxl"}
    for module in _third_party_imports() - when_installed:
        dist = names.get(module, module).lower()
        assert re.search(rf"^{re.escape(dist)}[<>=]", extras.get(module, reqs), re.M), module
    assert "-r requirements-ray.txt" in (PROJECT / "requirements-dev.txt").read_text()


def test_gitignore_keeps_state_out():
    ignored = (PROJECT / ".gitignore").read_text().splitlines()
    assert "/data/" in ignored and ".venv/" in ignored


def test_streamlit_keeps_xsrf_protection_and_cors_on():
    import tomllib

    config = tomllib.loads((PROJECT / ".streamlit" / "config.toml").read_text())["server"]
    assert config.get("enableXsrfProtection", True) is True
    assert config.get("enableCORS", True) is True
    assert "*" not in config.get("corsAllowedOrigins", [])
