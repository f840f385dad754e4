"""The benchmark's figures, drawn from ``results.json`` (+ ``panel.npz`` for the qualitative panels).

One PNG per question: Dice per style and method; reliability diagram; risk-coverage; validity score
distributions, ROC and score vs Dice; the style manifold; per anatomy a qualitative panel.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from gase.validity_map import REFERENCE_LABEL, draw_accepted_region  # noqa: E402

DPI = 100
METHOD_COLORS = {"erm": "#8c8c8c", "randcurve": "#4c72b0", "gase": "#dd5d2a"}
METHOD_LINES = {"erm": ":", "randcurve": "--", "gase": "-"}
SOURCE_COLOR, OOD_COLOR = "#2e8b3a", "#c0392b"
# unseen styles: no green (source) and no red (OOD) among them
STYLE_PALETTE = ("#1f77b4", "#ff9f1c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79")
METHOD_SHORT = {"erm": "ERM", "randcurve": "rand. curves", "gase": "GASE"}
OOD_MARKERS = {"ct": "s", "other_anatomy": "D", "noise": "X", "motion": "P", "inverted": "v", "wrong_orientation": "^"}


def _n(x) -> float:
    """A number from results.json, where undefined values are stored as null."""
    return float("nan") if x is None else float(x)


def _fmt(x, nd: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _style_colors(styles: list[str]) -> dict[str, str]:
    return {s: STYLE_PALETTE[i % len(STYLE_PALETTE)] for i, s in enumerate(styles)}


def _plain_log_axis(axis) -> None:
    """Log axis with plain-number labels (no 10^x notation, no crowded minor labels)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def dice_per_style(res: dict, out: Path) -> Path:
    anats = res["anatomies"]
    fig, axes = plt.subplots(len(anats), 1, figsize=(11, 3.6 * len(anats)), squeeze=False)
    for ax, (name, a) in zip(axes[:, 0], anats.items()):
        styles = [a["source_style"], *a["unseen_styles"]]
        methods = list(a["methods"])
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            seg = a["methods"][m]["summary"]["segmentation"]["per_style"]
            x = np.arange(len(styles)) + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, [_n(seg[s]["dice"]) for s in styles], width * 0.92, color=METHOD_COLORS.get(m), label=METHOD_SHORT.get(m, m))
            for xi, s in zip(x, styles):
                pts = [_n(v) for v in seg[s]["dice_per_subject"]]
                ax.scatter(np.full(len(pts), xi), pts, s=9, color="black", alpha=0.55, zorder=3, linewidths=0)
        ax.axvspan(-0.5, 0.5, color="#eef5e9", zorder=0)
        # the target's label goes in the legend: written on the plot it sat on the last style's bars
        ax.axhline(0.85, color="#333", lw=0.8, ls="--", label="unseen-style\ntarget 0.85")
        ax.set_xticks(range(len(styles)), [f"{styles[0]}\n(source)", *styles[1:]], fontsize=9)
        ax.set_xlim(-0.5, len(styles) - 0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mean Dice")
        ax.set_title(f"{name}: Dice per acquisition style (bars: mean, dots: subjects)", fontsize=11)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, frameon=False)
    fig.tight_layout()
    return _save(fig, out / "dice_per_style.png")


def reliability_diagram(res: dict, out: Path) -> Path:
    anats = res["anatomies"]
    fig, axes = plt.subplots(1, len(anats), figsize=(5.2 * len(anats), 4.8), squeeze=False)
    for ax, (name, a) in zip(axes[0], anats.items()):
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls=":", label="perfect calibration")
        for m, d in a["methods"].items():
            vox = d["summary"]["confidence"]["voxel"]
            for score, ls in (("confidence", "-"), ("msp", "--")):
                if m != "gase" and score == "confidence":
                    continue  # the baselines' own confidence heads are in the tables
                b = vox[score]["bins_near"]
                conf, acc, cnt = (np.asarray(b[k], dtype=float) for k in ("confidence", "accuracy", "count"))
                ok = cnt >= 20
                lab = f"{METHOD_SHORT.get(m, m)} {'confidence' if score == 'confidence' else 'max softmax'}" \
                      f" (ECE {_fmt(vox[score]['ece_near'])})"
                ax.plot(conf[ok], acc[ok], ls, marker="o", ms=3.5, color=METHOD_COLORS.get(m), label=lab)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted confidence")
        ax.set_ylabel("fraction of voxels labelled right")
        ax.set_title(f"{name}: reliability near structures", fontsize=11)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_aspect("equal")
    fig.tight_layout()
    return _save(fig, out / "reliability_diagram.png")


def risk_coverage(res: dict, out: Path) -> Path:
    anats = res["anatomies"]
    fig, axes = plt.subplots(1, len(anats), figsize=(5.6 * len(anats), 5.0), squeeze=False)
    for ax, (name, a) in zip(axes[0], anats.items()):
        m = "gase" if "gase" in a["methods"] else list(a["methods"])[-1]
        vol = a["methods"][m]["summary"]["confidence"]["volume"]
        styles = {"quality": ("-", METHOD_COLORS.get(m), f"{METHOD_SHORT.get(m, m)} quality"),
                  "stability": ("--", "#c44e52", f"{METHOD_SHORT.get(m, m)} stability"),
                  "expected_dice": ("-", "#937860", f"{METHOD_SHORT.get(m, m)} expected Dice"),
                  "confidence": ("-.", "#8172b3", f"{METHOD_SHORT.get(m, m)} mean confidence"),
                  "msp": ("--", "#4c72b0", "mean max softmax"), "entropy": (":", "#55a868", "1 - mean entropy"),
                  "oracle": ("-", "#bbbbbb", "oracle (sorted by true Dice)")}
        styles = {k: v for k, v in styles.items() if k in vol}
        for k, (ls, c, lab) in styles.items():
            cur = vol[k]["curve"]
            ax.plot(cur["coverage"], cur["risk"], ls, color=c, lw=2 if k == "quality" else 1.5,
                    label=f"{lab}: AURC {_fmt(vol[k]['aurc'])}")
        ax.axhline(_n(vol["random"]["aurc"]), color="#999", lw=0.8, ls="-.",
                   label=f"no ranking: {_fmt(vol['random']['aurc'])}")
        top = max([max([_n(r) for r in vol[k]["curve"]["risk"]] or [0.0]) for k in styles] + [_n(vol["random"]["aurc"])])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, min(1.0, 1.15 * np.nan_to_num(top, nan=1.0) + 0.01))
        ax.set_xlabel("coverage (fraction of test volumes accepted)")
        ax.set_ylabel("risk of accepted volumes (1 - Dice)")
        ax.set_title(f"{name}: risk-coverage ({METHOD_SHORT.get(m, m)} model)", fontsize=11)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return _save(fig, out / "risk_coverage.png")


def validity(res: dict, out: Path) -> Path:
    anats = res["anatomies"]
    fig, axes = plt.subplots(len(anats), 3, figsize=(15, 4.3 * len(anats)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.7, 1, 1]})
    for row, (name, a) in zip(axes, anats.items()):
        m = "gase" if "gase" in a["methods"] else list(a["methods"])[-1]
        recs = a["methods"][m]["records"]
        groups = [("source", a["source_style"] + " (source)")] + [(s, s) for s in a["unseen_styles"]] + \
                 [(k, k) for k in dict.fromkeys(r["kind"] for r in recs if r["group"] == "ood")]
        ax = row[0]
        colors = _style_colors(a["unseen_styles"])
        for i, (g, _) in enumerate(groups):
            rs = [r for r in recs if (r["group"] == "source" if g == "source" else r["kind"] == g)]
            sc = np.array([_n(r["validity"]["score"]) for r in rs])
            ood = bool(rs) and rs[0]["group"] == "ood"
            c = OOD_COLOR if ood else (SOURCE_COLOR if g == "source" else colors.get(g))
            jitter = np.random.default_rng(i).uniform(-0.18, 0.18, len(sc))
            ax.scatter(i + jitter, np.clip(sc, 1e-2, None), s=22, color=c, edgecolors="black", linewidths=0.3)
        thr = recs[0]["validity"]["threshold"]
        ax.axhline(thr, color="black", ls="--", lw=1)
        ax.text(-0.4, thr * 1.06, "threshold: above = flagged", ha="left", va="bottom", fontsize=8)
        ax.set_yscale("log")
        _plain_log_axis(ax.yaxis)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, 0.8, thr / 1.5), max(hi, thr * 1.5))
        ax.set_xticks(range(len(groups)), [lab for _, lab in groups], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("validity score (1 ~ training)")
        ax.set_title(f"{name}: validity score per input volume ({METHOD_SHORT.get(m, m)} model): "
                     "green source style, red OOD", fontsize=10)
        ax = row[1]
        for mm, d in a["methods"].items():
            v = d["summary"]["validity"]
            ax.plot(v["roc"]["fpr"], v["roc"]["tpr"], METHOD_LINES.get(mm, "-"), color=METHOD_COLORS.get(mm), lw=2,
                    label=f"{METHOD_SHORT.get(mm, mm)}: AUROC {_fmt(v['auroc'])}")
        ax.plot([0, 1], [0, 1], ":", color="#999")
        ax.set_xlabel("source-style volumes flagged")
        ax.set_ylabel("OOD volumes flagged")
        ax.set_title(f"{name}: ROC, source style vs OOD", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
        ax = row[2]
        for s in [a["source_style"], *a["unseen_styles"]]:
            rs = [r for r in recs if r["kind"] == s and r["group"] in ("source", "unseen")]
            ax.scatter([_n(r["validity"]["score"]) for r in rs], [_n(r["dice_mean"]) for r in rs], s=22,
                       color=SOURCE_COLOR if s == a["source_style"] else colors[s], label=s, edgecolors="black",
                       linewidths=0.3)
        ax.axvline(thr, color="black", ls="--", lw=1)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, 0.8, thr / 1.5), max(hi, thr * 1.5))
        ax.set_ylim(0, 1)
        ax.set_xlabel("validity score")
        ax.set_ylabel("mean Dice")
        ax.set_title(f"{name}: validity vs Dice on MR styles", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out / "validity.png")


def _volume_style(v: dict, colors: dict[str, str], size: float) -> tuple[dict, str]:
    """Scatter keywords and legend label of one test volume of the manifold records (OOD markers by kind,
    MR styles coloured; OOD markers 1.6x ``size``)."""
    if v["group"] == "ood":
        return dict(color=OOD_COLOR, marker=OOD_MARKERS.get(v["kind"], "x"), s=1.6 * size), f"OOD: {v['kind']}"
    colour = SOURCE_COLOR if v["group"] == "source" else colors.get(v["kind"])
    return dict(color=colour, marker="o", s=size), f"{v['kind']} ({'source' if v['group'] == 'source' else 'unseen'})"


def _has_distances(man: dict) -> bool:
    return bool(man.get("volumes")) and all(v.get("distances") for v in man["volumes"])


def _distance_map(ax, name: str, method: str, a: dict, man: dict) -> None:
    """One marker per test volume at its place on the validity distance map (:mod:`gase.validity_map`)."""
    threshold = float(man["threshold"])
    # the training slices' distances: models saved before 2026-11-28 do not keep them
    ref = np.asarray(man.get("reference_distances") or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)
    pts = np.asarray([v["distances"] for v in man["volumes"]], dtype=np.float64).reshape(-1, 2)
    log = draw_accepted_region(ax, threshold, np.concatenate([ref, pts]))
    if len(ref):
        ax.scatter(ref[:, 0], ref[:, 1], s=6, color="#bdbdbd", linewidths=0, label=REFERENCE_LABEL, zorder=1)
    colors = _style_colors(a["unseen_styles"])
    seen = set()
    for v in man["volumes"]:
        kw, lab = _volume_style(v, colors, 28)
        p = v["distances"]
        ax.scatter([p[0]], [p[1]], label=None if lab in seen else lab, alpha=0.85, linewidths=0, zorder=3, **kw)
        seen.add(lab)
    ax.set_xlabel("distance within the learned styles" + (" (log)" if log else ""))
    ax.set_ylabel("distance off the learned styles" + (" (log)" if log else ""))
    ax.set_title(f"{name}: validity of each test volume ({METHOD_SHORT.get(method, method)} model)\n"
                 "below the dashed line = accepted" + ("; grey = training slices" if len(ref) else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def style_manifold(res: dict, out: Path) -> Path:
    """Top: slices on the first two principal axes of the style manifold; the frame spans the bulk of the
    points, and points beyond it are drawn on its edge (hollow), so far outliers do not squash the rest.
    Bottom (results that have them): each test volume on the validity distance map, whose threshold line
    is the verdict (the PCA plane leaves out the off-subspace distance, where many OOD inputs differ)."""
    anats = res["anatomies"]
    models = {name: ("gase" if "gase" in a["methods"] else list(a["methods"])[-1]) for name, a in anats.items()}
    with_map = all(_has_distances(a["methods"][models[name]]["manifold"]) for name, a in anats.items())
    rows = 2 if with_map else 1
    fig, axes = plt.subplots(rows, len(anats), figsize=(6.6 * len(anats), 5.6 * rows), squeeze=False)
    for ax, (name, a) in zip(axes[0], anats.items()):
        m = models[name]
        man = a["methods"][m]["manifold"]
        ref = np.asarray(man["reference_2d"]).reshape(-1, 2)
        allp = np.concatenate([ref] + [np.asarray(v["points"]).reshape(-1, 2) for v in man["volumes"]])
        lo, hi = np.percentile(allp, 3, axis=0), np.percentile(allp, 97, axis=0)
        lo, hi = np.minimum(lo, ref.min(0)), np.maximum(hi, ref.max(0))
        pad = 0.08 * (hi - lo)
        lo, hi = lo - pad, hi + pad

        def draw(p, label, **kw):
            p = np.asarray(p).reshape(-1, 2)
            inside = np.all((p >= lo) & (p <= hi), axis=1)
            ax.scatter(p[inside, 0], p[inside, 1], label=label, **kw)
            if (~inside).any():
                q = np.clip(p[~inside], lo, hi)
                ax.scatter(q[:, 0], q[:, 1], facecolors="none", edgecolors=kw.get("color"), marker=kw.get("marker", "o"),
                           s=kw.get("s", 10) * 1.6, linewidths=0.8, alpha=0.8, clip_on=False, zorder=kw.get("zorder", 2))

        draw(ref, REFERENCE_LABEL, s=8, color="#bdbdbd", zorder=1)
        colors = _style_colors(a["unseen_styles"])
        seen = set()
        for v in man["volumes"]:
            kw, lab = _volume_style(v, colors, 10)
            draw(v["points"], None if lab in seen else lab, alpha=0.7, linewidths=0, zorder=2, **kw)
            seen.add(lab)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("style PC 1")
        ax.set_ylabel("style PC 2")
        ax.set_title(f"{name}: style manifold of the {METHOD_SHORT.get(m, m)} model\n(one dot per slice; "
                     "hollow on the edge = further out)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, markerscale=1.4)
    if with_map:
        for ax, (name, a) in zip(axes[1], anats.items()):
            _distance_map(ax, name, models[name], a, a["methods"][models[name]]["manifold"])
    fig.tight_layout()
    return _save(fig, out / "style_manifold.png")


def qualitative(res: dict, panel: dict, name: str, out: Path) -> Path | None:
    """Rows: subject 0 in the source style and two unseen styles. Columns: image, truth, ERM mask (when
    ERM ran), GASE mask, GASE confidence (only below 0.98 drawn, over the image)."""
    a = res["anatomies"][name]
    kinds = [k for k in a["panel_styles"] if f"{name}/gase/{k}/image" in panel]
    if not kinds:
        return None
    other = "erm" if f"{name}/erm/{kinds[0]}/pred" in panel else None
    table = a["labels"]
    lut = np.zeros((max(t["value"] for t in table) + 1, 4))
    for t in table:
        lut[t["value"]] = (*t["color"], 0.6)
    cmap = ListedColormap(lut)
    cols = ["image", "truth"] + (["ERM mask"] if other else []) + ["GASE mask", "GASE confidence"]
    fig = plt.figure(figsize=(2.7 * len(cols) + 0.5, 2.75 * len(kinds) + 0.7))
    gs = fig.add_gridspec(len(kinds), len(cols) + 1, width_ratios=[1] * len(cols) + [0.05], wspace=0.05, hspace=0.08)
    im = None
    for r, k in enumerate(kinds):
        g = lambda m, f: panel[f"{name}/{m}/{k}/{f}"]  # noqa: E731
        img, sp = g("gase", "image"), g("gase", "spacing")
        lo, hi = np.percentile(img, [1, 99.5])
        aspect = float(sp[0] / sp[1])
        layers = [None, g("gase", "truth")] + ([g(other, "pred")] if other else []) + [g("gase", "pred"), "conf"]
        for c, layer in enumerate(layers):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
            if isinstance(layer, str):
                conf = g("gase", "confidence")
                im = ax.imshow(np.ma.masked_where(conf > 0.98, conf), cmap="inferno", vmin=0, vmax=1, alpha=0.9,
                               aspect=aspect)
            elif layer is not None:
                ax.imshow(np.ma.masked_where(layer == 0, layer), cmap=cmap, vmin=0, vmax=len(lut) - 1,
                          interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(k + ("\n(source)" if k == a["source_style"] else "\n(unseen)"), fontsize=10)
    fig.colorbar(im, cax=fig.add_subplot(gs[:, -1]), label="confidence (< 0.98 shown)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=t["color"]) for t in table]
    fig.legend(handles, [t["name"] for t in table], loc="upper center", ncol=len(table), fontsize=9,
               bbox_to_anchor=(0.5, 0.07), frameon=False)
    fig.suptitle(f"{name}: test subject 0 in the source style and two unseen styles", fontsize=11, y=0.93)
    return _save(fig, out / f"qualitative_{name}.png")


def make_all(res: dict, panel: dict, out: Path) -> list[Path]:
    """Draw every figure into ``out``; returns the paths written."""
    out = Path(out)
    paths = [dice_per_style(res, out), reliability_diagram(res, out), risk_coverage(res, out), validity(res, out),
             style_manifold(res, out)]
    for name in res["anatomies"]:
        p = qualitative(res, panel, name, out)
        if p is not None:
            paths.append(p)
    return paths
