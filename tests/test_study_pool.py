"""The study's pre-training pool: unlabelled and extra images in, held-out participants out."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from training_helpers import TINY_SHAPE, smooth_crops

from bids_pcs.config import RecipeError, load_settings
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.levels.training_inputs import CropFile
from bids_pcs.splits import StudySplit
from bids_pcs.study.pool import (
    cache_pretraining_pool,
    check_pool_mode,
    pretraining_indices,
    selected_crops,
)

SPLIT = StudySplit(fold=0, train=("01", "02"), validation=("03",), test=("04",))


def _pool(tmp_path: Path):
    """BIDS_DIR: 01-04 labelled (split above), 05 unlabelled; an extra dataset with 01 and 09."""
    main, extra = tmp_path / "bids", tmp_path / "cohort"
    settings = load_settings("default", overrides={
        "run": {"bids_dir": str(main), "output_dir": str(tmp_path / "out")},
        "crop": {"size_mm": list(TINY_SHAPE)}})
    files = []
    volumes = iter(smooth_crops(14))
    for dataset, subjects in ((main, ["01", "02", "03", "04", "05"]), (extra, ["01", "09"])):
        for subject in subjects:
            image = T1wImage(path=dataset / f"sub-{subject}_T1w.nii.gz", subject=subject)
            for hemisphere in "LR":
                path = tmp_path / "crops" / dataset.name / f"sub-{subject}_{hemisphere}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(next(volumes)[0].numpy(), np.eye(4)), path)
                files.append(CropFile(path, image, hemisphere, str(dataset)))
    return settings, cache_pretraining_pool(settings, files, tmp_path / "work"), files


def test_every_image_but_the_held_out_participants_pretrains(tmp_path):
    settings, pool, files = _pool(tmp_path)
    chosen = [pool.records[i] for i in pretraining_indices(pool, SPLIT, "all")]
    main = str(tmp_path / "bids")
    assert sorted({r.subject for r in chosen if r.dataset == main}) == ["01", "02", "05"]
    # the extra dataset's sub-01 is another person: kept, as its sub-09
    assert sorted(r.subject for r in chosen if r.dataset != main) == ["01", "01", "09", "09"]
    train_only = [pool.records[i] for i in pretraining_indices(pool, SPLIT, "train")]
    assert {(r.dataset, r.subject) for r in train_only} == {(main, "01"), (main, "02")}

    crops, summary = selected_crops(pool, SPLIT, "all")
    assert len(crops) == len(chosen) == 10
    assert (summary["n_crops"], summary["n_images"], summary["participants"]) == (
        10, 5, ["01", "02", "05"])
    assert summary["datasets"]["cohort"]["n_images"] == 2
    # the crops are those of the files, in order
    kept = [f for f in files if not (f.dataset == main and f.image.subject in ("03", "04"))]
    expected = torch.stack([torch.from_numpy(np.asarray(nib.load(f.path).dataobj))
                            for f in kept])[:, None]
    assert torch.equal(crops.images, expected)


def test_the_pool_is_reused_until_a_crop_changes(tmp_path):
    settings, pool, files = _pool(tmp_path)
    again = cache_pretraining_pool(settings, files, tmp_path / "work")
    assert again.data_digest == pool.data_digest and again.sha256 == pool.sha256
    nib.save(nib.Nifti1Image(np.ones(TINY_SHAPE, np.float32), np.eye(4)), files[0].path)
    changed = cache_pretraining_pool(settings, files, tmp_path / "work")
    assert changed.data_digest != pool.data_digest


def test_an_unknown_pool_mode_is_refused(tmp_path):
    settings = load_settings("default", overrides={"study": {"pretrain_pool": "everything"}})
    with pytest.raises(RecipeError, match="pretrain_pool"):
        check_pool_mode(settings)


def test_out_of_distribution_participants_never_pretrain(tmp_path):
    import dataclasses

    from bids_pcs.levels.study import without_test_on_value

    settings, pool, files = _pool(tmp_path)
    main = str(tmp_path / "bids")
    ood = dataclasses.replace(SPLIT, train=("01",), ood_test=("02",))
    chosen = {(r.dataset, r.subject)
              for r in (pool.records[i] for i in pretraining_indices(pool, ood, "all"))}
    assert (main, "02") not in chosen and {(main, "01"), (main, "05")} <= chosen
    # the pool itself leaves out every BIDS_DIR participant with the value, labelled
    # (04) or not (05); the extra dataset's participants are other people
    (tmp_path / "bids").mkdir(exist_ok=True)
    (tmp_path / "bids" / "participants.tsv").write_text(
        "participant_id\tsite\nsub-01\tA\nsub-02\tA\nsub-03\tA\nsub-04\tB\nsub-05\tB\n")
    marked = settings.replace(study={"test_on": "site=B"}, run={"labels": str(tmp_path)})
    kept = {(f.dataset, f.image.subject) for f in without_test_on_value(marked, files)}
    assert kept == {(f.dataset, f.image.subject) for f in files} - {(main, "04"), (main, "05")}
    assert without_test_on_value(settings, files) == files
