"""Peer (randcurve) fine-tune probe with/without the fat-suppression views (monkeypatched: the project keeps them GASE-only).

Run from the repository root: `python benchmarks/results/cpu-1000-data1-fatsat/logs/probes/peer_probe.py knee 0.5`
(anatomy, fatsat_prob); starts from the `cpu-1000-data1` peer checkpoints (not in git: models/ is ignored)."""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[5]
sys.path.insert(0, str(ROOT))
from gase.training import loop
from benchmarks.dg_probe import probe

_project_curve_view = loop.Trainer._curve_view


def _curve_view(self, x, y, flatten):
    """The project's curve view with the fat-suppression views on for the peer too (they are GASE-only there)."""
    method, self.cfg.method = self.cfg.method, "gase"
    try:
        return _project_curve_view(self, x, y, flatten)
    finally:
        self.cfg.method = method


loop.Trainer._curve_view = _curve_view

anat, fs = sys.argv[1], float(sys.argv[2])
extra = ("dess", "stir", "gre_t2star") if anat == "knee" else ("t1_gre_opposed", "t2_3t")
ck = ROOT / f"benchmarks/results/cpu-1000-data1/{anat}/models/{anat}-randcurve/training/checkpoint.pt"
res = probe("randcurve", 300, {"lr": 0.002, "seed": 5, "fatsat_prob": fs}, anat, 3, 1, ck, extra, 150)
print(json.dumps(res))
