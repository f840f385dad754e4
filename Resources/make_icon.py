"""Draw the extension icon (GASE.png) and the module icon, 128 x 128 pixels each.

A sagittal knee: femur and tibia with their cartilage, a red-to-yellow low-confidence spot in the joint
(the confidence overlay) and a green check (the validity verdict). Colours are the knee label table's.

    python Resources/make_icon.py          # from the repository root; rewrites both PNGs
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gase.labels import KNEE_LABELS  # noqa: E402

OUTPUTS = (ROOT / "GASE.png", ROOT / "GASESegmentation" / "Resources" / "Icons" / "GASESegmentation.png")
SIZE_PX = 128


def draw(path: Path, size_px: int = SIZE_PX) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyBboxPatch, Wedge

    colors = {lab.name: lab.color for lab in KNEE_LABELS}
    fig = Figure(figsize=(1, 1), dpi=size_px)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((0.03, 0.03), 0.94, 0.94, boxstyle="round,pad=0,rounding_size=0.16",
                                facecolor="#1d2733", edgecolor="none"))
    # Femur (top) and tibia (bottom) with a cartilage layer on each joint surface.
    ax.add_patch(Wedge((0.5, 0.62), 0.265, 198, 342, width=0.05, facecolor=colors["femoral cartilage"]))
    ax.add_patch(Circle((0.5, 0.62), 0.22, facecolor=colors["femur"]))
    ax.add_patch(Circle((0.5, 0.66), 0.14, facecolor="#e2c98a"))  # marrow
    ax.add_patch(FancyBboxPatch((0.17, 0.26), 0.66, 0.05, boxstyle="round,pad=0,rounding_size=0.02",
                                facecolor=colors["tibial cartilage"], edgecolor="none"))
    ax.add_patch(FancyBboxPatch((0.19, 0.06), 0.62, 0.21, boxstyle="round,pad=0,rounding_size=0.06",
                                facecolor=colors["tibia"], edgecolor="none"))
    # The confidence overlay: a low-confidence spot in the joint, red core fading to yellow.
    for r, rgb, alpha in ((0.13, (1.0, 0.9, 0.1), 0.55), (0.09, (1.0, 0.55, 0.0), 0.75), (0.05, (0.8, 0.05, 0.0), 0.95)):
        ax.add_patch(Circle((0.63, 0.33), r, facecolor=rgb, alpha=alpha, edgecolor="none"))
    # The validity verdict: a green check badge.
    ax.add_patch(Circle((0.80, 0.80), 0.14, facecolor="#2e9e40", edgecolor="white", linewidth=1.2))
    check = np.array([[0.73, 0.80], [0.785, 0.745], [0.875, 0.86]])
    ax.plot(check[:, 0], check[:, 1], color="white", linewidth=2.6, solid_capstyle="round",
            solid_joinstyle="round")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), dpi=size_px, transparent=True)
    return path


if __name__ == "__main__":
    for out in OUTPUTS:
        print(draw(out))
