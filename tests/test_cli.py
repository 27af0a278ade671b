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


def test_bad_device_and_unknown_run_are_one_line_errors(tmp_path: Path, capsys, monkeypatch) -> None:
    params = str(Path(__file__).resolve().parents[1] / "params.yaml")
    assert main(["latency", "--params", params, "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "device 'tpu': expected auto, cpu, cuda or cuda:<index>" in err and "Traceback" not in err, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    assert main(["evaluate-run", "--params", params, "--run-id", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow run '0123456789abcdef'" in err and "Traceback" not in err, err
