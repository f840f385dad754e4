"""Model folders: safe loading (no pickles, checksums, schema), listing and installing."""
from __future__ import annotations

import json
import shutil
import zipfile

import pytest
import torch

from gase.errors import ModelError
from gase.model_card import install_model, list_models, load_card, load_tensors
from gase.predictor import Predictor


def _copy(tiny_model, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model, dst, ignore=shutil.ignore_patterns("training"))
    return dst


def test_tiny_model_loads_and_card_is_complete(tiny_model):
    card = load_card(tiny_model)
    assert card.plane == "sagittal" and card.anatomy == "knee"
    assert [lab.name for lab in card.labels] == ["femur", "femoral cartilage", "tibia", "tibial cartilage"]
    assert card.validity["threshold"] > 0
    assert set(card.files) >= {"weights.safetensors", "validity.safetensors"}
    assert all(len(d) == 64 for d in card.files.values())


def test_pickled_file_in_model_folder_is_refused(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    torch.save({"evil": 1}, m / "weights.pt")
    with pytest.raises(ModelError, match="pickled"):
        Predictor.from_folder(m)


def test_pickle_disguised_as_safetensors_is_refused(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    card = json.loads((m / "model.json").read_text())
    torch.save({"a": torch.zeros(1)}, m / "weights.safetensors")  # a pickle under the safetensors name
    from gase.model_card import sha256

    card["files"]["weights.safetensors"] = sha256(m / "weights.safetensors")  # even with a matching checksum
    (m / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="safetensors"):
        Predictor.from_folder(m)


def test_card_naming_a_pickle_is_refused(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    card = json.loads((m / "model.json").read_text())
    card["files"]["extra.bin"] = "0" * 64
    (m / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="only from .safetensors"):
        load_card(m)


def test_checksum_mismatch_is_refused(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    data = bytearray((m / "validity.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (m / "validity.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        load_card(m)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("labels"), "required field 'labels'"),
    (lambda c: c.__setitem__("plane", "diagonal"), "plane"),
    (lambda c: c["files"].__setitem__("../../etc/passwd.safetensors", "0" * 64), "plain file names"),
    (lambda c: c.__setitem__("schema_version", 99), "newer"),
    (lambda c: c["validity"].__setitem__("threshold", -1), "threshold"),
    (lambda c: c.__setitem__("labels", [{"value": 300, "name": "x", "color": [1, 0, 0]}]), "1..255"),
])
def test_malformed_or_tampered_card_gets_a_clear_error(tiny_model, tmp_path, mutate, message):
    m = _copy(tiny_model, tmp_path)
    card = json.loads((m / "model.json").read_text())
    mutate(card)
    (m / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        load_card(m)


def test_not_json_card(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    (m / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_card(m)


def test_install_from_zip_and_list(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GASE_USER_MODELS_DIR", str(tmp_path / "user"))
    m = _copy(tiny_model, tmp_path)
    z = tmp_path / "m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in m.iterdir():
            zf.write(p, f"mymodel/{p.name}")
    card = install_model(z)
    assert card.folder.parent == (tmp_path / "user").resolve()
    names = [c.name for c in list_models()]
    assert card.name in names
    with pytest.raises(ModelError, match="already installed"):
        install_model(z)


def test_load_tensors_never_unpickles(tiny_model):
    card = load_card(tiny_model)
    t = load_tensors(card, "weights.safetensors")
    assert any(k.startswith("segmenter.") for k in t) and any(k.startswith("style_encoder.") for k in t)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["architecture"].__setitem__("segmenter_channels", [16, 10**6]), "layer widths, each 1..1024"),
    (lambda c: c["architecture"].__setitem__("segmenter_channels", ["16", 32]), "layer widths"),
    (lambda c: c["architecture"].__setitem__("encoder_channels", []), "encoder_channels must list 1 to 8"),
    (lambda c: c["architecture"].__setitem__("style_dim", 0), "style_dim must be 1..1024"),
    (lambda c: c["normalization"].__setitem__("low", 99.9), "0 <= low < high <= 100"),
    (lambda c: c["normalization"].__setitem__("high", "99.5"), "0 <= low < high <= 100"),
    (lambda c: c["normalization"].__setitem__("clip", [1.0, 0.0]), "clip must be two numbers"),
    (lambda c: c["validity"].__setitem__("threshold", float("inf")), "threshold must be a positive number"),
    (lambda c: c.__setitem__("confidence_calibration", {"scale": float("nan"), "bias": 0.0}), "finite numbers"),
    (lambda c: c.__setitem__("input_spacing_mm", float("nan")), "not a plausible spacing"),
    (lambda c: c["validity"].__setitem__("training_foreground_ml", -3.0), "training_foreground_ml must be a positive"),
], ids=["huge_layer", "string_width", "no_encoder_layers", "zero_style_dim", "low_above_high", "string_percentile",
        "reversed_clip", "infinite_threshold", "nan_calibration", "nan_spacing", "negative_foreground"])
def test_card_values_are_bounded_before_anything_is_built(tiny_model, tmp_path, mutate, message):
    """Widths and numbers a network would be built from are checked against the schema's bounds first."""
    m = _copy(tiny_model, tmp_path)
    card = json.loads((m / "model.json").read_text())
    mutate(card)
    (m / "model.json").write_text(json.dumps(card))  # json writes NaN/Infinity, as a tampered card could
    with pytest.raises(ModelError, match=message):
        Predictor.from_folder(m)


def test_symlink_out_of_the_model_folder_is_refused(tiny_model, tmp_path):
    m = _copy(tiny_model, tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (m / "weights.safetensors").rename(outside)
    (m / "weights.safetensors").symlink_to(outside)  # same bytes, same checksum: only the location is wrong
    with pytest.raises(ModelError, match="points outside the model folder"):
        load_card(m)


def test_oversized_weights_are_refused(tiny_model, tmp_path, monkeypatch):
    import gase.model_card as model_card

    m = _copy(tiny_model, tmp_path)
    monkeypatch.setattr(model_card, "MAX_WEIGHT_BYTES", 1024)
    with pytest.raises(ModelError, match="larger than 0 MB; refusing to load"):
        load_card(m)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("precision"), "validity.safetensors is incomplete"),
    (lambda t: t.__setitem__("mean", t["mean"][:-3].contiguous()), "does not fit the network"),
], ids=["missing_tensor", "wrong_feature_size"])
def test_validity_file_must_fit_the_network(tiny_model, tmp_path, change, message):
    from safetensors.torch import load_file, save_file

    from gase.model_card import write_card

    m = _copy(tiny_model, tmp_path)
    tensors = load_file(str(m / "validity.safetensors"))
    change(tensors)
    save_file(tensors, str(m / "validity.safetensors"))
    write_card(load_card(m, verify=False), m)  # a consistent checksum: the content itself is what is wrong
    with pytest.raises(ModelError, match=message):
        Predictor.from_folder(m)
