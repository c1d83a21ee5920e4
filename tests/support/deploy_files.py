"""Paths of the deployment files and readers for them: the Dockerfile's instructions, Docker's
.dockerignore matching, and the parts of docker-compose.yml the tests use (no YAML parser is a
dependency: the file keeps a simple, regular layout, and the readers fail loudly when it does
not)."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

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
    return {name.strip(): target.strip()
            for name, _, target in (entry.partition("=") for entry in entries)}


def compose_lines() -> list[str]:
    return COMPOSE.read_text().splitlines()


def compose_service(name: str) -> list[str]:
    """The lines of one service block (a two-space-indented key under ``services:``)."""
    lines = compose_lines()
    start = lines.index("services:")
    block: list[str] = []
    inside = False
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        if re.fullmatch(r"  [\w-]+:", line):
            inside = line.strip() == f"{name}:"
            continue
        if inside:
            block.append(line)
    assert block, f"docker-compose.yml has no service {name!r}"
    return block


def compose_value(block: list[str], key: str) -> str | None:
    values = [line.split(":", 1)[1].strip() for line in block
              if line.strip().startswith(f"{key}:")]
    assert len(values) <= 1, f"{key} appears more than once in one service: {values}"
    return values[0] if values else None


def compose_environment(block: list[str]) -> dict[str, str]:
    """The service's environment, with the ``<<: *database`` anchor expanded."""
    environment: dict[str, str] = {}
    lines = compose_lines()
    anchor = lines.index("x-database: &database")
    for line in lines[anchor + 1:]:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition(":")
        environment[key] = value.strip()
    start = block.index("    environment:")
    for line in block[start + 1:]:
        if not line.startswith("      "):
            break
        key, _, value = line.strip().partition(":")
        if key != "<<":
            environment[key] = value.strip().strip('"')
    return environment


def compose_command(name: str) -> list[str]:
    """A service's ``command:``, written as a JSON flow list."""
    command = compose_value(compose_service(name), "command")
    assert command, f"service {name!r} has no command"
    return json.loads(command)


def compose_probe(name: str) -> list[str]:
    """A service's healthcheck ``test:`` without its leading ``CMD``."""
    test = compose_value(compose_service(name), "test")
    assert test, f"service {name!r} has no healthcheck test"
    probe = json.loads(test)
    assert probe[0] == "CMD", f"{name}: healthcheck test must be exec form (CMD), got {probe[0]}"
    return probe[1:]


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
    rules = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
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
