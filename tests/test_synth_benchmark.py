"""The benchmark preset of the synthetic cohort: folds, interruptions, distractors,
prevalence, sites and artefacts, and the presets themselves."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import ndimage

from bids_pcs.config import PCS_CLASSES, LabelSettings, Settings, load_settings
from bids_pcs.io.validator import validate
from bids_pcs.synth import (
    SynthOptions,
    anatomy,
    deformation,
    draw_population,
    make_cohort,
    morphology,
    pcs_geometry,
    population,
    prevalence,
)
from bids_pcs.synth.artefacts import KspaceArtefacts
from bids_pcs.synth.command import main
from bids_pcs.synth.options import preset_of
from bids_pcs.synth.sites import Site
from bids_pcs.synth.synthesis import SULCUS_CODES, synthesize_participant

LABELS = LabelSettings()
SOURCE = anatomy.COLIN_NAME if anatomy.colin27_available() else anatomy.MNI_NAME


def _clean(**changes) -> SynthOptions:
    """Benchmark anatomy, scanned without pose, bias or artefacts (to measure it)."""
    base = dict(max_rotation_deg=0.0, max_shift_mm=0.0, bias_strength=0.0,
                sites=(Site("A", "mprage", (1.0, 1.0, 1.0)),), orientations=("RAS",),
                stripped_fraction=0.0, template_blur_mm=0.0,
                artefacts=dataclasses.replace(SynthOptions().artefacts,
                                              ringing_probability=0.0, ghosting_probability=0.0,
                                              strong_bias_probability=0.0,
                                              deface_probability=0.0))
    base.update(changes)
    return SynthOptions(**base)


def _spec(classes, lengths, source=SOURCE, age=40) -> population.ParticipantSpec:
    return population.ParticipantSpec(label="01", index=0, age=age, sex="F", group="control",
                                      source=source, classes=classes,
                                      target_length_mm=lengths, sessions=(None,),
                                      head_scale=0.97, site="A")


def _sample(img: nib.Nifti1Image, scanner_mm: np.ndarray) -> np.ndarray:
    vox = nib.affines.apply_affine(np.linalg.inv(img.affine), scanner_mm)
    return ndimage.map_coordinates(np.asarray(img.dataobj, dtype=np.float32), vox.T, order=1)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three benchmark participants (the default preset), with sessions."""
    return make_cohort(tmp_path_factory.mktemp("bench") / "bids", 3, seed=5,
                       options=SynthOptions(sessions_fraction=0.5, figure_images=2))


def test_pcs_is_a_fold_with_grey_banks_on_both_sides_in_the_image():
    rng = np.random.default_rng(3)
    spec = _spec({"L": "prominent", "R": "present"}, {"L": 48.0, "R": 30.0})
    options = _clean(pcs=dataclasses.replace(SynthOptions().pcs, segments=(1.0, 0.0, 0.0)))
    result = synthesize_participant(spec, options, rng)
    acq = result.acquisitions[0]
    intensity = acq.truth["TissueIntensity"]
    gm, wm = intensity["GM"], intensity["WM"]
    for sulcus in (s for s in result.sulci if s.kind == "pcs"):
        course = sulcus.course
        centre = course.centreline()[::8]
        s_mm = np.arange(len(course.centreline()))[::8] * 0.25
        inside = (s_mm > 8) & (s_mm < course.length_mm - 8)  # away from the tapered ends
        normals = pcs_geometry.arc_normals(course.arc)[
            np.clip(np.round(course.start_mm / 0.25).astype(int) + np.arange(len(s_mm)) * 8, 0,
                    len(pcs_geometry.dense_arc(course.arc)) - 1)]
        # 7 mm from the midline: below the medial cortex, where without banks the
        # walls would be white matter (at 5 mm they are grey either way)
        x = course.side * 7.0
        sides = []
        for sign in (-1.0, 1.0):
            d = course.half_width_mm + 0.7 + course.bank_mm / 2
            yz = centre + sign * d * normals
            points = np.column_stack([np.full(len(yz), x), yz[:, 0],
                                      yz[:, 1] + course.sheet_z_mm(7.0)])[inside]
            sides.append(_sample(acq.t1w, deformation.scanner_points(
                points, result.shape, deformation.Pose(np.eye(4)))))
        core = np.column_stack([np.full(len(centre), x), centre[:, 0],
                                centre[:, 1] + course.sheet_z_mm(7.0)])[inside]
        middle = _sample(acq.t1w, deformation.scanner_points(core, result.shape,
                                                             deformation.Pose(np.eye(4))))
        for values in sides:
            # grey matter on both walls: nearer the grey than the white intensity
            assert np.mean(np.abs(values - gm) < np.abs(values - wm)) > 0.8
        # and CSF between them: darker than either wall
        assert np.mean((middle < sides[0]) & (middle < sides[1])) > 0.8


def test_carving_turns_white_matter_into_grey_banks():
    levels = np.full((40, 120, 100), 3.0, dtype=np.float32)  # all white matter
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-20.0, -20.0, -5.0)
    course = pcs_geometry.draw_course(np.random.default_rng(0), "L", 40.0)
    label = pcs_geometry.carve(levels, affine, course)
    region = levels[label.box]
    assert (region[label.mask] <= 1.5).all()
    grey = (region > 1.5) & (region <= 2.05)
    # a grey lining around the CSF core: it touches the core and outnumbers it
    assert grey.sum() > 2 * label.n_voxels
    assert (ndimage.binary_dilation(label.mask, iterations=2) & grey).sum() > label.n_voxels


def test_interrupted_sulcus_is_its_segments_and_its_length_their_sum():
    rng = np.random.default_rng(8)
    pcs = dataclasses.replace(SynthOptions().pcs, segments=(0.0, 0.0, 1.0), bridge_mm=(6.0, 8.0),
                              variation=0.0, width_variation=0.0, collapse=0.0,
                              half_width_mm=(0.9, 1.0))
    spec = _spec({"L": "prominent", "R": "absent"}, {"L": 52.0, "R": None})
    result = synthesize_participant(spec, _clean(pcs=pcs, distractors=dataclasses.replace(
        SynthOptions().distractors, dimples=(0, 0))), rng)
    segments = result.segments_mm["L"]
    assert len(segments) == 3
    assert sum(segments) == pytest.approx(result.length_mm["L"], abs=1e-6)
    assert result.length_mm["L"] == pytest.approx(52.0, abs=1.0)
    # each segment alone is below the prominent threshold; the sum decides the class
    assert max(segments) < 40 and LABELS.class_from_length(sum(segments)) == "prominent"
    label = np.asarray(result.acquisitions[0].dseg.dataobj) == LABELS.dseg_left
    components, count = ndimage.label(label, structure=np.ones((3, 3, 3)))
    sizes = sorted(np.bincount(components.ravel())[1:], reverse=True)
    assert count >= 3 and sum(sizes[:3]) > 0.97 * label.sum()


def test_distractors_are_carved_but_carry_no_label():
    rng = np.random.default_rng(21)
    spec = _spec({"L": "present", "R": "absent"}, {"L": 30.0, "R": 15.0})
    options = _clean(distractors=dataclasses.replace(
        SynthOptions().distractors, intralimbic_probability=1.0,
        superior_rostral_probability=1.0, dimples=(2, 2)))
    result = synthesize_participant(spec, options, rng, keep_sulci=True)
    acq = result.acquisitions[0]
    dseg = np.asarray(acq.dseg.dataobj)
    sulci = np.asarray(acq.sulci.dataobj)
    image = np.asarray(acq.t1w.dataobj, dtype=np.float32)
    kinds = {s.kind for s in result.sulci}
    assert {"cingulate", "intralimbic", "superior_rostral", "dimple", "short_pcs"} <= kinds
    for kind in ("cingulate", "intralimbic", "superior_rostral", "dimple", "short_pcs"):
        where = sulci == SULCUS_CODES[kind]
        assert where.any(), kind
        assert not dseg[where].any(), kind  # no label voxel on a distractor
    # the cingulate sulcus is as dark as a sulcus: darker than the tissue around it
    cingulate = sulci == SULCUS_CODES["cingulate"]
    ring = ndimage.binary_dilation(cingulate, iterations=3) & ~ndimage.binary_dilation(
        cingulate, iterations=1) & (sulci == 0)
    assert image[cingulate].mean() < 0.9 * image[ring].mean()
    # the short PCS-like sulcus of the absent hemisphere: carved, unlabelled, class absent
    assert not (dseg == LABELS.dseg_right).any()
    assert result.length_mm["R"] == 0.0
    assert acq.truth["ShortSulcusMm"]["right"] == pytest.approx(15.0, abs=1.0)
    assert (dseg == LABELS.dseg_left).sum() > 100


def test_prevalence_of_500_participants_is_the_cited_one_within_5_points():
    specs = draw_population(500, seed=0)
    table = prevalence.joint_table(prevalence.CITED_PREVALENCE, prevalence.CITED_CONCORDANCE)
    for hemi, counts in prevalence.CITED_COUNTS.items():
        drawn = [s.classes[hemi] for s in specs]
        for k, pcs_class in enumerate(PCS_CLASSES):
            cited = counts[k] / prevalence.CITED_N
            assert abs(drawn.count(pcs_class) / 500 - cited) < 0.05, (hemi, pcs_class)
    for k, pcs_class in enumerate(PCS_CLASSES):
        both = sum(s.classes["L"] == s.classes["R"] == pcs_class for s in specs) / 500
        assert abs(both - prevalence.CITED_BOTH_COUNTS[k] / prevalence.CITED_N) < 0.05
        assert table[k, k] == pytest.approx(prevalence.CITED_BOTH_COUNTS[k] / prevalence.CITED_N,
                                            abs=1e-3)
    # the table's margins are the cited per-hemisphere figures
    assert table.sum(1) == pytest.approx(np.array(prevalence.CITED_COUNTS["L"]) / 149, abs=1e-3)
    assert table.sum(0) == pytest.approx(np.array(prevalence.CITED_COUNTS["R"]) / 149, abs=1e-3)
    assert {s.site for s in specs} == {"A", "B", "C"}


def test_the_population_sampled_without_images_is_the_cohorts(cohort):
    rows = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t")
    specs = draw_population(3, seed=5, options=SynthOptions(sessions_fraction=0.5))
    assert list(rows.site) == [s.site for s in specs]
    assert list(rows.anatomy_source) == [s.source for s in specs]
    assert list(rows.pcs_left) == [s.classes["L"] for s in specs]
    assert list(rows.pcs_right) == [s.classes["R"] for s in specs]


def test_impossible_concordance_is_refused():
    with pytest.raises(ValueError, match="cannot exceed"):
        prevalence.joint_table({"L": (0.2, 0.4, 0.4), "R": (0.5, 0.3, 0.2)}, (0.3, 0.1, 0.1))


def test_benchmark_cohort_sites_labels_readme_and_figures(cohort):
    raw = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t")
    sidecar = json.loads((cohort.bids_dir / "participants.json").read_text())
    assert set(sidecar["site"]["Levels"]) == {"A", "B", "C"}
    sites = {s.name: s for s in SynthOptions().sites}
    for t1w_path in sorted(cohort.bids_dir.glob("sub-*/**/anat/*_T1w.nii.gz")):
        subject = t1w_path.name.split("_")[0]
        site = raw.set_index("participant_id").loc[subject, "site"]
        canonical = nib.as_closest_canonical(nib.load(t1w_path))  # voxel sizes in RAS order
        assert np.allclose(canonical.header.get_zooms(), sites[site].voxel_mm,
                           atol=1e-4)
    for row in raw.itertuples():
        for side in ("left", "right"):
            assert LABELS.class_from_length(getattr(row, f"pcs_{side}_length_mm")) == \
                getattr(row, f"pcs_{side}")
    readme = (cohort.bids_dir / "README").read_text()
    assert "--preset benchmark --seed 5` with `sessions_fraction` changed" in readme
    assert "PMID 36403099" in readme and "Assumption, not a cited figure" in readme
    assert "**removed**" in readme and "never labelled" in readme
    for name in ("pcs.segments", "distractors.dimples", "artefacts.deface_probability",
                 "ventricle_enlargement_mm", "cortical_thickness_mm", "sites", "concordance"):
        assert f"| `{name}` |" in readme, name
    assert cohort.figure.stat().st_size > 10_000
    assert cohort.distractor_figure.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None,
                    reason="bids-validator-deno is not installed")
def test_benchmark_cohort_passes_bids_validator_with_derivatives(cohort):
    for recursive in (False, True):
        report = validate(cohort.bids_dir, recursive=recursive)
        assert report.ok, report.summary()


def test_contrast_families_differ_as_mprage_and_spgr_do():
    rng = np.random.default_rng(0)
    spec = _spec({"L": "absent", "R": "absent"}, {"L": None, "R": None})
    ratios = {}
    for family in ("mprage", "spgr"):
        acq = synthesize_participant(spec, _clean(sites=(Site("A", family, (1.0, 1.0, 1.0)),),
                                                  distractors=SynthOptions.from_preset(
                                                      "easy").distractors), rng).acquisitions[0]
        tissue = acq.truth["TissueIntensity"]
        ratios[family] = (tissue["GM"] / tissue["WM"], tissue["CSF"] / tissue["WM"])
    assert ratios["mprage"][0] < ratios["spgr"][0]  # stronger grey/white contrast
    assert ratios["mprage"][1] < ratios["spgr"][1]  # darker CSF


def test_defaced_head_has_no_face_and_keeps_the_brain():
    source = anatomy.load_source(SOURCE, "medial_wall")
    face = (source.head_levels > 0.5) & (source.defaced_head_levels < 0.5)
    assert face.sum() > 20_000  # a face's worth of voxels removed
    mm = nib.affines.apply_affine(source.affine, np.argwhere(face))
    assert np.median(mm[:, 1]) > 40 and np.median(mm[:, 2]) < 0  # in front of and below
    assert not (face & source.brain_mask).any()


def test_ventricles_grow_and_cortex_thickens_or_thins():
    source = anatomy.load_source(SOURCE, "medial_wall")
    levels = source.levels(skull=False)
    before = int((levels[source.ventricles.box] < 1.5).sum())
    morphology.enlarge_ventricles(levels, source.ventricles, 2.0)
    grown = int((levels[source.ventricles.box] < 1.5).sum())
    assert grown > 1.3 * before
    grey = {}
    for change in (-1.0, 0.0, 1.0):
        levels = source.levels(skull=False)
        morphology.change_cortical_thickness(levels, source.brain_box, change)
        grey[change] = int(((levels > 1.5) & (levels < 2.5)).sum())
    assert grey[-1.0] < 0.9 * grey[0.0] < 0.9 * grey[1.0]


def test_ringing_and_ghosts_change_the_image_as_they_should():
    image = np.zeros((40, 64, 48), dtype=np.float32)
    image[10:30, 16:48, 12:36] = 1.0  # a bright box on a dark background
    ringing = KspaceArtefacts((1.0, 1.0, 1.0), ringing_axis=1, ringing_kept=0.5).apply(image)
    # Gibbs overshoot next to the edge, along the truncated axis only
    assert ringing[20, 16:48, 24].max() > 1.03
    assert np.ptp(ringing[20, 30, 13:35]) < 1e-4  # nothing rings along z
    ghosts = KspaceArtefacts((1.0, 1.0, 1.0), ghost_axis=1, ghost_mm=0.5, ghost_cycles=8,
                             ghost_phase=0.0).apply(image)
    outside = np.zeros_like(image, dtype=bool)
    outside[10:30, :, 12:36] = True
    outside[:, 14:50, :] = False
    # ghosts: signal copied along the phase-encoding axis, outside the object
    assert ghosts[outside].mean() > 0.01 > image[outside].mean()
    assert ghosts.sum() == pytest.approx(image.sum(), rel=0.05)


def test_presets_and_cli_options(tmp_path):
    easy = SynthOptions.from_preset("easy")
    assert preset_of(easy) == "easy" and preset_of(SynthOptions()) == "benchmark"
    assert easy.base_sulci == "pcs_band" and not easy.distractors.any
    assert easy.pcs == pcs_geometry.SulcusShape() and easy.concordance is None
    # the benchmark is what the demo (its recipe and the settings' default) writes
    assert Settings().synth.preset == "benchmark"
    assert load_settings("demo").synth.preset == "benchmark"
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "c"), "-n", "1", "--preset", "easy",
                                  "--set", "distractors.dimples=[0,4]", "--set",
                                  "pcs.segments=[0.5,0.5,0]", "--no-figure"])
    assert result.exit_code == 0, result.output
    readme = (tmp_path / "c" / "README").read_text()
    assert "--preset easy --seed 0` with `pcs`, `distractors` changed" in readme
    assert "| `distractors.dimples` | `(0, 4)` |" in readme
    options = json.loads((tmp_path / "c" / "code" / "synth_options.json").read_text())
    assert options["options"]["pcs"]["segments"] == [0.5, 0.5, 0.0]
    for bad in ("nonsense=1", "pcs.depth_mm=deep", "distractors=3"):
        result = runner.invoke(main, [str(tmp_path / "d"), "-n", "1", "--set", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output
