"""docker-compose.yml's services started with ``podman run``, as Compose starts them.

podman-compose ignores ``depends_on`` conditions, so this module does what Compose does: it
starts the services in dependency order, and before each one waits for the condition it names
on each dependency (``service_started``, ``service_healthy``, ``service_completed_successfully``).
Each service's keys become ``podman run`` options; a key this module does not know fails the
test, so the file cannot grow a setting that the test silently drops.

What cannot be the same here is declared in one place, :class:`Substitutions`: the ``postgres``
service is the host's PostgreSQL (no registry serves its image), the services use the host's
network (so the database is reached on 127.0.0.1 and the API's port is a free one), and the
image is the one the run built from the same Dockerfile.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from graphlib import TopologicalSorter
from typing import Any

from deploy_files import ROOT, compose
from deploy_podman import Containers

KNOWN_KEYS = {
    "image",
    "build",
    "environment",
    "command",
    "healthcheck",
    "depends_on",
    "restart",
    "ports",
    "volumes",
    "stop_grace_period",
}
# Compose durations: "1m30s", "45s", "500ms".
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def seconds(duration: str) -> float:
    parts = DURATION.findall(duration)
    assert "".join(number + unit for number, unit in parts) == duration, (
        f"not a Compose duration: {duration!r}"
    )
    return sum(float(number) * DURATION_SECONDS[unit] for number, unit in parts)


@dataclass(frozen=True)
class Substitutions:
    """The test's deviations from the file, applied to every string of a service."""

    database_url: str
    api_port: int
    image: str
    host_services: frozenset[str] = frozenset({"postgres"})

    def apply(self, text: str) -> str:
        text = re.sub(r"postgresql://[^\s\"']*@postgres:5432/\w+", self.database_url, text)
        return re.sub(r"(0\.0\.0\.0|127\.0\.0\.1):8000", f"127.0.0.1:{self.api_port}", text)


def start_order(services: dict[str, Any]) -> list[str]:
    """Service names, each after everything it depends on."""
    graph = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    return list(TopologicalSorter(graph).static_order())


def healthcheck_options(healthcheck: dict[str, Any]) -> list[str]:
    if healthcheck.get("disable"):
        return ["--no-healthcheck"]
    test = healthcheck["test"]
    assert test[0] == "CMD", f"healthcheck test must be exec form (CMD), got {test[0]}"
    options = ["--health-cmd", json.dumps(test[1:])]
    for key, option in (
        ("interval", "--health-interval"),
        ("timeout", "--health-timeout"),
        ("start_period", "--health-start-period"),
    ):
        if key in healthcheck:
            options += [option, f"{seconds(healthcheck[key]):g}s"]
    if "retries" in healthcheck:
        options += ["--health-retries", str(healthcheck["retries"])]
    return options


def run_options(name: str, service: dict[str, Any], substitutions: Substitutions) -> list[str]:
    """``podman run`` options for a service of the project's image."""
    unknown = set(service) - KNOWN_KEYS
    assert not unknown, f"{name}: the test does not know how to apply {sorted(unknown)}"
    assert service["build"] == ".", f"{name}: the test builds the image from the repository root"
    options: list[str] = []
    for key, value in service.get("environment", {}).items():
        options += ["--env", f"{key}={substitutions.apply(str(value))}"]
    for volume in service.get("volumes", []):
        source, _, target = volume.partition(":")
        assert source.startswith("./"), f"{name}: only bind mounts of the checkout: {volume}"
        options += ["--volume", f"{ROOT / source[2:]}:{target}"]
    if "healthcheck" in service:
        options += [
            substitutions.apply(option) for option in healthcheck_options(service["healthcheck"])
        ]
    if "restart" in service:
        options += ["--restart", service["restart"]]
    if "stop_grace_period" in service:
        options += ["--stop-timeout", f"{seconds(service['stop_grace_period']):g}"]
    # "ports" needs nothing on the host's network: the API binds the substituted port.
    return options


@dataclass
class Stack:
    """The services of one ``up``: service name -> container name (None on the host)."""

    containers: Containers
    substitutions: Substitutions
    services: dict[str, Any]
    started: dict[str, str | None]

    def container(self, name: str) -> str:
        container = self.started[name]
        assert container is not None, f"{name} runs on the host"
        return container


def host_probe(service: dict[str, Any]) -> list[str]:
    """A host service's healthcheck command, run on the host (the substituted server)."""
    return service["healthcheck"]["test"][1:]


def is_healthy(stack: Stack, name: str) -> bool:
    if stack.started[name] is None:
        probe = host_probe(stack.services[name])
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    podman = stack.containers.podman
    if podman.run("healthcheck", "run", stack.container(name), check=False).returncode != 0:
        return False
    return podman.inspect(stack.container(name), "{{.State.Health.Status}}") == "healthy"


def exit_code(stack: Stack, name: str) -> int | None:
    """The exit status of a service's container once it has exited, else None."""
    state = stack.containers.podman.inspect(
        stack.container(name), "{{.State.Status}} {{.State.ExitCode}}"
    ).split()
    return int(state[1]) if state[0] == "exited" else None


def condition_met(stack: Stack, dependency: str, condition: str) -> bool:
    if condition == "service_started":
        return True
    if condition == "service_healthy":
        return is_healthy(stack, dependency)
    if condition == "service_completed_successfully":
        status = exit_code(stack, dependency)
        assert status in (None, 0), f"{dependency} exited {status}: its dependants never start"
        return status == 0
    raise AssertionError(f"unknown depends_on condition {condition!r}")


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as dependency -> condition (the short list form means started)."""
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def up(containers: Containers, substitutions: Substitutions, wait: Any, timeout: float) -> Stack:
    """Start every service in order, each once the conditions of its dependencies hold.

    ``wait(predicate, timeout=..., message=...)`` polls until the predicate holds.
    """
    services = compose()["services"]
    stack = Stack(containers, substitutions, services, {})
    for name in start_order(services):
        service = services[name]
        for dependency, condition in dependencies(service).items():
            wait(
                lambda dependency=dependency, condition=condition: condition_met(
                    stack, dependency, condition
                ),
                timeout=timeout,
                message=f"{name}: {dependency} to reach {condition}",
            )
        if name in substitutions.host_services:
            stack.started[name] = None
            continue
        command = [substitutions.apply(word) for word in service.get("command", [])]
        stack.started[name] = containers.start(
            substitutions.image, *command, options=tuple(run_options(name, service, substitutions))
        )
    return stack
