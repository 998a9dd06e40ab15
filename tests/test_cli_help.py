"""Every command explains itself, with an example, and `run --help` lists the exit codes."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from batchrun.cli import cli


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
    return found


@pytest.mark.parametrize("path", all_commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    assert command.help and len(command.help.strip()) > 20
    if not isinstance(command, click.Group):
        assert f"batchrun {' '.join(path)}" in " ".join(result.output.split()), "no example in the help"


def test_run_help_lists_every_exit_code() -> None:
    output = CliRunner().invoke(cli, ["run", "--help"]).output
    for code in "012345":
        assert f"  {code}  " in output, output
    assert "BATCHRUN_BASE_URL" in output and "BATCHRUN_DB" in output


def test_maintenance_commands_and_log_options_are_listed() -> None:
    names = CliRunner().invoke(cli, ["--help"]).output
    for command in ("retry", "cancel"):
        assert f"  {command} " in names, names
    retry = " ".join(CliRunner().invoke(cli, ["retry", "--help"]).output.split())
    assert "--batch" in retry and "--code" in retry
    run = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "--log-file" in run and "BATCHRUN_LOG_FILE" in run
    assert "--log-format [text|json]" in run and "BATCHRUN_LOG_FORMAT" in run


@pytest.mark.parametrize("command", ["run", "models", "estimate", "cancel"])
def test_commands_that_reach_the_provider_take_a_ca_bundle_and_name_the_proxy_variables(command: str) -> None:
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    assert "--ca-bundle FILE" in text and "BATCHRUN_CA_BUNDLE" in text and "SSL_CERT_FILE" in text
    assert "HTTPS_PROXY" in text and "NO_PROXY" in text


def test_run_help_says_how_long_the_start_up_probe_is_retried() -> None:
    text = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "--probe-patience DURATION" in text and "BATCHRUN_PROBE_PATIENCE" in text and "[default: 1m]" in text
