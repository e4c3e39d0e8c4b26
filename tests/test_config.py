"""Recipes and settings: defaults, overrides, validation, dumps."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bids_pcs.config import (
    RecipeError,
    available_recipes,
    dump_settings_toml,
    load_settings,
    settings_from_dict,
)


def test_default_recipe_matches_the_paper_configuration():
    settings = load_settings("default")
    assert settings.crop.shape_vox == (32, 96, 64)
    assert all(side % 32 == 0 for side in settings.crop.shape_vox)
    assert settings.model.feature_size == 24
    assert settings.finetune.segmentation_weight == pytest.approx(0.8)
    assert settings.study.train_fraction == pytest.approx(0.6)
    assert "default" in available_recipes()


def test_right_box_mirrors_left_box():
    crop = load_settings().crop
    left, right = crop.min_mm("L"), crop.min_mm("R")
    assert right[0] == pytest.approx(-(left[0] + crop.size_mm[0]))
    assert right[1:] == left[1:]


@pytest.mark.parametrize(("length", "expected"), [(0, "absent"), (19.9, "absent"),
                                                  (20, "present"), (40, "present"),
                                                  (40.1, "prominent")])
def test_class_from_length(length, expected):
    assert load_settings().labels.class_from_length(length) == expected


def test_overrides_and_type_checks():
    settings = load_settings("default", {"pretrain": {"epochs": 3}, "run": {"seed": 5}})
    assert settings.pretrain.epochs == 3 and settings.run.seed == 5
    with pytest.raises(RecipeError, match="must be an integer"):
        load_settings("default", {"pretrain": {"epochs": "many"}})
    with pytest.raises(RecipeError, match=r"Unknown setting\(s\) colour in \[crop\]"):
        load_settings("default", {"crop": {"colour": 1}})


def test_recipe_from_file_extends_default(tmp_path):
    recipe = tmp_path / "mine.toml"
    recipe.write_text('extends = "default"\n[model]\narchitecture = "cnn"\nfeature_size = 8\n')
    settings = load_settings(str(recipe))
    assert settings.model.architecture == "cnn" and settings.model.feature_size == 8
    assert settings.crop.size_mm == (32, 96, 64)


def test_unknown_recipe_and_bad_toml(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_settings("no-such-recipe")
    bad = tmp_path / "bad.toml"
    bad.write_text("[crop\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_settings(str(bad))


def test_dump_round_trips():
    settings = load_settings("default", {"run": {"participant_label": ["01"]}})
    dumped = tomllib.loads(dump_settings_toml(settings))
    assert settings_from_dict(dumped) == settings


def test_the_template_is_one_fact_read_from_the_recipe():
    """Derivative names, QC records and the loaded template all follow config.TEMPLATE_NAME."""
    from bids_pcs.config import TEMPLATE_NAME, TemplateSettings
    from bids_pcs.io.bids_input import T1wImage
    from bids_pcs.io.derivatives import crop_path, registration_qc_path
    from bids_pcs.spatial.template import load_template

    settings = load_settings("default")
    assert settings.template == TemplateSettings(name=TEMPLATE_NAME, resolution_mm=1.0)
    image = T1wImage(path=Path("sub-01_T1w.nii.gz"), subject="01", session=None, entities=())
    assert f"_space-{TEMPLATE_NAME}_" in crop_path(Path("/out"), image, "L").name
    assert f"_space-{TEMPLATE_NAME}_" in registration_qc_path(Path("/out"), image).name
    template = load_template(settings.template)
    assert template.name == TEMPLATE_NAME
    assert template.t1.header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    with pytest.raises(RecipeError, match="MNI152NLin6Asym.*not available"):
        load_settings("default", {"template": {"name": "MNI152NLin6Asym"}})
    with pytest.raises(RecipeError, match="resolution_mm = 2 is not available"):
        load_settings("default", {"template": {"resolution_mm": 2}})
