"""``gase phantom``: list the phantom acquisition styles or write labelled phantom volumes.

The CLI owner wires it up::

    sub = subparsers.add_parser("phantom", help="...")
    add_phantom_arguments(sub)
    sub.set_defaults(func=run_phantom)

Errors a user can make (unknown anatomy or style, fewer than one subject, existing outputs) raise
:class:`gase.errors.InputError` / :class:`gase.errors.OutputError` with the fix in the message.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from . import ANATOMIES, FORMAT_SUFFIX, SOURCE_STYLE, get_style, list_styles, plan_cases, write_cases
from .sequences import Style


def add_phantom_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``phantom`` subcommand's arguments to ``parser`` (returned for chaining)."""
    parser.add_argument("--anatomy", default=None, metavar="NAME",
                        help=f"phantom family: {' or '.join(ANATOMIES)} (required unless --list-styles)")
    parser.add_argument("--style", default=None, metavar="NAME",
                        help="acquisition style, e.g. pd_fse or t2_fse; default: the anatomy's source style "
                             f"({', '.join(f'{a}: {s}' for a, s in SOURCE_STYLE.items())}); see --list-styles")
    parser.add_argument("--subjects", type=int, default=5, metavar="N",
                        help="number of subjects (image + label pairs) to write (default: 5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the subject set; the same seed gives the same subjects in "
                             "every style, different seeds give disjoint sets (default: 0)")
    parser.add_argument("--out", type=Path, default=None, metavar="FOLDER",
                        help="output folder; cases go to FOLDER/images and FOLDER/labels with matching names")
    parser.add_argument("--list-styles", action="store_true",
                        help="print the available styles (of --anatomy, or all) and exit")
    parser.add_argument("--format", default="nrrd", metavar="FMT",
                        help=f"file format: {' or '.join(FORMAT_SUFFIX)} (default: nrrd)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="matrix scale; 0.5 gives voxels twice as large for quick tests (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser


def format_style_table(styles: list[Style]) -> str:
    """A plain-text table of ``styles``: name, family, field, sequence, voxel size, description."""
    rows = [("anatomy", "style", "family", "field", "sequence", "voxel (mm)", "description")]
    for s in styles:
        name = s.name + (" (source)" if s.source else "")
        seq = s.sequence + (" FS" if s.fat_suppressed else "")
        rows.append((s.anatomy, name, s.family, f"{s.field_t:g} T", seq,
                     f"{s.inplane_mm:g}x{s.inplane_mm:g}x{s.slice_mm:g}", s.description))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0])))
    return "\n".join(lines)


def run_phantom(args: argparse.Namespace) -> int:
    """Run the ``phantom`` subcommand for parsed ``args``; returns the exit status (0)."""
    anatomy = getattr(args, "anatomy", None)
    if anatomy is not None and anatomy not in ANATOMIES:
        raise InputError(f"Unknown anatomy {anatomy!r}. Use --anatomy {' or --anatomy '.join(ANATOMIES)}.")
    if getattr(args, "list_styles", False):
        print(format_style_table(list_styles(anatomy)))
        return 0
    if anatomy is None:
        raise InputError(f"Give the phantom family with --anatomy ({' or '.join(ANATOMIES)}), or "
                         "--list-styles to see the styles.")
    style = getattr(args, "style", None) or SOURCE_STYLE[anatomy]
    get_style(anatomy, style)
    subjects = getattr(args, "subjects", 5)
    if subjects is None or int(subjects) < 1:
        raise InputError(f"--subjects must be at least 1 (got {subjects}).")
    fmt = getattr(args, "format", "nrrd") or "nrrd"
    if fmt not in FORMAT_SUFFIX:
        raise InputError(f"Unknown --format {fmt!r}; use {' or '.join(FORMAT_SUFFIX)}.")
    out = getattr(args, "out", None)
    if out is None:
        raise InputError("Give the output folder with --out FOLDER.")
    scale = float(getattr(args, "scale", 1.0) or 1.0)
    overwrite = bool(getattr(args, "overwrite", False))
    plan_cases(anatomy, style, int(subjects), out, fmt, overwrite=overwrite)  # fail before any work
    from tqdm import tqdm

    with tqdm(total=int(subjects), desc=f"{anatomy} {style}", unit="case") as bar:
        pairs = write_cases(anatomy, style, int(subjects), int(getattr(args, "seed", 0)), out, fmt,
                            scale=scale, overwrite=overwrite, progress=bar.update)
    out = Path(out)
    print(f"Wrote {len(pairs)} {anatomy} case(s) in style {style}: images in {out / 'images'}, "
          f"labels in {out / 'labels'} (e.g. {pairs[0][0].name}).")
    return 0
