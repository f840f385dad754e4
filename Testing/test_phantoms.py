"""Tests of the MR phantom generator (gase.phantoms): determinism, anatomy, labels, geometry,
contrast from the signal equations, noise level, OOD kinds, file round trip and the CLI helper."""
from __future__ import annotations

import argparse
import dataclasses
import time
from functools import lru_cache

import numpy as np
import pytest

from gase.errors import InputError, OutputError
from gase.labels import ANATOMY_LABELS
from gase.orientation import plane_of_slices
from gase.phantoms import (OOD_KINDS, SOURCE_STYLE, get_style, list_styles, make_case, make_ood,
                           subject_seed, write_cases)
from gase.phantoms.acquisition import LAYOUTS, acquisition_geometry, block_sum, sample_tissue
from gase.phantoms.anatomy import label_lookup, tissue_ids
from gase.phantoms.cli_phantom import add_phantom_arguments, run_phantom
from gase.phantoms.sequences import dess, inversion_recovery, spin_echo, spoiled_gre, tissue_signal
from gase.phantoms.tissues import tissue_properties
from gase.volume import read_volume

FAST = 0.5  # matrix scale for quick tests


@lru_cache(maxsize=None)
def case(anatomy: str, style: str, seed: int, scale: float = FAST):
    image, labels = make_case(anatomy, style, seed, scale=scale)
    image.array.setflags(write=False)
    labels.array.setflags(write=False)
    return image, labels


class _PureMasks:
    """Tissue name -> (K, J, I) mask of voxels made only of that tissue (no partial volume)."""

    def __init__(self, anatomy: str, style: str, seed: int, scale: float) -> None:
        self.geom = acquisition_geometry(anatomy, get_style(anatomy, style), scale)
        self.tissue = sample_tissue(anatomy, seed, self.geom)
        self.ids = tissue_ids(anatomy)

    @lru_cache(maxsize=None)
    def __getitem__(self, name: str) -> np.ndarray:
        n = self.geom.sub[0] * self.geom.sub[1] ** 2
        return block_sum(self.tissue == self.ids[name], self.geom, np.int16) == n


@lru_cache(maxsize=None)
def pure_masks(anatomy: str, style: str, seed: int, scale: float = FAST) -> _PureMasks:
    return _PureMasks(anatomy, style, seed, scale)


def pure_mean(anatomy: str, style: str, tissue: str, seed: int = 0, scale: float = FAST) -> float:
    mask = pure_masks(anatomy, style, seed, scale)[tissue]
    assert mask.sum() >= 20, f"too few pure {tissue} voxels to measure"
    return float(case(anatomy, style, seed, scale)[0].array[mask].mean())


# ---------------------------------------------------------------------------------------------
# styles
# ---------------------------------------------------------------------------------------------

def test_style_registry():
    knee, pelvis = list_styles("knee"), list_styles("pelvis")
    assert len(knee) >= 7 and len(pelvis) >= 6
    assert len(list_styles()) == len(knee) + len(pelvis)
    for anatomy, styles in (("knee", knee), ("pelvis", pelvis)):
        assert [s.name for s in styles if s.source] == [SOURCE_STYLE[anatomy]]
        assert len({s.name for s in styles}) == len(styles)
        assert len({s.family for s in styles}) >= 5
    assert SOURCE_STYLE == {"knee": "pd_fse", "pelvis": "t2_fse"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        knee[0].snr = 1.0  # type: ignore[misc]


def test_unknown_style_lists_valid_names():
    with pytest.raises(InputError) as err:
        get_style("knee", "t3_magic")
    assert "t3_magic" in str(err.value) and "pd_fse" in str(err.value) and "dess" in str(err.value)
    with pytest.raises(InputError, match="knee, pelvis"):
        get_style("brain", "t1")


# ---------------------------------------------------------------------------------------------
# determinism and anatomy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
def test_deterministic_from_seed(anatomy):
    style = SOURCE_STYLE[anatomy]
    a_img, a_lab = make_case(anatomy, style, 5, scale=FAST)
    b_img, b_lab = make_case(anatomy, style, 5, scale=FAST)
    assert np.array_equal(a_img.array, b_img.array) and np.array_equal(a_lab.array, b_lab.array)
    c_lab = make_case(anatomy, style, 6, scale=FAST)[1]
    changed = np.mean(a_lab.array != c_lab.array)
    assert changed > 0.01, "another seed must give another anatomy"


@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
def test_same_seed_same_grid_gives_same_labels_and_other_images(anatomy):
    styles = list_styles(anatomy)
    groups: dict[tuple, list[str]] = {}
    for s in styles:
        groups.setdefault((s.inplane_mm, s.slice_mm), []).append(s.name)
    pairs = [names for names in groups.values() if len(names) >= 2]
    assert pairs, "at least two styles should share a grid"
    for names in pairs:
        ref_img, ref_lab = case(anatomy, names[0], 2)
        for name in names[1:]:
            img, lab = case(anatomy, name, 2)
            assert np.array_equal(lab.array, ref_lab.array), (names[0], name)
            assert img.same_geometry(ref_img)
            body = ~pure_masks(anatomy, names[0], 2)["air"]
            r = np.corrcoef(img.array[body], ref_img.array[body])[0, 1]
            assert r < 0.93, f"{name} looks like {names[0]} in the body (r = {r:.3f})"


@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
def test_anatomy_does_not_depend_on_style(anatomy):
    """Structure volumes (mL) agree across styles with different grids: only sampling differs."""
    styles = list_styles(anatomy)
    vols = []
    for s in styles[:4] + styles[-2:]:
        img, lab = case(anatomy, s.name, 1)
        ml = np.prod(img.spacing) / 1000.0
        vols.append([np.sum(lab.array == v.value) * ml for v in ANATOMY_LABELS[anatomy]])
    vols = np.asarray(vols)
    rel = np.abs(vols - np.median(vols, axis=0)) / np.median(vols, axis=0)
    assert rel.max() < 0.25, np.round(vols, 1)


PLAUSIBLE_ML = {
    "knee": {1: (60, 260), 2: (6, 22), 3: (50, 250), 4: (1.5, 7)},
    "pelvis": {1: (2500, 9000), 2: (300, 1500), 3: (30, 600), 4: (20, 300), 5: (15, 90)},
}


@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
@pytest.mark.parametrize("seed", [0, 11])
def test_labels_from_table_with_plausible_volumes(anatomy, seed):
    img, lab = case(anatomy, SOURCE_STYLE[anatomy], seed, 1.0)
    assert lab.array.dtype == np.uint8 and img.array.dtype == np.float32
    values = {v.value for v in ANATOMY_LABELS[anatomy]}
    assert set(np.unique(lab.array).tolist()) == values | {0}
    ml = np.prod(img.spacing) / 1000.0
    for value, (lo, hi) in PLAUSIBLE_ML[anatomy].items():
        vol = np.sum(lab.array == value) * ml
        assert lo <= vol <= hi, f"label {value}: {vol:.1f} mL outside [{lo}, {hi}]"
    assert set(label_lookup(anatomy).tolist()) == values | {0}


def test_knee_cartilage_is_thin_but_several_voxels_thick():
    img, lab = case("knee", "pd_fse", 0, 1.0)
    fem_cart = lab.array == 2
    frac = fem_cart.sum() / np.isin(lab.array, [1, 2, 3, 4]).sum()
    assert 0.03 < frac < 0.15
    # rows run S->I: count consecutive cartilage pixels in each column crossing it
    runs = []
    for k in range(lab.shape[0]):
        for i in range(lab.shape[2]):
            col = fem_cart[k, :, i].astype(np.int8)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], col, [0]])))
            runs += list(edges[1::2] - edges[0::2])
    assert 2.0 <= np.median(runs) <= 4.5, np.median(runs)


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("anatomy,style,plane,ras", [("knee", "pd_fse", "sagittal", 0),
                                                     ("knee", "dess", "sagittal", 0),
                                                     ("pelvis", "t2_fse", "axial", 2),
                                                     ("pelvis", "t2_3t", "axial", 2)])
@pytest.mark.parametrize("scale", [FAST, 1.0])
def test_geometry(anatomy, style, plane, ras, scale):
    s = get_style(anatomy, style)
    img, lab = make_case(anatomy, style, 0, scale=scale) if scale == 1.0 else case(anatomy, style, 0)
    assert img.same_geometry(lab, atol=0)
    k_dir = img.direction[:, 2]
    assert k_dir[ras] == 1.0 and np.count_nonzero(k_dir) == 1
    assert plane_of_slices(img) == plane
    assert np.allclose(img.spacing, (s.inplane_mm / scale, s.inplane_mm / scale, s.slice_mm / scale))
    centre = img.ijk_to_ras @ np.array([(img.shape[2] - 1) / 2, (img.shape[1] - 1) / 2, (img.shape[0] - 1) / 2, 1])
    assert np.allclose(centre[:3], LAYOUTS[anatomy].centre_ras, atol=1e-6)
    assert np.linalg.norm(centre[:3]) < 20
    if scale == 1.0:
        if anatomy == "knee":
            assert 28 <= img.shape[0] <= 80 and 140 <= img.shape[1] <= 240
        else:
            assert 26 <= img.shape[0] <= 60 and 130 <= img.shape[2] <= 220


def test_scale_shrinks_the_matrix_not_the_field_of_view():
    big = acquisition_geometry("knee", get_style("knee", "pd_fse"), 1.0)
    small = acquisition_geometry("knee", get_style("knee", "pd_fse"), 0.5)
    assert all(abs(b / 2 - s) <= 1 for b, s in zip(big.shape, small.shape))
    with pytest.raises(InputError):
        make_case("knee", "pd_fse", 0, scale=0.0)


# ---------------------------------------------------------------------------------------------
# physics: signal equations, contrasts, noise
# ---------------------------------------------------------------------------------------------

def test_signal_equations():
    assert spin_echo(1.0, 1000.0, 100.0, 1000.0, 100.0) == pytest.approx((1 - np.exp(-1)) * np.exp(-1))
    # inversion recovery nulls T1 = 260 ms at TI = ln2 * T1 for long TR
    assert abs(inversion_recovery(1.0, 260.0, 80.0, 1e6, 0.0, np.log(2) * 260.0)) < 1e-9
    # Ernst angle maximises the spoiled GRE signal
    t1, tr = 1000.0, 20.0
    ernst = np.degrees(np.arccos(np.exp(-tr / t1)))
    flips = np.linspace(1, 60, 300)
    best = flips[np.argmax(spoiled_gre(1.0, t1, 30.0, tr, 0.0, flips))]
    assert abs(best - ernst) < 0.5
    # DESS: with T2 -> 0 the FISP echo becomes the spoiled GRE signal; fluid beats cartilage
    assert dess(1.0, 1000.0, 1e-6, 1e-6 * 0 + 1e9, 20.0, 0.0, 25.0) == pytest.approx(
        spoiled_gre(1.0, 1000.0, 1e9, 20.0, 0.0, 25.0), rel=1e-6)
    assert dess(1.0, 3700.0, 500.0, 300.0, 16.3, 4.7, 25.0) > dess(0.82, 1200.0, 37.0, 20.0, 16.3, 4.7, 25.0)


def _sig(anatomy, style, seed=0):
    s = get_style(anatomy, style)
    values = np.abs(tissue_signal(tissue_properties(anatomy, seed, s.field_t), s))
    return {name: float(values[v]) for name, v in tissue_ids(anatomy).items()}


def test_tissue_contrasts_follow_the_sequences():
    k = {name: _sig("knee", name) for name in ("pd_fse", "t1_se", "t2_fse", "pd_fs", "dess", "flash_we", "stir")}
    assert k["t1_se"]["fat"] > 2 * k["t1_se"]["synovial_fluid"]                  # T1: fat bright, fluid dark
    assert k["t2_fse"]["synovial_fluid"] > 3 * k["t2_fse"]["femoral_cartilage"]  # T2: fluid bright
    assert k["pd_fs"]["fat"] < 0.3 * k["pd_fs"]["femoral_cartilage"] < k["pd_fs"]["synovial_fluid"]
    assert k["stir"]["fat"] < 0.5 * k["stir"]["muscle"] and k["stir"]["femur_marrow"] < k["stir"]["muscle"]
    assert k["dess"]["synovial_fluid"] > k["dess"]["femoral_cartilage"] > k["dess"]["muscle"] > k["dess"]["fat"]
    assert k["flash_we"]["femoral_cartilage"] > max(k["flash_we"]["synovial_fluid"], k["flash_we"]["muscle"])
    for name in k:
        assert k[name]["meniscus"] < 0.2 * k[name]["femoral_cartilage"]  # menisci are dark everywhere
    p = {name: _sig("pelvis", name) for name in ("t2_fse", "t1_se", "stir", "t1_gre_dixon_like")}
    assert p["t2_fse"]["urine"] > 4 * p["t2_fse"]["muscle"]
    assert p["t2_fse"]["prostate_peripheral"] > 1.3 * p["t2_fse"]["prostate_transition"]
    assert p["t1_se"]["fat"] > 2 * p["t1_se"]["urine"]
    assert p["stir"]["fat"] < 0.5 * p["stir"]["muscle"]
    assert p["t1_gre_dixon_like"]["fat"] < 0.5 * p["t1_gre_dixon_like"]["muscle"]


def test_image_contrasts_knee():
    ratio = {s: pure_mean("knee", s, "fat") / pure_mean("knee", s, "muscle")
             for s in ("pd_fse", "t1_se", "pd_fs", "stir", "dess")}
    assert ratio["t1_se"] > 2.0 and ratio["pd_fse"] > 1.5
    assert ratio["pd_fs"] < 0.6 and ratio["stir"] < 0.6 and ratio["dess"] < 0.6
    assert pure_mean("knee", "t1_se", "femur_marrow") > 2 * pure_mean("knee", "t1_se", "muscle")
    assert pure_mean("knee", "pd_fs", "femur_marrow") < 0.6 * pure_mean("knee", "pd_fs", "muscle")


def test_image_contrasts_pelvis():
    for style, hi, lo, factor in (("t2_fse", "urine", "muscle", 3.0), ("t1_se", "fat", "urine", 2.0),
                                  ("stir", "urine", "fat", 3.0), ("t2_fse", "fat", "muscle", 2.0),
                                  ("t1_gre_dixon_like", "muscle", "fat", 1.5)):
        assert pure_mean("pelvis", style, hi) > factor * pure_mean("pelvis", style, lo), (style, hi, lo)


def test_prostate_capsule_outlines_the_gland_and_leaves_the_labels_alone():
    """A real prostate shows its outline on T2 as a thin dark capsule between the bright peripheral zone
    and the bright periprostatic fat; without it the phantom's gland had no edge against fat on T2 FSE."""
    p = _sig("pelvis", "t2_fse")
    assert p["prostate_capsule"] < 0.5 * min(p["prostate_peripheral"], p["fat"])  # dark rim on T2
    from scipy.ndimage import distance_transform_edt
    from gase.phantoms.pelvis import PelvisSubject
    ids, lut = tissue_ids("pelvis"), label_lookup("pelvis")
    assert lut[ids["prostate_capsule"]] == 5  # part of the gland: the outline a reader draws
    x = np.arange(-40.0, 40.0, 0.5, dtype=np.float32)
    y = np.arange(-20.0, 60.0, 0.5, dtype=np.float32)
    z = np.arange(-65.0, 15.0, 0.5, dtype=np.float32)
    for seed in (subject_seed(0, 0), subject_seed(1, 3)):
        subj = PelvisSubject(seed)
        assert 1.2 <= subj.capsule_mm <= 2.0
        tis = subj.sample(x, y, z)
        gland = lut[tis] == 5
        cap = tis == ids["prostate_capsule"]
        assert 0.05 < cap.sum() / gland.sum() < 0.35
        # a shell about its thickness deep (thicker where the gland's outline is bumpy), never its core
        depth = distance_transform_edt(gland, sampling=0.5)[cap]
        assert np.percentile(depth, 90) <= subj.capsule_mm + 0.5 and depth.max() <= 2 * subj.capsule_mm
        # and drawn inside the old outline: the labels are those of the gland without it
        subj.capsule_mm = 0.0
        assert np.array_equal(lut[subj.sample(x, y, z)], lut[tis])


@pytest.mark.parametrize("anatomy,style", [("knee", "pd_fse"), ("knee", "pd_fse_1t_lowsnr"),
                                           ("pelvis", "t2_fse"), ("pelvis", "stir")])
def test_rician_noise_matches_the_snr(anatomy, style):
    img = case(anatomy, style, 3)[0].array
    air = pure_masks(anatomy, style, 3)["air"]
    bg = img[air]
    assert bg.size > 500
    sigma = bg.mean() / np.sqrt(np.pi / 2)
    assert bg.std() / bg.mean() == pytest.approx(np.sqrt(4 / np.pi - 1), rel=0.08)  # Rayleigh background
    snr = img[~air].mean() / sigma
    assert snr == pytest.approx(get_style(anatomy, style).snr, rel=0.2)


def test_acquisition_noise_depends_on_style_and_images_are_positive():
    air = pure_masks("knee", "pd_fse", 2)["air"]
    a, b = case("knee", "pd_fse", 2)[0].array, case("knee", "t1_se", 2)[0].array
    assert np.corrcoef(a[air], b[air])[0, 1] < 0.1  # independent noise realisations
    for arr in (a, b):
        assert arr.dtype == np.float32 and (arr >= 0).all() and np.isfinite(arr).all() and arr.max() > 10


# ---------------------------------------------------------------------------------------------
# out-of-distribution volumes
# ---------------------------------------------------------------------------------------------

def test_ood_kinds_listed_and_unknown_rejected():
    assert set(OOD_KINDS) == {"ct", "other_anatomy", "noise", "motion", "inverted", "wrong_orientation"}
    with pytest.raises(InputError, match="ct"):
        make_ood("xray", "knee", 0)


@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
def test_ct_rendering(anatomy):
    ct = make_ood("ct", anatomy, 1, scale=FAST)
    img, lab = case(anatomy, SOURCE_STYLE[anatomy], 1)
    assert ct.same_geometry(img) and ct.array.dtype == np.float32
    masks = pure_masks(anatomy, SOURCE_STYLE[anatomy], 1)
    bone = lab.array == (1 if anatomy == "knee" else 2)
    assert ct.array[bone].mean() > ct.array[~bone].mean() + 200
    assert ct.array[bone].mean() == pytest.approx(ct.array.max(), abs=1200)
    assert ct.array[masks["air"]].mean() == pytest.approx(-1000, abs=15)
    assert ct.array[masks["fat"]].mean() == pytest.approx(-100, abs=20)
    assert ct.array[masks["muscle"]].mean() == pytest.approx(50, abs=15)


def test_inverted_is_monotonically_reversed():
    src = case("knee", "pd_fse", 2)[0]
    inv = make_ood("inverted", "knee", 2, scale=FAST)
    assert inv.same_geometry(src)
    total = inv.array + src.array
    assert np.allclose(total, total.flat[0], rtol=0, atol=1e-3 * src.array.max())
    order = np.argsort(src.array.ravel()[::97], kind="stable")
    assert np.all(np.diff(inv.array.ravel()[::97][order]) <= 1e-3)


def test_noise_has_no_structure():
    src, lab = case("pelvis", "t2_fse", 2)
    noise = make_ood("noise", "pelvis", 2, scale=FAST)
    a = noise.array
    assert noise.same_geometry(src) and (a >= 0).all()
    assert a.mean() == pytest.approx(src.array.mean(), rel=0.05)
    for axis in range(3):
        r = np.corrcoef(np.take(a, range(a.shape[axis] - 1), axis).ravel(),
                        np.take(a, range(1, a.shape[axis]), axis).ravel())[0, 1]
        assert abs(r) < 0.03
    assert abs(np.corrcoef(a.ravel(), (lab.array > 0).ravel())[0, 1]) < 0.03


def test_motion_adds_ghosts_in_the_background():
    src = case("knee", "pd_fse", 2)[0]
    moved = make_ood("motion", "knee", 2, scale=FAST)
    air = pure_masks("knee", "pd_fse", 2)["air"]
    assert moved.same_geometry(src)
    assert moved.array[air].mean() > 3 * src.array[air].mean()


@pytest.mark.parametrize("anatomy", ["knee", "pelvis"])
def test_wrong_orientation_and_other_anatomy(anatomy):
    src = case(anatomy, SOURCE_STYLE[anatomy], 2)[0]
    wrong = make_ood("wrong_orientation", anatomy, 2, scale=FAST)
    assert np.array_equal(wrong.ijk_to_ras, src.ijk_to_ras)
    assert wrong.shape == (src.shape[1], src.shape[0], src.shape[2])
    assert np.array_equal(wrong.array, np.swapaxes(src.array, 0, 1))
    other_name = "pelvis" if anatomy == "knee" else "knee"
    other = make_ood("other_anatomy", anatomy, 2, scale=FAST)
    assert np.array_equal(other.array, case(other_name, SOURCE_STYLE[other_name], 2)[0].array)


# ---------------------------------------------------------------------------------------------
# files and CLI
# ---------------------------------------------------------------------------------------------

def test_write_cases_round_trip(tmp_path):
    pairs = write_cases("knee", "t2_fse", 2, 7, tmp_path, scale=FAST)
    assert [p.name for p, _ in pairs] == ["knee_t2_fse_000.nrrd", "knee_t2_fse_001.nrrd"]
    for i, (img_path, lab_path) in enumerate(pairs):
        assert img_path.parent.name == "images" and lab_path.parent.name == "labels"
        assert img_path.name == lab_path.name
        image, labels = make_case("knee", "t2_fse", subject_seed(7, i), scale=FAST)
        img_back, lab_back = read_volume(img_path), read_volume(lab_path)
        assert img_back.array.dtype == np.float32 and lab_back.array.dtype == np.uint8
        assert np.array_equal(img_back.array, image.array) and np.array_equal(lab_back.array, labels.array)
        assert np.array_equal(img_back.ijk_to_ras, image.ijk_to_ras)
        assert np.array_equal(lab_back.ijk_to_ras, labels.ijk_to_ras)
    with pytest.raises(OutputError, match="already exists"):
        write_cases("knee", "t2_fse", 1, 7, tmp_path, scale=FAST)
    nifti = write_cases("pelvis", "t1_se", 1, 7, tmp_path / "nii", fmt="nifti", scale=FAST)
    back = read_volume(nifti[0][1])
    assert nifti[0][1].name == "pelvis_t1_se_000.nii.gz"
    assert np.allclose(back.ijk_to_ras, make_case("pelvis", "t1_se", subject_seed(7, 0), scale=FAST)[1].ijk_to_ras,
                       atol=1e-4)


def test_subject_sets_of_different_seeds_do_not_overlap():
    a = {subject_seed(0, i) for i in range(50)}
    b = {subject_seed(1, i) for i in range(50)}
    assert len(a) == 50 and not a & b


def _args(**kw):
    parser = add_phantom_arguments(argparse.ArgumentParser(prog="gase phantom"))
    argv = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return parser.parse_args(argv)


def test_cli_lists_styles(capsys):
    assert run_phantom(_args(list_styles=True)) == 0
    out = capsys.readouterr().out
    for s in list_styles():
        assert s.name in out
    assert out.count("(source)") == 2
    run_phantom(_args(list_styles=True, anatomy="pelvis"))
    out = capsys.readouterr().out
    assert "prostate" in out and "dess" not in out


def test_cli_writes_cases(tmp_path, capsys):
    assert run_phantom(_args(anatomy="pelvis", subjects=1, seed=3, out=tmp_path, scale=FAST)) == 0
    assert (tmp_path / "images" / "pelvis_t2_fse_000.nrrd").exists()
    assert (tmp_path / "labels" / "pelvis_t2_fse_000.nrrd").exists()
    assert str(tmp_path / "images") in capsys.readouterr().out
    with pytest.raises(OutputError, match="--overwrite"):
        run_phantom(_args(anatomy="pelvis", subjects=1, seed=3, out=tmp_path, scale=FAST))


@pytest.mark.parametrize("kw,error,words", [
    (dict(anatomy="brain", out="x"), InputError, ["brain", "knee", "pelvis"]),
    (dict(anatomy="knee", style="t9", out="x"), InputError, ["t9", "pd_fse", "--list-styles"]),
    (dict(anatomy="knee", subjects=0, out="x"), InputError, ["--subjects", "at least 1"]),
    (dict(anatomy="knee", format="dicom", out="x"), InputError, ["dicom", "nrrd", "nifti"]),
    (dict(anatomy="knee"), InputError, ["--out"]),
    (dict(out="x"), InputError, ["--anatomy", "--list-styles"]),
])
def test_cli_errors_name_the_fix(kw, error, words):
    with pytest.raises(error) as err:
        run_phantom(_args(**kw))
    for w in words:
        assert w in str(err.value)


def test_generation_time():
    """One default-size volume within ~1.5 s of CPU (generous bound: shared machines are noisy)."""
    make_case("knee", "pd_fse", 100)  # warm caches
    t = time.process_time()
    make_case("knee", "pd_fse", 101)
    make_case("pelvis", "t2_fse", 101)
    assert (time.process_time() - t) / 2 < 3.0
