"""The deployment files agree with the package and with what Docker, Compose and systemd need.

These fast checks read the Dockerfile, .dockerignore and docker-compose.yml and compare them
with setup.cfg and common/config.py; the systemd unit is checked by ``systemd-analyze verify``
itself. The image, the Compose services and the unit run for real in the slow tests
tests/system/test_deploy_image.py, test_deploy_compose.py and test_deploy_systemd.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import (
    ENTRYPOINT_SCRIPT,
    IMAGE_SERVICES,
    ROOT,
    compose_command,
    compose_environment,
    compose_probe,
    compose_service,
    console_scripts,
    dockerfile_instructions,
    sent_to_builder,
    setup_cfg,
)

from api.settings import DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS
from common import config

UNIT = ROOT / "deploy" / "task-processor.service"
ENV_EXAMPLE = ROOT / "deploy" / "task-processor.env.example"

# Variables read by the application side or by Python itself rather than by an option.
NON_OPTION_VARIABLES = {
    "TASK_RUN_METHOD",
    "ENABLE_TASK_PROCESSOR_HEALTH_CHECK",
    "PYTHONPATH",
    "PYTHONDONTWRITEBYTECODE",
}


# -- readers ---------------------------------------------------------------------------------


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def one(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for kw, arguments in instructions if kw == keyword]
    assert len(found) == 1, f"expected exactly one {keyword} in the final stage, found {found}"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {arguments}")
    assert isinstance(value, list) and value and all(isinstance(v, str) for v in value)
    return value


def unit_sections() -> dict[str, dict[str, list[str]]]:
    """systemd keys may repeat, so every key maps to the list of its values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"a key outside any section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service_key(key: str) -> str:
    values = unit_sections()["Service"].get(key)
    assert values is not None and len(values) == 1, f"[Service] {key}= is missing or repeated"
    return values[0]


def seconds(text: str) -> float:
    """A duration as systemd and Compose write it: ``45``, ``45s``, ``1min``, ``1m30s``."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().strip('"'))
    assert parts, f"not a duration: {text!r}"
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def env_example() -> dict[str, str]:
    """KEY=value lines of the example EnvironmentFile, commented-out ones included."""
    values: dict[str, str] = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"#?([A-Z][A-Z0-9_]*)=(.*)", raw.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def option_variables() -> set[str]:
    return {option.env for option in config.OPTIONS.values() if option.env}


def default_drain_timeout() -> int:
    return config.OPTIONS["drain_timeout"].default


# -- Dockerfile --------------------------------------------------------------------------------


def test_entrypoint_and_cmd_are_exec_form_so_the_program_gets_the_stop_signal():
    stage = final_stage()
    assert exec_form(one(stage, "ENTRYPOINT")) == ["docker-entrypoint"]
    assert exec_form(one(stage, "CMD")) == ["run-task-processor"]
    copies = [arguments.split() for kw, arguments in stage if kw == "COPY"]
    assert ["deploy/docker-entrypoint.sh", "/usr/local/bin/docker-entrypoint"] in copies
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK), "the entrypoint script must be executable"


def test_the_image_runs_as_a_non_root_user():
    user = one(final_stage(), "USER").split(":")[0]
    assert user not in {"root", "0"}
    assert any(
        kw == "RUN" and "useradd" in arguments and user in arguments
        for kw, arguments in final_stage()
    ), f"the user {user} is never created"


def test_healthcheck_runs_check_health_and_stop_signal_is_sigterm():
    stage = final_stage()
    healthcheck = one(stage, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert exec_form(command) == ["check-health"]
    assert "--interval=" in options and "--timeout=" in options
    assert one(stage, "STOPSIGNAL") == "SIGTERM"


def test_the_python_image_satisfies_python_requires():
    args = [arguments for kw, arguments in dockerfile_instructions() if kw == "ARG"]
    image = next(a.split("=", 1)[1] for a in args if a.startswith("PYTHON_IMAGE="))
    version = tuple(int(part) for part in re.match(r"python:(\d+)\.(\d+)", image).groups())
    required = setup_cfg()["options"]["python_requires"].strip()
    minimum = tuple(int(part) for part in re.fullmatch(r">=\s*(\d+)\.(\d+)", required).groups())
    assert version >= minimum


def test_the_build_copies_every_package_and_installs_it():
    instructions = dockerfile_instructions()
    copied = {
        source.rstrip("/")
        for kw, arguments in instructions
        if kw == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    include = setup_cfg()["options.packages.find"]["include"].split()
    packages = {name for name in include if "." not in name and "*" not in name}
    readme = setup_cfg()["metadata"]["long_description"].removeprefix("file:").strip()
    needed = packages | {"setup.py", "setup.cfg", readme}
    assert needed <= copied, f"the build never copies {sorted(needed - copied)}"
    assert any(
        kw == "RUN" and re.search(r"pip install( --\S+)* '?\.(\[metrics\])?'?$", arguments)
        for kw, arguments in instructions
    ), "the package is never pip-installed"
    assert one(final_stage(), "WORKDIR") == "/app"
    environment = " ".join(arguments for kw, arguments in final_stage() if kw == "ENV")
    assert "PYTHONPATH=/app" in environment, "user task code under /app must be importable"


def test_dockerignore_sends_what_the_build_copies_and_nothing_else():
    for kw, arguments in dockerfile_instructions():
        if kw == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert sent_to_builder(source.rstrip("/")), f".dockerignore drops {source}"
    assert sent_to_builder("common/migrations/0001_initial.sql")
    for kept_out in (
        ".git/config",
        "tests/conftest.py",
        "bench/x.py",
        ".env",
        "common/__pycache__/config.cpython-311.pyc",
        "task_processor.egg-info/PKG-INFO",
    ):
        assert not sent_to_builder(kept_out), f"{kept_out} would be sent to the builder"


def test_the_entrypoint_script_passes_options_to_the_processor():
    text = ENTRYPOINT_SCRIPT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'exec run-task-processor "$@"' in text and 'exec "$@"' in text
    check = subprocess.run(["sh", "-n", str(ENTRYPOINT_SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


# -- console scripts ---------------------------------------------------------------------------


def compose_commands() -> list[list[str]]:
    """Every command line the image services run: ``command:`` and healthcheck ``test:``."""
    commands = [compose_command(name) for name in IMAGE_SERVICES]
    commands += [compose_probe(name) for name in ("api", "processor")]
    return commands


def test_every_command_the_deployment_files_run_is_an_installed_console_script():
    scripts = set(console_scripts())
    stage = final_stage()
    called = {
        exec_form(one(stage, "CMD"))[0],
        exec_form(one(stage, "HEALTHCHECK").partition("CMD ")[2])[0],
        Path(shlex.split(service_key("ExecStart"))[0]).name,
    }
    called |= set(
        re.findall(
            r"exec (run-task-processor|run-api|check-health|task-processor)\b",
            ENTRYPOINT_SCRIPT.read_text(),
        )
    )
    for command in compose_commands():
        if command[0] != "python":  # the image's interpreter, for the HTTP probe
            called.add(command[0])
    assert called, "no command found"
    assert called <= scripts, f"not in setup.cfg console_scripts: {sorted(called - scripts)}"
    assert {"run-task-processor", "run-api", "check-health", "task-processor"} <= called


# -- docker-compose.yml ------------------------------------------------------------------------


def test_compose_has_the_services_with_healthchecks_and_dependency_conditions():
    for name in ("postgres", *IMAGE_SERVICES):
        assert "healthcheck" in compose_service(name), f"{name} has no healthcheck section"
    for name in IMAGE_SERVICES:
        service = compose_service(name)
        assert service["build"] == ".", f"{name} does not build the project's image"
        assert service["image"] == "task-processor:local", f"{name} runs another image"
        assert service["depends_on"], f"{name} starts without waiting for its dependencies"
    assert compose_service("migrate")["depends_on"] == {
        "postgres": {"condition": "service_healthy"}
    }
    assert compose_command("migrate") == ["task-processor", "migrate"]


def test_compose_postgres_probe_checks_tcp():
    """The official image first runs a server on its Unix socket only while it initialises: a
    probe of the socket passes before TCP, which the other services use, accepts connections.
    tests/test_deploy_compose.py shows it against such a server."""
    probe = compose_probe("postgres")
    assert probe[0] == "pg_isready"
    assert probe[probe.index("-h") + 1] == "127.0.0.1"


def test_compose_api_enqueues_on_the_processor_and_checks_it():
    environment = compose_environment("api")
    assert environment["TASK_RUN_METHOD"] == "TASK_PROCESSOR"
    assert config.parse_bool(environment["ENABLE_TASK_PROCESSOR_HEALTH_CHECK"]) is True
    command = compose_command("api")
    assert command[:2] == ["run-api", "--bind"]
    assert command[2].startswith("0.0.0.0:")
    probe = compose_probe("api")[-1]
    assert "/health?format=json" in probe
    # With the round trip enabled and no processor, /health answers only after the probe gives up.
    probe_timeout = float(re.search(r"timeout=(\d+(?:\.\d+)?)", probe).group(1))
    assert probe_timeout > DEFAULT_ROUND_TRIP_TIMEOUT_SECONDS
    assert seconds(compose_service("api")["healthcheck"]["timeout"]) > probe_timeout


def test_compose_processor_gets_longer_to_stop_than_its_drain_deadline():
    environment = compose_environment("processor")
    drain = int(environment.get("TASK_PROCESSOR_DRAIN_TIMEOUT", default_drain_timeout()))
    assert seconds(compose_service("processor")["stop_grace_period"]) > drain
    assert compose_command("processor")[0] == "run-task-processor"
    assert environment["TASK_PROCESSOR_TASKS"]
    assert "DATABASE_URL" in environment


def test_compose_sets_only_variables_that_something_reads():
    known = option_variables() | NON_OPTION_VARIABLES
    for name in IMAGE_SERVICES:
        unknown = set(compose_environment(name)) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


# -- systemd unit and its EnvironmentFile ----------------------------------------------------


def test_unit_speaks_notify_and_is_stopped_by_its_own_drain():
    assert service_key("Type") == "notify"
    assert service_key("NotifyAccess") == "main"
    assert seconds(service_key("WatchdogSec")) > 0
    assert service_key("KillMode") == "mixed"
    assert service_key("KillSignal") == "SIGTERM"
    drain = int(env_example().get("TASK_PROCESSOR_DRAIN_TIMEOUT", default_drain_timeout()))
    assert seconds(service_key("TimeoutStopSec")) > max(drain, default_drain_timeout())
    assert service_key("ExecReload") == """/bin/sh -c 'kill -HUP "$MAINPID"'"""


def test_unit_restarts_on_failure_but_not_on_a_configuration_error():
    assert service_key("Restart") == "on-failure"
    assert str(config.EX_CONFIG) in service_key("RestartPreventExitStatus").split()
    assert service_key("EnvironmentFile").startswith("/etc/")
    assert service_key("User") not in {"root", "0"}


def test_unit_is_hardened():
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
    }.items():
        assert service_key(key) == value, f"{key}={value} expected"
    families = service_key("RestrictAddressFamilies").split()
    assert "AF_UNIX" in families, "the notify socket and local PostgreSQL need AF_UNIX"
    assert {"AF_INET", "AF_INET6"} <= set(families)


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def systemd_analyze_verify(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    unit = directory / UNIT.name
    unit.write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """The unit names the documented install path; verify needs its program to exist, so the
    copy under test points at the console script installed here."""
    installed = Path(sys.executable).parent / "run-task-processor"
    assert installed.exists(), f"run-task-processor is not installed next to {sys.executable}"
    documented = shlex.split(service_key("ExecStart"))[0]
    result = systemd_analyze_verify(tmp_path, UNIT.read_text().replace(documented, str(installed)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"systemd-analyze warns:\n{result.stderr}"


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """Guards the test above: a wrong value must show up in its output."""
    result = systemd_analyze_verify(
        tmp_path, UNIT.read_text().replace("KillMode=mixed", "KillMode=gentle")
    )
    assert "kill mode" in result.stderr.lower()


def test_env_example_is_a_valid_configuration(monkeypatch):
    values = env_example()
    unknown = set(values) - option_variables() - NON_OPTION_VARIABLES
    assert not unknown, f"the example sets variables nothing reads: {sorted(unknown)}"
    for name in option_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    parser = config.build_parser("run-task-processor", "", list(config.OPTIONS))
    parsed = config.parse_args(parser, [])
    assert parsed.tasks == [values["TASK_PROCESSOR_TASKS"]]
    assert parsed.drain_timeout == int(values["TASK_PROCESSOR_DRAIN_TIMEOUT"])
    assert parsed.database_url == values["DATABASE_URL"]
