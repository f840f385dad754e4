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
from gase.training.augment import random_curves, suppress_bright
from benchmarks.dg_probe import probe

def _curve_view(self, x, y, flatten):
    if self.cfg.fatsat_prob <= 0:
        return random_curves(x, y, self.n_classes, self.gen, flatten_prob=flatten)
    n, g = x.shape[0], self.gen
    pick = (torch.rand(n, generator=g) < self.cfg.fatsat_prob).to(x.device)[:, None, None, None]
    plain = (torch.rand(n, generator=g) < 0.5).to(x.device)[:, None, None, None]
    x_src = torch.where(pick, suppress_bright(x.clamp(0, 1), g), x)
    curved = random_curves(x_src, y, self.n_classes, g, flatten_prob=flatten)
    return torch.where(pick & plain, x_src, curved)
loop.Trainer._curve_view = _curve_view

anat, fs = sys.argv[1], float(sys.argv[2])
extra = ("dess", "stir", "gre_t2star") if anat == "knee" else ("t1_gre_opposed", "t2_3t")
ck = ROOT / f"benchmarks/results/cpu-1000-data1/{anat}/models/{anat}-randcurve/training/checkpoint.pt"
res = probe("randcurve", 300, {"lr": 0.002, "seed": 5, "fatsat_prob": fs}, anat, 3, 1, ck, extra, 150)
print(json.dumps(res))
