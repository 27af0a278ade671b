"""``naslung prepare``: annotations + raw scans -> patch store (and, from the synth area, ``data synth``)."""

from __future__ import annotations

import argparse
import json

from naslung.commands import params_of


def add_parsers(sub: argparse._SubParsersAction) -> None:
    prep = sub.add_parser(
        "prepare",
        help="cut 32^3 1 mm nodule patches from the raw scans into the patch store",
        description="Read every scan once, cut one windowed patch per labelled nodule, write patches.npy, "
        "manifest.csv, rejects.csv and prepare_metrics.json (defaults: params paths.* and prepare).",
    )
    prep.add_argument("--raw", help="raw-data folder (.mhd scans / DICOM series; default: paths.raw)")
    prep.add_argument("--annotations", help="annotation table (default: paths.annotations)")
    prep.add_argument("--out", help="output folder of the patch store (default: paths.artifacts)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)
    _add_data_group(sub)


def _prepare(args: argparse.Namespace) -> int:
    from naslung.data.prepare import prepare

    params = params_of(
        args, {"paths.raw": args.raw, "paths.annotations": args.annotations, "paths.artifacts": args.out}
    )
    summary = prepare(
        params.paths.raw,
        params.paths.annotations,
        params.paths.artifacts,
        params.prepare,
        progress=not args.no_progress,
    )
    brief = {
        k: summary[k]
        for k in (
            "n_rows",
            "n_nodules",
            "n_malignant",
            "n_benign",
            "n_rejected",
            "rejected_by_reason",
            "diameter_baseline",
        )
    }
    print(json.dumps(brief, indent=2))
    return 0


# --- data synth (synth area) -------------------------------------------------------------------------


def _add_data_group(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="embedded default dataset (data synth, data realism)",
        description="Dataset commands: `naslung data synth` writes the embedded synthetic LUNA16-layout set; "
        "`naslung data realism` compares synthetic and real patches.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_sub.required = True
    synth = data_sub.add_parser(
        "synth",
        help="write the deterministic synthetic chest-CT dataset in the LUNA16 layout",
        description="Write subset0..9/<uid>.mhd/.raw, annotations.csv, annotations_with_malignancy.csv, "
        "synth_truth.csv and synth_summary.json. Same seed -> byte-identical files "
        "(defaults: params paths.raw and synth).",
    )
    synth.add_argument("--out", help="output folder (default: paths.raw)")
    synth.add_argument("--n-scans", type=int, help="number of scans (default: synth.n_scans)")
    synth.add_argument("--seed", type=int, help="random seed (default: synth.seed)")
    synth.add_argument("--workers", type=int, help="rendering processes (default: synth.workers)")
    synth.add_argument("--tables-only", action="store_true", help="write the tables and summary, no scans")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)
    _add_realism(data_sub)


def _synth(args: argparse.Namespace) -> int:
    from naslung.data.synth import synthesize

    params = params_of(
        args,
        {"synth.n_scans": args.n_scans, "synth.seed": args.seed, "synth.workers": args.workers, "paths.raw": args.out},
    )
    summary = synthesize(params.paths.raw, params.synth, render=not args.tables_only, progress=not args.no_progress)
    brief = {
        k: summary[k]
        for k in ("n_scans", "n_nodules", "n_malignant", "n_benign", "n_excluded", "diameter_baseline", "raw_bytes")
    }
    print(json.dumps(brief, indent=2))
    return 0


# --- data realism (synthetic vs real patch statistics) -----------------------------------------------


def _add_realism(data_sub: argparse._SubParsersAction) -> None:
    realism = data_sub.add_parser(
        "realism",
        help="compare synthetic and real 32^3 HU patches on the same statistics, side by side",
        description="Generate a small synthetic set (in a temporary folder), cut HU patches at its nodule "
        "centres and compare per-patch statistics (HU band fractions of the whole patch and the outer "
        "shell, lung HU, voxel noise, share touching pleura / vessels) with the real LIDC patches; "
        "print the table and write realism.json + realism.png (see naslung.data.realism).",
    )
    realism.add_argument("--scans", type=int, default=4, help="synthetic scans to generate (default: 4)")
    realism.add_argument("--seed", type=int, help="synthetic seed (default: synth.seed)")
    realism.add_argument("--real", help="real patches .npz (default: registry.regression_patches)")
    realism.add_argument("--out", help="output folder (default: <paths.artifacts>/realism)")
    realism.add_argument("--check", action="store_true", help="exit 1 when a statistic is outside its tolerance")
    realism.set_defaults(func=_realism)


def _realism(args: argparse.Namespace) -> int:
    from pathlib import Path

    from naslung.data.realism import format_table, realism_report

    if args.scans < 1:
        raise ValueError(f"--scans must be >= 1, got {args.scans}")
    params = params_of(args, {"synth.seed": args.seed, "synth.n_scans": args.scans})
    real = args.real or params.registry.regression_patches
    if not real:
        raise ValueError("no real patches: pass --real PATH or set registry.regression_patches")
    out = Path(args.out) if args.out else Path(params.paths.artifacts) / "realism"
    report = realism_report(params.synth, params.prepare, real, out)
    print(
        f"synthetic: {int(report['synthetic']['n'])} nodule patches of {args.scans} scans (seed "
        f"{report['synth']['seed']}); real: {int(report['real']['nodules']['n'])} nodules, "
        f"{int(report['real']['non_nodules']['n'])} non-nodule locations ({real})"
    )
    print(format_table(report["rows"]))
    print(f"wrote {out / 'realism.json'} and {out / 'realism.png'}")
    return 1 if args.check and report["n_within"] < report["n_statistics"] else 0
