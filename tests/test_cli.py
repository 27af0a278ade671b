"""The ``naslung`` command line: global options anywhere, one-line errors."""

from __future__ import annotations

from pathlib import Path

from naslung.cli import main


def test_params_is_accepted_before_and_after_the_subcommand(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.yaml"
    for argv in (
        ["--params", str(missing), "validate"],
        ["validate", "--params", str(missing)],
        ["serve", "package", "--params", str(missing)],
        ["--params", "params.yaml", "validate", "--params", str(missing)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"params file not found: {missing}" in err and "Traceback" not in err, (argv, err)
