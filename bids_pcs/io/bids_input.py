"""Selecting the T1w images of a BIDS dataset, one processing unit per image.

Every T1w image is its own unit: a participant with two sessions, two runs,
two acquisitions, or images that differ by any other entity (``task-``,
``echo-``, ``part-``, ``inv-``...) yields several units, each with its own
derivatives: every entity of the raw name is kept in the derivatives' names.
Two images that would still get one name (``sub-01_T1w.nii`` beside
``sub-01_T1w.nii.gz``) are refused before anything is written.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_names import entity_order, parse_name

# BIDS labels are alphanumeric; anything else (such as "../x") is refused
# before it can reach a path.
_LABEL = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class T1wImage:
    """One T1w image of the raw dataset and the BIDS entities that name it.

    Args:
        path: absolute path of the NIfTI file.
        subject: participant label without ``sub-``.
        session: session label without ``ses-``, or ``None``.
        entities: every other entity of the raw name, as (short key, value)
            pairs in BIDS order, e.g. ``(("task", "still"), ("acq", "mprage"))``.
        relpath: path relative to the dataset root (POSIX), for BIDS URIs.
    """

    path: Path
    subject: str
    session: str | None = None
    entities: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    relpath: str = ""

    @property
    def prefix(self) -> str:
        """The BIDS name stem shared by every derivative of this image."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        parts += [f"{key}-{value}" for key, value in self.entities]
        return "_".join(parts)

    @property
    def anat_dir(self) -> str:
        """Relative folder of this image's derivatives: ``sub-X[/ses-Y]/anat``."""
        if self.session:
            return f"sub-{self.subject}/ses-{self.session}/anat"
        return f"sub-{self.subject}/anat"

    @property
    def bids_uri(self) -> str:
        """BIDS URI of the raw image, as used in ``Sources`` of sidecars."""
        return f"bids:raw:{self.relpath}"


def normalise_label(value: str, prefix: str) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"``; refuse anything that is not a BIDS label."""
    label = value[len(prefix) + 1:] if value.startswith(f"{prefix}-") else value
    # fullmatch: with match, "$" would also accept a label ending in a newline
    if not _LABEL.fullmatch(label):
        raise InputDataError(
            f"{prefix}-label {value!r} is not a valid BIDS label (letters and digits only)."
        )
    return label


def check_bids_dir(bids_dir: Path) -> None:
    """Refuse a BIDS_DIR that is missing or lacks dataset_description.json."""
    if not bids_dir.exists():
        raise InputDataError(
            f"BIDS_DIR {bids_dir} does not exist; give the path of a BIDS dataset."
        )
    if not bids_dir.is_dir():
        raise InputDataError(f"BIDS_DIR {bids_dir} is not a directory.")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputDataError(
            f"BIDS_DIR {bids_dir} has no dataset_description.json; "
            "is it the root of a BIDS dataset?"
        )


def collect_t1w(
    bids_dir: Path,
    participant_labels: tuple[str, ...] | list[str] = (),
    session_labels: tuple[str, ...] | list[str] = (),
) -> list[T1wImage]:
    """Every T1w image of the selected participants and sessions, sorted by name.

    Indexing a large dataset takes a while, so results are remembered for the
    life of the process (the CLI checks the selection before a level runs, and
    the level asks again).
    """
    return list(_collect_t1w(Path(bids_dir).absolute(), tuple(participant_labels),
                             tuple(session_labels)))


@functools.lru_cache(maxsize=8)
def _collect_t1w(bids_dir: Path, participant_labels: tuple[str, ...],
                 session_labels: tuple[str, ...]) -> tuple[T1wImage, ...]:
    check_bids_dir(bids_dir)
    subjects = [normalise_label(v, "sub") for v in participant_labels]
    sessions = [normalise_label(v, "ses") for v in session_labels]

    from bids import BIDSLayout  # slow import, kept out of --help

    layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    existing_subjects = sorted(layout.get_subjects())
    missing = sorted(set(subjects) - set(existing_subjects))
    if missing:
        raise InputDataError(
            f"Participant(s) {', '.join(missing)} not found in {bids_dir}; "
            f"available: {_listing(existing_subjects)}."
        )
    query = {"subject": subjects or existing_subjects}
    if sessions:
        existing_sessions = sorted(layout.get_sessions(subject=query["subject"]))
        missing = sorted(set(sessions) - set(existing_sessions))
        if missing:
            raise InputDataError(
                f"Session(s) {', '.join(missing)} not found for the selected participants; "
                f"available: {_listing(existing_sessions)}."
            )
        query["session"] = sessions

    files = layout.get(suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"],
                       return_type="object", **query)
    images = sorted((_to_image(Path(f.path), bids_dir) for f in files),
                     key=lambda im: im.relpath)
    _refuse_shared_names(images)
    if not images:
        filters = f"participants {', '.join(subjects) or 'all'}"
        if sessions:
            filters += f", sessions {', '.join(sessions)}"
        raise InputDataError(f"No T1w image found in {bids_dir} ({filters}); "
                             "expected sub-<label>/[ses-<label>/]anat/*_T1w.nii[.gz].")
    return tuple(images)


def _to_image(path: Path, bids_dir: Path) -> T1wImage:
    """The unit of one raw T1w file, its entities read from the file name itself."""
    try:
        pairs, _, _ = parse_name(path.name)
    except ValueError as exc:
        raise InputDataError(f"T1w image {path} does not have a BIDS file name ({exc}); "
                             "rename it, or list it in the dataset's .bidsignore.") from exc
    known = entity_order()
    unknown = [key for key, _ in pairs if key not in known]
    if unknown:
        raise InputDataError(
            f"T1w image {path} has entity {unknown[0]}-, which BIDS does not define; rename "
            "it, or list it in the dataset's .bidsignore.")
    entities = dict(pairs)
    others = sorted(((k, v) for k, v in pairs if k not in ("sub", "ses")),
                    key=lambda pair: known.index(pair[0]))
    return T1wImage(
        path=path,
        subject=entities["sub"],
        session=entities.get("ses"),
        entities=tuple(others),
        relpath=path.relative_to(bids_dir).as_posix(),
    )


def _refuse_shared_names(images: list[T1wImage]) -> None:
    """Two images whose derivatives would overwrite each other: one sentence, nothing written."""
    seen: dict[tuple[str, str], T1wImage] = {}
    for image in images:
        key = (image.anat_dir, image.prefix)
        if key in seen:
            raise InputDataError(
                f"T1w images {seen[key].path} and {image.path} would get the same derivative "
                f"names ({image.prefix}_...); remove one of them, or give one an entity that "
                "tells them apart (such as run-2).")
        seen[key] = image


def _listing(labels: list[str], limit: int = 20) -> str:
    if not labels:
        return "none"
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")
