"""The params schema: one source of defaults (params.yaml == schema defaults), strict keys and enums with
one-line errors naming the key, ``--set`` parsing, override precedence, and dvc.yaml's templated paths and
per-stage params agreeing with the schema and with :mod:`naslung.artifact_paths`."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from naslung.artifact_paths import ArtifactPaths
from naslung.params import (
    SEARCH_STRATEGIES,
    Params,
    ParamsError,
    SearchParams,
    load_params,
    parse_params,
    parse_set,
    schema_keys,
    to_dict,
)

REPO = Path(__file__).resolve().parents[2]
PARAMS_YAML = REPO / "params.yaml"


def _typed(value: Any) -> Any:
    """JSON text keeps the difference between 1 and 1.0 (and True and 1) that ``==`` hides."""
    return json.dumps(value, sort_keys=True)


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(Params) if dataclasses.is_dataclass(_section_type(f.name))]


def _section_type(name: str) -> Any:
    return Params.__pydantic_fields__[name].annotation  # type: ignore[attr-defined]


# --- one source of defaults -------------------------------------------------------------------------------


def test_params_yaml_is_exactly_the_schema_defaults() -> None:
    """Decision: the schema's defaults are the one source, and the committed params.yaml spells every one of
    them (DVC needs each key listed in dvc.yaml to be in the file). Any drift — a key missing from the file,
    another value, or another type (1 vs 1.0) — fails here, naming the keys."""
    raw = yaml.safe_load(PARAMS_YAML.read_text(encoding="utf-8"))
    defaults = to_dict(Params())
    assert list(raw) == list(defaults), "params.yaml sections differ from the schema's (or their order)"
    drift = []
    for section, value in defaults.items():
        if not isinstance(value, dict):
            if _typed(raw[section]) != _typed(value):
                drift.append(f"{section}: file {raw[section]!r} vs schema {value!r}")
            continue
        for key in sorted(set(value) | set(raw[section] or {})):
            got, want = (raw[section] or {}).get(key, "<missing>"), value.get(key, "<not in schema>")
            if _typed(got) != _typed(want):
                drift.append(f"{section}.{key}: file {got!r} vs schema {want!r}")
    assert not drift, "params.yaml and the schema defaults drifted apart:\n" + "\n".join(drift)
    assert load_params(PARAMS_YAML) == Params()


def test_every_field_has_a_description() -> None:
    """Units live in the field descriptions (the docstring under each field); none may be missing."""
    missing = []
    for name, info in Params.__pydantic_fields__.items():  # type: ignore[attr-defined]
        if not info.description:
            missing.append(name)
        if dataclasses.is_dataclass(info.annotation):
            missing += [
                f"{name}.{k}"
                for k, sub in info.annotation.__pydantic_fields__.items()  # type: ignore[union-attr]
                if not (sub.description or "").strip()
            ]
    assert not missing, missing
    assert "mm" in Params.__pydantic_fields__["prepare"].annotation.__pydantic_fields__["spacing_mm"].description  # type: ignore[attr-defined]


def test_to_dict_round_trip_keeps_keys_values_and_types() -> None:
    p = load_params(PARAMS_YAML)
    d = to_dict(p)
    assert isinstance(d["prepare"]["hu_window"], list) and isinstance(d["prepare"]["hu_window"][0], float)
    assert isinstance(d["dnas"]["layers"][0], list) and d["ensemble"]["specs"] == []
    again = parse_params(d)
    assert again == p and _typed(to_dict(again)) == _typed(d) and again.section_hash() == p.section_hash()
    assert p.dnas.layers[0] == (8, 1) and isinstance(p.train.test_folds, tuple)


def test_sections_are_frozen_and_replace_validates() -> None:
    p = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.search.budget = 3  # type: ignore[misc]
    assert dataclasses.replace(p.search, budget=3).budget == 3
    with pytest.raises(ValueError, match="strategy"):
        dataclasses.replace(p.search, strategy="grid")  # type: ignore[arg-type]
    assert p.replace(search=SearchParams(budget=2)).search.budget == 2
    assert SEARCH_STRATEGIES == ("pop", "dnas")


# --- strict keys and enums ----------------------------------------------------------------------------------


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_unknown_keys_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, {"search": {"budgte": 3}}))
    msg = str(err.value)
    assert "unknown key 'search.budgte'" in msg and "did you mean 'search.budget'" in msg and "\n" not in msg
    assert str(tmp_path / "params.yaml") in msg
    with pytest.raises(ParamsError, match=r"unknown key 'serach' \(did you mean 'search'\?\)"):
        parse_params({"serach": {"budget": 3}})
    with pytest.raises(ParamsError, match="search: Input should be a dictionary"):
        parse_params({"search": 3})


def _literal_fields() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for section in _sections():
        for key, info in _section_type(section).__pydantic_fields__.items():
            if typing.get_origin(info.annotation) is typing.Literal:
                out.append((f"{section}.{key}", typing.get_args(info.annotation)))
    return out


def test_every_enum_refuses_other_values_naming_the_key() -> None:
    fields = _literal_fields()
    assert {k for k, _ in fields} >= {"search.strategy", "search.runner", "train.lr_schedule", "dnas.mixed"}
    for key, choices in fields:
        section, leaf = key.split(".")
        with pytest.raises(ParamsError) as err:
            parse_params({section: {leaf: "nope"}})
        msg = str(err.value)
        assert msg.startswith(f"params: {key}: Input should be ") and "(got 'nope')" in msg, msg
        assert all(f"'{c}'" in msg for c in choices) and "\n" not in msg
        for choice in choices:  # every listed choice is accepted
            assert getattr(getattr(parse_params({section: {leaf: choice}}), section), leaf) == choice


def test_types_and_bounds_are_checked_with_the_key_named() -> None:
    cases = {
        "search.budget": (0, "greater than or equal to 1"),
        "prepare.hu_window": ([1.0, 2.0, 3.0], "at most 2 items"),
        "train.device": ("tpu", "should match pattern"),
        "serve.inference_port": (70000, "less than or equal to 65535"),
        "train.lr": ("fast", "valid number"),
    }
    for key, (value, words) in cases.items():
        with pytest.raises(ParamsError) as err:
            parse_params(None, {key: value})
        assert f"params: {key}" in str(err.value) and words in str(err.value), str(err.value)
    both = pytest.raises(ParamsError, match=r"search.budget: .*; search.runner: ")
    with both:
        parse_params({"search": {"budget": 0, "runner": "cluster"}})


def test_bad_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("search:\n  budget: [1\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"p.yaml: not valid YAML at line \d+") as err:
        load_params(path)
    assert "\n" not in str(err.value)


# --- --set and override precedence --------------------------------------------------------------------------


def test_set_items_parse_as_yaml_with_text_fields_taken_as_given() -> None:
    got = parse_set(
        [
            "search.budget=3",
            "train.lr=0.001",
            "train.flips=false",
            "search.dask_address=null",
            "train.betas=[0.5, 0.9]",
            "dnas.layers=[[8, 1], [16, 2]]",
            "seed=7",
            "model.spec=[4, 4, [4], [8], [8]]",
            "serve.score_cron=*/5 * * * *",
            "registry.name=123",
            'serve.host="::1"',
            "ensemble.members=[a.json, b.json]",
        ]
    )
    assert got == {
        "search.budget": 3,
        "train.lr": 0.001,
        "train.flips": False,
        "search.dask_address": None,
        "train.betas": [0.5, 0.9],
        "dnas.layers": [[8, 1], [16, 2]],
        "seed": 7,
        "model.spec": "[4, 4, [4], [8], [8]]",
        "serve.score_cron": "*/5 * * * *",
        "registry.name": "123",
        "serve.host": "::1",
        "ensemble.members": ["a.json", "b.json"],
    }
    p = parse_params(None, got)
    assert (
        p.dnas.layers == ((8, 1), (16, 2))
        and p.train.betas == (0.5, 0.9)
        and p.ensemble.members == ("a.json", "b.json")
    )
    assert p.model.spec == "[4, 4, [4], [8], [8]]" and p.search.dask_address is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("search.budgte=3", "unknown key 'search.budgte' (did you mean 'search.budget'?)"),
        ("nosuch.key=1", "unknown key 'nosuch.key'"),
        ("seed.x=1", "unknown key 'seed.x'"),
        ("search=1", "'search' is a section; set its keys"),
        ("search.budget", "expected SECTION.KEY=VALUE"),
        ("train.lr=[1", "'train.lr': value '[1' is not valid YAML"),
    ],
)
def test_bad_set_items_are_one_line_errors(item: str, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_set([item])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_override_precedence(tmp_path: Path) -> None:
    """File < each --set in order (later wins) < with_overrides (the commands' shorthand flags)."""
    path = _write(tmp_path, {"search": {"budget": 5, "epochs": 2}, "seed": 1})
    assert load_params(path).search.budget == 5
    p = load_params(path, overrides=["search.budget=7", "search.budget=8", "seed=3"])
    assert (p.search.budget, p.search.epochs, p.seed) == (8, 2, 3)
    assert load_params(path, overrides={"search.budget": 9}).search.budget == 9
    q = p.with_overrides({"search.budget": 11, "search.epochs": None}, drop_none=True)
    assert (q.search.budget, q.search.epochs, q.seed) == (11, 2, 3)
    assert p.with_overrides({"search.dask_address": None}).search.dask_address is None  # None is a value
    assert p.with_overrides({}) is p
    with pytest.raises(ParamsError, match=r"unknown key 'search\.bugdet'"):
        p.with_overrides({"search.bugdet": 1})
    with pytest.raises(ParamsError, match=r"search.budget: Input should be greater than or equal to 1"):
        p.with_overrides({"search.budget": 0})
    # a file missing a section still takes a dotted override for it
    assert load_params(path, overrides=["dnas.epochs=3"]).dnas.epochs == 3


# --- dvc.yaml vs the schema and the artifact paths ----------------------------------------------------------


def _dvc_stages() -> dict[str, Any]:
    stages: dict[str, Any] = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return stages


def _resolve(text: str, values: dict[str, Any]) -> str:
    def one(m: re.Match[str]) -> str:
        node: Any = values
        for part in m.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", one, text)


def _names(entries: list[Any]) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def test_dvc_params_name_schema_keys_and_paths_match_artifact_paths() -> None:
    keys = set(schema_keys())
    sections = set(_sections())
    stages = _dvc_stages()
    for name, stage in stages.items():
        for entry in stage["params"]:
            assert entry in keys or entry in sections, (
                f"dvc.yaml stage {name}: params entry {entry!r} not in the schema"
            )
    values = to_dict(load_params(PARAMS_YAML))
    paths = ArtifactPaths.from_params(load_params(PARAMS_YAML))
    a, s, e = paths.artifacts, paths.search, paths.ensemble

    def outs(stage: str, kind: str) -> list[Path]:
        return [Path(_resolve(x, values)) for x in _names(stages[stage].get(kind, []))]

    # metrics.json is the one DVC metrics file (the headline); the other small JSON outputs are git-tracked outs
    assert outs("prepare", "outs") == [a.patches, a.manifest, a.rejects, a.prepare_metrics]
    assert outs("validate", "outs") == [a.validation]
    assert outs("search", "outs") == [s.front, s.selected, s.pareto, s.summary]
    assert outs("train", "outs") == [e.root] and e.index.parent == e.model.parent == e.root
    assert outs("evaluate", "metrics") == [a.metrics] and outs("evaluate", "plots") == [a.plots]
    assert outs("register", "outs") == [a.registration]
    assert [st for st in stages if stages[st].get("metrics")] == ["evaluate"]
    assert Path(values["ensemble"]["members"]) == s.selected  # train's dep on the selection
    for name, stage in stages.items():
        for dep in stage["deps"]:
            assert "${" not in _resolve(dep, values)  # every ${...} resolves from params.yaml
            if "${" not in dep:  # a code dependency: it must exist (a renamed module would break dvc repro)
                assert (REPO / dep).exists(), f"dvc.yaml stage {name}: dependency {dep} does not exist"
