"""Paths of the deployment files and readers for them: the Dockerfile's instructions, Docker's
.dockerignore matching, and docker-compose.yml parsed as YAML."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT_SCRIPT = ROOT / "deploy" / "docker-entrypoint.sh"
IMAGE_SERVICES = ("migrate", "api", "processor")


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def console_scripts() -> dict[str, str]:
    """setup.cfg's console scripts: name -> ``module:function``."""
    entries = setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    return {
        name.strip(): target.strip()
        for name, _, target in (entry.partition("=") for entry in entries)
    }


def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed (anchors and ``<<`` merge keys resolved)."""
    return yaml.safe_load(COMPOSE.read_text())


def compose_service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


def compose_environment(name: str) -> dict[str, str]:
    return {key: str(value) for key, value in compose_service(name)["environment"].items()}


def compose_command(name: str) -> list[str]:
    command = compose_service(name).get("command")
    assert isinstance(command, list), f"service {name!r} needs its command in exec form (a list)"
    return command


def compose_probe(name: str) -> list[str]:
    """A service's healthcheck ``test:`` without its leading ``CMD``."""
    test = compose_service(name).get("healthcheck", {}).get("test")
    assert test, f"service {name!r} has no healthcheck test"
    assert test[0] == "CMD", f"{name}: healthcheck test must be exec form (CMD), got {test[0]}"
    return test[1:]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends with a dangling line continuation"
    return instructions


def dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    """Docker's matching: ``*`` stays within one path segment, ``**`` spans any number."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def sent_to_builder(path: str) -> bool:
    """Whether .dockerignore lets ``path`` into the build context (the last match wins, and a
    pattern that matches a parent directory matches everything below it)."""
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    prefixes = ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 2)]
    included = True
    for rule in rules:
        negated = rule.startswith("!")
        matcher = dockerignore_pattern(rule.lstrip("!"))
        if any(matcher.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def packages() -> list[str]:
    """The project's top-level packages, as setup.cfg lists them for the build."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    names = config["options.packages.find"]["include"].split()
    return [name for name in names if "." not in name]
