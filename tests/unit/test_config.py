"""Configuration: flags, environment variables and config files, refused with exit status 78
and a message that names the option, and passwords kept out of every message."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import config, db, redaction
from common.config import EX_CONFIG, OPTIONS, ConfigError, build_parser, parse_args
from supervisor.cli import processor_settings

PASSWORD = "s3cr3t-pw"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for option in OPTIONS.values():
        if option.env:
            monkeypatch.delenv(option.env, raising=False)


def parse(*argv: str):
    return parse_args(build_parser("run-task-processor", "test", list(OPTIONS)), argv)


def refused(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """Parse ``argv``, expect exit 78, return the one-line message."""
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == EX_CONFIG
    message = capsys.readouterr().err
    assert message.startswith("run-task-processor: configuration error: ")
    assert message.count("\n") == 1
    return message


def test_defaults_are_the_references():
    args = parse()
    assert (args.numthreads, args.sleepintervalms, args.graceperiodms, args.queuepopsize) == (
        5,
        2000,
        20000,
        10,
    )
    assert args.migrate is True and args.tasks is None


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--numthreads", "0"], ["--numthreads", "from 1 to 256", "got 0"]),
        (["--numthreads", "-3"], ["--numthreads", "got -3"]),
        (["--numthreads", "five"], ["--numthreads", "got 'five'"]),
        (["--numthreads", "1.5"], ["--numthreads", "whole number"]),
        (["--sleepintervalms", "5"], ["--sleepintervalms", "from 10 to"]),
        (["--graceperiodms", "-1"], ["--graceperiodms", "got -1"]),
        (["--queuepopsize", "1001"], ["--queuepopsize", "from 1 to 1000"]),
        (["--drain-timeout", "-1"], ["--drain-timeout"]),
        (["--log-level", "LOUD"], ["--log-level", "invalid choice", "DEBUG"]),
        (["--migrate", "maybe"], ["--migrate", "expected true or false"]),
        (["--no-such-option"], ["unrecognized arguments: --no-such-option"]),
    ],
)
def test_invalid_flags_exit_78_naming_the_option(capsys, argv, names):
    message = refused(capsys, *argv)
    assert all(name in message for name in names), message


@pytest.mark.parametrize(
    ("variable", "value", "option"),
    [
        ("TASK_PROCESSOR_NUM_THREADS", "0", "--numthreads"),
        ("TASK_PROCESSOR_SLEEP_INTERVAL_MS", "soon", "--sleepintervalms"),
        ("TASK_PROCESSOR_GRACE_PERIOD_MS", "-20000", "--graceperiodms"),
        ("TASK_PROCESSOR_QUEUE_POP_SIZE", "0", "--queuepopsize"),
        ("TASK_PROCESSOR_MIGRATE", "perhaps", "--migrate"),
        ("DATABASE_URL", "mysql://db/app", "--database-url"),
    ],
)
def test_invalid_environment_values_exit_78_naming_the_option(
    capsys, monkeypatch, variable, value, option
):
    monkeypatch.setenv(variable, value)
    assert option in refused(capsys)


def test_every_option_has_an_environment_variable_and_help():
    for option in OPTIONS.values():
        assert option.env and option.help, option.dest
        assert option.flags[0].startswith("--")


def test_flags_beat_environment_which_beats_the_config_file(tmp_path, monkeypatch):
    config_file = tmp_path / "processor.conf"
    config_file.write_text("numthreads = 7\nqueuepopsize = 3\ngraceperiodms = 5000\n")
    monkeypatch.setenv("TASK_PROCESSOR_QUEUE_POP_SIZE", "4")

    args = parse("--config", str(config_file), "--graceperiodms", "6000")

    assert (args.numthreads, args.queuepopsize, args.graceperiodms) == (7, 4, 6000)


def test_task_modules_from_flags_and_environment(monkeypatch):
    assert parse("--tasks", "a", "--tasks", "b,c").tasks == ["a", "b", "c"]
    monkeypatch.setenv("TASK_PROCESSOR_TASKS", "x, y")
    assert parse().tasks == ["x", "y"]


def test_an_unknown_config_file_key_exits_78_naming_it(capsys, tmp_path: Path):
    config_file = tmp_path / "processor.conf"
    config_file.write_text(
        f"numthreads = 2\nnum-threads = 3\ndatabse-url = postgresql://app:{PASSWORD}@db/app\n"
    )
    message = refused(capsys, "--config", str(config_file))
    assert "unrecognized arguments" in message and "--num-threads=3" in message
    assert PASSWORD not in message and "postgresql://app:***@db/app" in message


def test_an_invalid_config_file_value_exits_78(capsys, tmp_path: Path):
    config_file = tmp_path / "processor.conf"
    config_file.write_text("numthreads = 0\n")
    assert "--numthreads" in refused(capsys, "--config", str(config_file))


def test_a_missing_config_file_exits_78(capsys, tmp_path: Path):
    message = refused(capsys, "--config", str(tmp_path / "absent.conf"))
    assert "absent.conf" in message


@pytest.mark.parametrize(
    ("url", "explains"),
    [
        ("mysql://app@db/app", "must start with postgresql://"),
        ("postgresql://db:5432", "names no database"),
        ("postgresql:///app", "names no host"),
        ("postgresql://db:port/app", "host or port unreadable"),
        (f"postgresql://app:{PASSWORD}/x@db/app", "host or port unreadable"),
        (f"mysql://app:{PASSWORD}@db/app", "must start with postgresql://"),
    ],
)
def test_a_malformed_database_url_exits_78_without_its_password(capsys, url, explains):
    message = refused(capsys, "--database-url", url)
    assert "--database-url" in message and explains in message
    assert PASSWORD not in message
    assert "postgresql://USER:PASSWORD@HOST:5432/DBNAME" in message


def test_a_good_database_url_is_kept_as_given():
    url = f"postgresql://app:{PASSWORD}@db.internal:6432/app?sslmode=require"
    assert parse("--database-url", url).database_url == url


def test_scrub_hides_passwords_in_the_user_part_and_parameters():
    assert redaction.scrub("postgresql://app:pw@db:5432/app") == "postgresql://app:***@db:5432/app"
    assert (
        redaction.scrub("postgresql://db/app?password=pw&sslmode=require")
        == "postgresql://db/app?password=***&sslmode=require"
    )
    assert redaction.scrub("host=db password='p w' dbname=app") == "host=db password=*** dbname=app"
    assert redaction.scrub("postgresql://app@db/app") == "postgresql://app@db/app"


def test_scrub_finds_urls_inside_any_message():
    text = "bad value --x=postgresql://app:pw@db/app and postgres://u@h/d"
    assert redaction.scrub(text) == "bad value --x=postgresql://app:***@db/app and postgres://u@h/d"


def test_the_queue_database_is_its_own_when_configured(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/app")
    assert db.queue_database_url() == "postgresql://db/app"
    monkeypatch.setenv("TASK_PROCESSOR_DATABASE_URL", "postgresql://queue-db/queue")
    assert db.queue_database_url() == "postgresql://queue-db/queue"
    assert (
        db.queue_database_url("postgresql://flag/q", "postgresql://flag/app")
        == "postgresql://flag/q"
    )


def test_no_database_configured_and_no_usable_data_dir_says_what_to_set(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TASK_PROCESSOR_DATA_DIR", str(tmp_path / "a-file" / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("TASK_PROCESSOR_DATABASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"set DATABASE_URL .*TASK_PROCESSOR_DATABASE_URL"):
        db.queue_database_url()


def test_a_malformed_queue_database_url_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("TASK_PROCESSOR_DATABASE_URL", f"http://app:{PASSWORD}@db/app")
    with pytest.raises(ConfigError) as refused_:
        db.queue_database_url()
    assert PASSWORD not in str(refused_.value)


@pytest.mark.parametrize(("value", "expected"), [("True", True), ("0", False), ("yes", True)])
def test_env_flags(monkeypatch, value, expected):
    monkeypatch.setenv("ENABLE_SOMETHING", value)
    assert config.env_flag("ENABLE_SOMETHING") is expected


def test_an_unreadable_env_flag_names_the_variable(monkeypatch):
    monkeypatch.setenv("ENABLE_SOMETHING", "sometimes")
    with pytest.raises(ConfigError, match="ENABLE_SOMETHING: expected true or false"):
        config.env_flag("ENABLE_SOMETHING")


def test_the_configuration_document_names_every_option():
    document = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for option in OPTIONS.values():
        assert f"`{option.flags[0]} " in document or f"`{option.flags[0]}`" in document, (
            option.flags[0]
        )
        assert f"`{option.env}`" in document, option.env
        if option.default is not None and not isinstance(option.default, bool):
            row = next(
                line for line in document.splitlines() if line.startswith(f"| `{option.flags[0]}")
            )
            assert f"| {option.default} |" in row or f"| `{option.default}` |" in row, row


def test_one_config_file_serves_every_command(capsys, tmp_path: Path):
    shared = tmp_path / "task-processor.conf"
    shared.write_text(
        "database-url = postgresql://app@db/app\nnumthreads = 3\n"
        "bind = 0.0.0.0:9000\ntasks = [a.tasks]\n"
    )
    api = parse_args(
        build_parser("run-api", "test", ["database_url", "bind"]), ["--config", str(shared)]
    )
    assert api.bind == ("0.0.0.0", 9000) and not hasattr(api, "numthreads")
    processor = parse("--config", str(shared))
    assert processor.numthreads == 3 and processor.tasks == ["a.tasks"]
    shared.write_text("database-url = postgresql://app@db/app\nbnid = 0.0.0.0:9000\n")
    with pytest.raises(SystemExit) as exit_:
        parse_args(
            build_parser("run-api", "test", ["database_url", "bind"]), ["--config", str(shared)]
        )
    assert exit_.value.code == EX_CONFIG and "--bnid" in capsys.readouterr().err


def test_wake_ups_listen_on_the_queue_a_direct_url_or_nowhere(monkeypatch):
    queue = "postgresql://app@pgbouncer:6432/app"
    direct = "postgresql://app@db:5432/app"
    default = processor_settings(parse("--database-url", queue), "p")
    assert default.wake_up_url == queue
    separate = processor_settings(
        parse("--database-url", queue, "--listen-database-url", direct), "p"
    )
    assert separate.wake_up_url == direct
    monkeypatch.setenv("TASK_PROCESSOR_LISTEN_DATABASE_URL", "None")
    poll_only = processor_settings(parse("--database-url", queue), "p")
    assert poll_only.wake_up_url is None and poll_only.database_url == queue


def test_a_listen_url_that_is_neither_a_url_nor_none_exits_78(capsys):
    message = refused(capsys, "--listen-database-url", "off")
    assert "--listen-database-url" in message and "postgresql://" in message
