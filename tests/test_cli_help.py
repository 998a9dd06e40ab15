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
