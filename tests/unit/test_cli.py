"""The ``naslung`` command line: global options anywhere, one-line errors."""

from __future__ import annotations

import json
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
    params = str(Path(__file__).resolve().parents[2] / "params.yaml")
    assert main(["latency", "--params", params, "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "device 'tpu': expected auto, cpu, cuda or cuda:<index>" in err and "Traceback" not in err, err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    assert main(["evaluate-run", "--params", params, "--run-id", "0123456789abcdef"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow run '0123456789abcdef'" in err and "Traceback" not in err, err
    # no champion (the gate refused every version, or nothing is registered): say so and how to pick one
    assert main(["serve", "package", "--params", params]) == 2
    err = capsys.readouterr().err
    assert "naslung-ensemble: no version holds alias 'champion'" in err and "`--version N`" in err, err
    assert "Traceback" not in err, err
    assert main(["serve", "package", "--params", params, "--version", "7"]) == 2
    assert "naslung-ensemble: no version 7 in sqlite:///" in capsys.readouterr().err
    # a missing patch store (naslung.errors.UserError) says which file and what to run
    assert main(["train", "--params", params, "--set", f"paths.artifacts={tmp_path}", "--fold", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/manifest.csv: not found (run `naslung prepare` first)" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_set_is_accepted_anywhere_in_order_and_shorthands_win(tmp_path: Path, capsys) -> None:
    """``--set`` before COMMAND, after it and after the nested subcommand all apply, in command-line order
    (later wins); a command's own flag (``--n-scans``) is applied on top of every ``--set``."""
    params = str(Path(__file__).resolve().parents[2] / "params.yaml")

    def synth(*argv: str) -> dict:
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        code = main(["--params", params, *argv[:2], "data", *argv[2:4], "synth", *argv[4:], "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        capsys.readouterr()
        return json.loads((out / "synth_summary.json").read_text())

    common = ("--set", "synth.n_scans=3", "--set", "synth.n_scans=4", "--set", "synth.seed=5", "--tables-only")
    s = synth(*common, "--no-progress")
    assert (s["n_scans"], s["seed"]) == (4, 5)
    s = synth(*common, "--n-scans", "2", "--no-progress")
    assert (s["n_scans"], s["seed"]) == (2, 5)


def test_bad_set_is_a_one_line_error_naming_the_key(capsys) -> None:
    for argv, words in (
        (["--set", "search.budgte=3", "validate"], "unknown key 'search.budgte' (did you mean 'search.budget'?)"),
        (["validate", "--set", "validate.class_fraction=[0.1]"], "validate.class_fraction[1]: Field required"),
        (["serve", "package", "--set", "serve.device=gpu"], "serve.device: Input should be 'auto' or 'cpu'"),
        (["--set", "budget", "validate"], "--set 'budget': expected SECTION.KEY=VALUE"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_help_shows_the_values_of_params_defaults(tmp_path: Path, capsys) -> None:
    """``--help`` names each default as the params key *and* the value the run would use, read from the
    ``--params`` file given on the command line (so an edited file shows its own values)."""
    import pytest
    import yaml

    repo = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((repo / "params.yaml").read_text())
    budget, device = data["search"]["budget"], data["train"]["device"]
    data["search"]["budget"] = budget + 11
    custom = tmp_path / "p.yaml"
    custom.write_text(yaml.safe_dump(data))
    for argv, want in (
        (["--params", str(repo / "params.yaml"), "search", "--help"], f"search.budget = {budget})"),
        (["search", "--params", str(custom), "--help"], f"search.budget = {budget + 11})"),
        (["--params", str(repo / "params.yaml"), "train", "--help"], f"train.device = {device})"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert want in out, (argv, out)
