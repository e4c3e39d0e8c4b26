"""Writing the synthetic cohort as a raw BIDS dataset and a label derivative.

Layout::

    BIDS_DIR/
      dataset_description.json  README  participants.tsv  participants.json
      sub-<L>/[ses-<S>/]anat/sub-<L>[_ses-<S>]_T1w.nii.gz
      code/synth_options.json  code/pcs_overview.png  code/pcs_distractors.png
                                how it was made, check figures
      derivatives/pcs-labels/
        dataset_description.json  desc-pcs_dseg.tsv  participants.tsv/.json
        sub-<L>/[ses-<S>/]anat/..._space-T1w_desc-pcs_dseg.nii.gz (+ .json)

Every file goes through :mod:`bids_pcs.io.atomic`; images are gzipped with a
zero time stamp so a seed gives byte-identical files.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from bids_pcs import CODE_URL, __version__
from bids_pcs.io.atomic import write_bytes, write_json, write_text
from bids_pcs.io.derivatives import BIDS_VERSION, dseg_lookup_tsv
from bids_pcs.synth.readme import cohort_readme
from bids_pcs.synth.sites import Site

LABELS_SUBDIR = Path("derivatives") / "pcs-labels"
# code/ is the BIDS place for what made a dataset, and the validator skips it
# (it does not honour a derivative's .bidsignore when validating recursively)
FIGURE_RELPATH = Path("code") / "pcs_overview.png"
DISTRACTOR_FIGURE_RELPATH = Path("code") / "pcs_distractors.png"
GENERATOR = "bids_pcs-synth"

DEMOGRAPHIC_COLUMNS = ("participant_id", "age", "sex", "group", "anatomy_source", "site")
PCS_COLUMNS = ("pcs_left", "pcs_right", "pcs_left_length_mm", "pcs_right_length_mm")


def image_stem(subject: str, session: str | None) -> str:
    """BIDS name stem of a participant's (session's) T1w image."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def anat_dir(subject: str, session: str | None) -> Path:
    """``sub-<L>[/ses-<S>]/anat`` relative to a dataset root."""
    base = Path(f"sub-{subject}")
    return (base / f"ses-{session}" / "anat") if session else (base / "anat")


def t1w_relpath(subject: str, session: str | None) -> Path:
    """Path of the raw T1w image relative to BIDS_DIR."""
    return anat_dir(subject, session) / f"{image_stem(subject, session)}_T1w.nii.gz"


def dseg_relpath(subject: str, session: str | None) -> Path:
    """Path of the label image relative to the label derivative dataset."""
    name = f"{image_stem(subject, session)}_space-T1w_desc-pcs_dseg.nii.gz"
    return anat_dir(subject, session) / name


def save_nifti(path: Path, img: nib.Nifti1Image) -> Path:
    """Write ``img`` as .nii.gz atomically, reproducibly (gzip time stamp 0)."""
    return write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def generated_by() -> list[dict[str, Any]]:
    """The ``GeneratedBy`` entry of both dataset descriptions."""
    return [{"Name": GENERATOR, "Version": __version__, "CodeURL": CODE_URL,
             "Description": "Synthetic T1w cohort with known paracingulate sulcus labels"}]


def write_raw_dataset_files(bids_dir: Path, rows: Sequence[dict[str, Any]], *, seed: int,
                            sources: Sequence[str], options: Any) -> None:
    """dataset_description.json, README, participants.tsv/.json of the raw dataset.

    Args:
        bids_dir: the raw dataset.
        rows: one participants.tsv row per participant.
        seed: the cohort's seed.
        sources: anatomy sources used.
        options: the :class:`~bids_pcs.synth.options.SynthOptions` (described in the README).
    """
    write_json(bids_dir / "dataset_description.json", {
        "Name": f"bids_pcs synthetic paracingulate sulcus cohort (seed {seed})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bids_pcs developers"],
        "GeneratedBy": generated_by(),
        "HowToAcknowledge": "Cite the MNI ICBM 2009a template (Fonov et al. 2011) and, "
                            "for Colin27 participants, Holmes et al. 1998.",
        "ReferencesAndLinks": [CODE_URL],
    })
    write_text(bids_dir / "README", cohort_readme(
        n=len(rows), seed=seed, sources=sources, options=options, generator=GENERATOR,
        version=__version__))
    columns = DEMOGRAPHIC_COLUMNS + PCS_COLUMNS
    write_text(bids_dir / "participants.tsv", _tsv(rows, columns))
    write_json(bids_dir / "participants.json", _participants_sidecar(columns, options.sites))


def write_labels_dataset_files(labels_dir: Path, rows: Sequence[dict[str, Any]],
                               sites: Sequence[Site]) -> None:
    """Dataset-level files of ``derivatives/pcs-labels``."""
    write_json(labels_dir / "dataset_description.json", {
        "Name": "Paracingulate sulcus labels of the synthetic cohort (ground truth)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": generated_by(),
        "SourceDatasets": [{"URL": "../../"}],
        "DatasetLinks": {"raw": "../../"},
    })
    write_text(labels_dir / "desc-pcs_dseg.tsv", dseg_lookup_tsv())
    columns = ("participant_id",) + PCS_COLUMNS
    write_text(labels_dir / "participants.tsv", _tsv(rows, columns))
    write_json(labels_dir / "participants.json", _participants_sidecar(columns, sites))


def write_acquisition(bids_dir: Path, subject: str, session: str | None,
                      t1w: nib.Nifti1Image, dseg: nib.Nifti1Image,
                      truth: dict[str, Any]) -> tuple[Path, Path]:
    """One T1w image and its label (+ sidecar with the ground truth)."""
    t1w_path = bids_dir / t1w_relpath(subject, session)
    dseg_path = bids_dir / LABELS_SUBDIR / dseg_relpath(subject, session)
    save_nifti(t1w_path, t1w)
    save_nifti(dseg_path, dseg)
    sidecar = {
        "Sources": [f"bids:raw:{t1w_relpath(subject, session).as_posix()}"],
        "Description": "Paracingulate sulcus carved into the synthetic image: "
                       "1 left PCS, 2 right PCS (exactly the carved voxels; neighbouring "
                       "sulci carry no label).",
        "Manual": False,
        "SpatialReference": f"bids:raw:{t1w_relpath(subject, session).as_posix()}",
        "SyntheticTruth": truth,
    }
    write_json(dseg_path.with_name(dseg_path.name.replace(".nii.gz", ".json")), sidecar)
    return t1w_path, dseg_path


def write_provenance(bids_dir: Path, *, n_participants: int, seed: int,
                     options: dict[str, Any]) -> Path:
    """``code/synth_options.json``: the command's parameters, enough to remake the data."""
    return write_json(bids_dir / "code" / "synth_options.json", {
        "generator": GENERATOR, "version": __version__, "participants": n_participants,
        "seed": seed, "options": options,
    })


def _tsv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    lines = ["\t".join(columns)]
    for row in rows:
        lines.append("\t".join(_cell(row.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _participants_sidecar(columns: Sequence[str], sites: Sequence[Site]) -> dict[str, Any]:
    classes = {
        "absent": "no sulcus, or one shorter than 20 mm",
        "present": "a sulcus of 20 to 40 mm",
        "prominent": "a sulcus longer than 40 mm",
    }
    described: dict[str, Any] = {
        "participant_id": {"Description": "Participant label"},
        "age": {"Description": "Age at scan (drawn uniformly)", "Units": "year"},
        "sex": {"Description": "Sex (drawn)", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "Diagnosis group (drawn independently of the PCS)",
                  "Levels": {"control": "healthy control", "psychosis": "patient"}},
        "anatomy_source": {
            "Description": "Real anatomy the synthetic head was warped from",
            "Levels": {"MNI152NLin2009aSym": "MNI ICBM 2009a symmetric template (nilearn)",
                       "Colin27": "Colin27 single-subject T1 (mricron-data)"},
        },
        "site": {
            "Description": "Acquisition site: its contrast family and voxel size",
            "Levels": {site.name: site.describe() for site in sites},
        },
    }
    for side in ("left", "right"):
        described[f"pcs_{side}"] = {
            "Description": f"Paracingulate sulcus class of the {side} hemisphere "
                           "(Yuecel et al. 2001 length protocol)",
            "Levels": classes,
        }
        described[f"pcs_{side}_length_mm"] = {
            "Description": f"True length of the {side} PCS along its course on the "
                           "medial surface, in the participant's native space; an "
                           "interrupted PCS counts the sum of its segments (0 when there "
                           "is none or the hemisphere is absent and unlabelled)",
            "Units": "mm",
        }
    return {c: described[c] for c in columns}
