"""``gase demo``: the shipped model on generated sample knees, outputs plus an overview PNG.

Three sample inputs are generated (nothing is downloaded): a knee in the model's source style, the
same kind of knee in a sequence the model never saw, and a CT-like rendering it must flag as
outside its competence. Each is written as NRRD, segmented through the same path as ``gase
segment``, and summarised in ``overview.png`` (image, mask, confidence, validity verdict, and the
style-manifold map that explains the verdict).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import OutputError
from .result import ct_comparison, inverted_comparison, quality_text
from .validity_map import REFERENCE_LABEL, draw_distance_map

DEMO_UNSEEN_STYLE = "t1_se"
DEMO_SEED = 9001


def sample_inputs(out_dir: Path, anatomy: str, source_style: str, overwrite: bool) -> list[tuple[str, Path, str]]:
    """Write the demo inputs; returns (case, path, description) triples."""
    from .phantoms import make_case, make_ood
    from .volume import write_volume

    data_dir = out_dir / "sample_data"
    cases = []
    img, _ = make_case(anatomy, source_style, DEMO_SEED)
    cases.append((f"{anatomy}_{source_style}", img, f"{anatomy}, {source_style} (the model's training style)"))
    img, _ = make_case(anatomy, DEMO_UNSEEN_STYLE, DEMO_SEED + 1)
    cases.append((f"{anatomy}_{DEMO_UNSEEN_STYLE}", img, f"{anatomy}, {DEMO_UNSEEN_STYLE} (a sequence never seen in training)"))
    img = make_ood("ct", anatomy, DEMO_SEED + 2)
    cases.append((f"{anatomy}_ct_like", img, f"{anatomy}, CT-like image (not MR: must be flagged)"))
    out = []
    for case, vol, desc in cases:
        path = data_dir / f"{case}.nrrd"
        if not path.exists() or overwrite:
            write_volume(vol, path, overwrite=True)
        out.append((case, path, desc))
    return out


def render_overview(rows: list[dict], path: Path, title: str) -> Path:
    """rows: dicts with image (H, W), labels (H, W), confidence (H, W), label_table, report, desc and
    validity (:class:`~gase.result.Validity`). Writes one PNG: a row per case plus the map of the slices'
    distances to the learned styles (:mod:`gase.validity_map`; the PCA map of the style codes for a model
    saved without those distances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = len(rows)
    fig = plt.figure(figsize=(16, 3.9 * n + 0.6), dpi=90)
    gs = fig.add_gridspec(n, 6, width_ratios=[1, 1, 1, 0.05, 0.18, 1.25], wspace=0.2, hspace=0.32)
    fig.suptitle(title, fontsize=14, y=0.995)
    ax_map = fig.add_subplot(gs[:, 5])  # column 4: room for the colour bars' label
    colors = ["tab:green", "tab:orange", "tab:red", "tab:purple"]
    for r, row in enumerate(rows):
        img, lab, conf = row["image"], row["labels"], row["confidence"]
        table = row["label_table"]
        cmap_lab = np.zeros((max(t.value for t in table) + 1, 4))
        for t in table:
            cmap_lab[t.value] = (*t.color, 0.55)
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(img, cmap="gray")
        ax.set_title(row["desc"], fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(gs[r, 1])
        ax.imshow(img, cmap="gray")
        ax.imshow(lab, cmap=ListedColormap(cmap_lab), interpolation="nearest", vmin=0, vmax=len(cmap_lab) - 1)
        v = row["report"]["validity"]
        ok = v["valid"]
        rel = row["report"]["reliability"]
        quality = quality_text(rel.get("expected_dice"), rel.get("stability")).replace(" (", "\n(", 1)
        # an input outside the model's competence gets no quality estimate: the model's own would mislead
        expert = (row["report"].get("source_expert") or {}).get("used")
        ax.set_title(("GASE mask (source expert)" if expert else "GASE mask") + "\n" +
                     (quality or "quality n/a" if ok else "quality: none (input not valid)"), fontsize=9)
        ax.axis("off")
        ax = fig.add_subplot(gs[r, 2])
        ax.imshow(img, cmap="gray")
        im = ax.imshow(np.ma.masked_where(conf > 0.999, conf), cmap="inferno", vmin=0, vmax=1, alpha=0.85)
        val = row["validity"]
        size = "" if val.size_valid else \
            f"\nstructures {val.foreground_ratio:.1f}x the training size (> {val.foreground_limit:g}x)"
        if not val.modality_valid:
            size += "\n" + ct_comparison(val.ct_fraction)
        if not val.polarity_valid:
            size += "\n" + inverted_comparison(val.background_level)
        ax.set_title(("VALID" if ok else "OUTSIDE THE MODEL'S COMPETENCE") +
                     f"\nscore {val.score:.2f} {'<=' if val.style_valid else '>'} threshold {val.threshold:.2f}" + size,
                     fontsize=9, color="darkgreen" if ok else "red", fontweight="bold")
        ax.axis("off")
        cax = fig.add_subplot(gs[r, 3])
        fig.colorbar(im, cax=cax, label="confidence")
    validities = [row["validity"] for row in rows]
    if all(v.distances_2d is not None for v in validities):
        draw_distance_map(ax_map, validities[0].threshold,
                          [(v.distances_2d, row["case"], colors[r % len(colors)], v.score) for r, (v, row) in
                           enumerate(zip(validities, rows))], validities[0].reference_distances, fontsize=10)
        ax_map.set_title("Distance to the styles the model learned (dots: slices, stars: volumes)\n"
                         "a star above the dashed line = outside the model's competence", fontsize=10)
    else:  # a model saved before the two distances existed
        ref = np.asarray(validities[0].reference_2d)
        ax_map.scatter(ref[:, 0], ref[:, 1], s=6, c="lightgray", label=REFERENCE_LABEL)
        for r, v in enumerate(validities):
            emb = np.asarray(v.embedding_2d)
            ax_map.scatter(emb[:, 0], emb[:, 1], s=10, c=colors[r % len(colors)], label=rows[r]["case"])
        ax_map.set_title("Style manifold (PCA of style codes)", fontsize=10)
        ax_map.set_xlabel("PC 1")
        ax_map.set_ylabel("PC 2")
    for t in rows[0]["label_table"]:
        ax_map.scatter([], [], marker="s", c=[t.color], label=t.name)
    ax_map.legend(fontsize=8, loc="best", markerscale=0.7)
    ax_map.yaxis.tick_right()  # keep the ticks clear of the confidence colour bars on the left
    ax_map.yaxis.set_label_position("right")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def run_demo(args: argparse.Namespace) -> int:
    from .model_card import default_model_folder
    from .orientation import reorientation_for
    from .phantoms import SOURCE_STYLE
    from .predictor import Predictor
    from .segment_job import output_paths, write_outputs
    from .volume import check_output_path, read_volume

    out_dir = Path(args.out)
    overview = out_dir / "overview.png"
    check_output_path(overview, args.overwrite)
    predictor = Predictor.from_folder(args.model or default_model_folder(), device=args.device)
    card = predictor.card
    print(f"GASE demo: model '{card.title}' ({card.name} {card.version}) on {predictor.device.type}")
    inputs = sample_inputs(out_dir, card.anatomy, card.training.get("source_style", SOURCE_STYLE[card.anatomy]),
                           args.overwrite)
    for case, _, _ in inputs:
        for p in output_paths(out_dir, case).values():
            check_output_path(p, args.overwrite)
    rows = []
    for case, path, desc in inputs:
        volume = read_volume(path)
        result = predictor.predict(volume)
        paths = write_outputs(result, out_dir, case, overwrite=args.overwrite)
        v = result.validity
        dice = f"{result.quality_text() if v.valid else 'no quality estimate: input not valid':50s}"
        print(f"  {case:22s} {'VALID' if v.valid else 'NOT VALID':9s} score {v.score:7.2f} (threshold {v.threshold:.2f})"
              f"  {dice}  {result.seconds:.1f} s  -> {paths['segmentation'].name}")
        for reason in v.reasons():
            print(f"  {'':22s} why: {reason}")
        if result.segmenter_text():
            print(f"  {'':22s} {result.segmenter_text()}")
        reo = reorientation_for(volume, card.plane)
        lab_c = reo.forward(result.labels.array)
        s = int(np.argmax((lab_c > 0).reshape(lab_c.shape[0], -1).sum(1))) if lab_c.any() else lab_c.shape[0] // 2
        rows.append({"case": case, "desc": desc, "image": reo.forward(volume.array)[s],
                     "labels": lab_c[s], "confidence": reo.forward(result.confidence.array)[s],
                     "label_table": result.label_table, "report": result.report(), "validity": result.validity})
    try:
        render_overview(rows, overview, f"GASE demo - {card.title}")
    except OSError as exc:
        raise OutputError(f"{overview}: cannot write the overview ({exc}).") from None
    print(f"Overview: {overview}\nOutputs:  {out_dir}/  (open the .seg.nrrd and _confidence.nrrd in 3D Slicer)")
    return 0
