#!/usr/bin/env bash
# The recipe of the shipped demo model Resources/Models/knee-demo: GASE on 5 generated knee phantoms of
# ONE sequence (PD FSE, 1.5 T; 4 for training, 1 held out for validation and calibration), sagittal
# slices, default settings (with the source expert), 1000 iterations on the CPU (the
# minutes it took are in the card's training record; a GPU is faster). The shipped model (0.2.0) was
# trained before the warm start became the default (28 Nov): --no-warm-start reproduces it. Without
# the flag (tried 5 Dec, validation Dice 0.863, 66 min next to a benchmark) the model called 3 of 3
# pelvis phantoms valid knees (style scores 1.83-2.16 against 2.03, structures 1.5-1.8x the training
# total, under the 2.5x size limit), so it was not shipped. The stability floor added the same day
# (gase.result.STABILITY_FLOOR, 0.65) flags those pelves (stability 0.61-0.63; knees 0.88-0.91) by a
# thin margin; retrain and check again before shipping it.
# 0.2.1 (5 Dec) is 0.2.0 with its two style manifolds fitted again the way training fits them now (with
# augmented copies of the training slices; Resources/Models/knee-demo.refit-validity.py, same phantoms
# and split): this recipe, run today, writes that fit itself. A second warm-started retrain the same day
# (with the new fit; 50 min, validation Dice 0.863, route gase) segmented unseen styles better on 3 new
# subjects each (T2 FSE 0.822 vs 0.760, PD-FS 0.753 vs 0.724, FLASH-WE 0.714 vs 0.691) but called 2 of 3
# pelvis phantoms valid knees (style 0.95-1.38 under 1.64, structures 2.0-2.1x, stability 0.65-0.70), so
# it was not shipped either.
# 0.2.2 (5 Dec, evening) is 0.2.1 with its threshold calibrated on augmented copies of the held-out volumes
# too (gase.training.validity_fit.HELDOUT_COPIES; the same refit script, the manifolds themselves unchanged).
# 0.2.3 (6 Dec) is 0.2.2 with the opening of gase.postprocess learned from the same 5 label maps (femur 2 mm,
# tibia 4 mm; Resources/Models/knee-demo.refit-postprocessing.py): weights and manifolds unchanged. On 4 new
# subjects per style (seed stream 150) its Dice went 0.858 -> 0.867 on PD FSE and 0.753 -> 0.766 on the five
# unseen styles of the benchmark. Training writes the opening itself now, so this recipe gives it too.
#
#   bash Resources/Models/knee-demo.recipe.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-Resources/Models/knee-demo}
DATA=$(mktemp -d)
GASE=${GASE:-.venv/bin/gase}
"$GASE" phantom --anatomy knee --style pd_fse --subjects 5 --seed 0 --out "$DATA"
"$GASE" train --images "$DATA/images" --labels "$DATA/labels" --anatomy knee \
  --out "$OUT" --name knee-demo --iterations 1000 --val-fraction 0.2 --seed 0 --device "${DEVICE:-cpu}" \
  --checkpoint-every 100 --no-warm-start
# checkpoints and the expert's own copy are not part of the shipped model (its weights are in the folder)
rm -rf "$DATA" "$OUT/training/checkpoint.pt" "$OUT/training/source-expert"
# Card text a user reads in the model selector, and the recipe itself (checksums are recomputed).
"$(dirname "$GASE")/python" - "$OUT" <<'PY'
import sys
from pathlib import Path
from gase.model_card import load_card, write_card
card = load_card(Path(sys.argv[1]))
card.title = "GASE knee demo (phantom-trained, 4 labelled PD-FSE volumes)"
card.version = "0.2.3"
card.description = ("Demonstration model: femur, femoral cartilage, tibia and tibial cartilage on sagittal knee MR. "
                    "Trained with GASE on 4 labelled knee phantoms of one sequence (PD FSE, 1.5 T) plus 1 for "
                    "validation. It has never seen patient data: use it to try GASE, not for clinical decisions.")
card.training["source_style"] = "pd_fse"
card.training["recipe"] = "Resources/Models/knee-demo.recipe.sh"
write_card(card, card.folder)
print(f"{card.folder}: validation Dice {card.metrics.get('validation_dice')}")
PY
