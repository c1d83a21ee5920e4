"""docs/operations.md stays true to the code: the options it names exist, with the environment
variables and defaults it gives them."""

from __future__ import annotations

import re

import pytest
from deploy_files import ROOT, packages

from common import config

GUIDE = ROOT / "docs" / "operations.md"
# Flags of other programs that the guide's examples use (docker, systemctl, pip, useradd...),
# and argparse's own.
OTHER_PROGRAMS_FLAGS = {
    "--help",
    "--rm",
    "--build",
    "--scale",
    "--init",
    "--signal",
    "--no-cache-dir",
    "--system",
    "--home-dir",
    "--shell",
    "--now",
    "--kill-whom",
    "--kill-who",
    # podman and debootstrap, in "Checking the deployment by hand"
    "--change",
    "--format",
    "--health-cmd",
    "--health-interval",
    "--hostname",
    "--include",
    "--name",
    "--network",
    "--privileged",
    "--pull",
    "--restart",
    "--stop-timeout",
    "--systemd",
    "--variant",
    "--volume",
}


def package_source() -> str:
    return "\n".join(
        path.read_text()
        for package in packages()
        for path in sorted((ROOT / package).rglob("*.py"))
    )


def guide() -> str:
    return GUIDE.read_text()


def test_every_flag_in_the_guide_is_defined_by_a_command():
    source = package_source()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", guide()))
    unknown = {flag for flag in flags - OTHER_PROGRAMS_FLAGS if f'"{flag}"' not in source}
    assert not unknown, f"docs/operations.md names flags no command defines: {sorted(unknown)}"


def test_every_environment_variable_in_the_guide_is_read_by_the_code():
    source = package_source()
    names = set(
        re.findall(
            r"\b((?:TASK_PROCESSOR|ENABLE_TASK_PROCESSOR|TASK_RUN|LOG|SENTRY)"
            r"_[A-Z_]*[A-Z]|DATABASE_URL)\b",
            guide(),
        )
    )
    unknown = {name for name in names if f'"{name}"' not in source}
    assert not unknown, f"docs/operations.md names variables nothing reads: {sorted(unknown)}"


def configuration_table() -> list[list[str]]:
    rows = []
    for line in guide().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `--") and len(cells) == 4:
            rows.append(cells)
    return rows


def test_configuration_table_matches_the_options():
    rows = configuration_table()
    assert len(rows) >= 10, "the configuration table was not found"
    by_flag = {option.flags[0]: option for option in config.OPTIONS.values()}
    for flag_cell, env_cell, default_cell, _ in rows:
        flag, env = flag_cell.strip("`"), env_cell.strip("`")
        assert flag in by_flag, f"{flag} is not an option"
        option = by_flag[flag]
        assert option.env == env, f"{flag}: the table says {env}, the option reads {option.env}"
        default = str(option.default).lower()
        assert default_cell.split()[0].lower() == default, (
            f"{flag}: the table says default {default_cell}, the option's is {option.default}"
        )


@pytest.mark.parametrize("status", [0, config.EX_CONFIG, 1])
def test_exit_statuses_are_documented(status):
    assert re.search(rf"^\| {status} \|", guide(), re.MULTILINE), f"exit status {status}"
