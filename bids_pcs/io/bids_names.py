"""BIDS file names: entities in the order of the BIDS schema, built with pybids' ``build_path``.

A derivative keeps *every* entity of the T1w image it comes from (``task-``,
``echo-``, ``part-``, ``inv-``, ``mt-``, ``acq-``, ``ce-``, ``rec-``, ``run-``
...), then adds its own (``from-``, ``to-``, ``mode-``, ``space-``, ``res-``,
``label-``, ``desc-``), all in the order the BIDS schema fixes: two images that
differ in any entity get different derivative names.

pybids' own derivative path patterns name only a few raw entities (``acq``,
``ce``, ``rec``), which silently merges images that differ by ``task-`` or
``run-``; so one pattern is generated here from the schema's entity list
(:func:`path_pattern`) and filled in by :func:`bids.layout.writing.build_path`
in strict mode, which refuses an entity the pattern does not know.

Usage::

    build_name({"sub": "01", "task": "still", "space": "MNI152NLin2009aSym",
                "desc": "medialfrontalL"}, suffix="T1w", extension=".nii.gz")
    # 'sub-01/anat/sub-01_task-still_space-MNI152NLin2009aSym_desc-medialfrontalL_T1w.nii.gz'
"""

from __future__ import annotations

import functools
import re

# BEP014 (transforms) is not in the schema yet; its entities go before space-,
# as fMRIPrep and niworkflows write them
TRANSFORM_ENTITIES = ("from", "to", "mode")
# entity values and suffixes are BIDS labels: a "_", "-", "." or "/" in one
# would change how the name parses, or where the file goes
_VALUE = re.compile(r"[A-Za-z0-9]+")
_EXTENSION = re.compile(r"(\.[A-Za-z0-9]+)+")
_PAIR = re.compile(r"(?P<key>[a-z]+)-(?P<value>[A-Za-z0-9]+)")


@functools.lru_cache(maxsize=1)
def entity_order() -> tuple[str, ...]:
    """Short keys (``sub``, ``ses``, ``task``, ``acq``...) of every BIDS entity, in order."""
    from bidsschematools import data, schema

    # an explicit path: without one the schema tools log a line on every load
    loaded = schema.load_schema(data.load.readable("schema.json"))
    keys = [loaded.objects.entities[name]["name"] for name in loaded.rules.entities]
    at = keys.index("space")
    return (*keys[:at], *TRANSFORM_ENTITIES, *keys[at:])


@functools.lru_cache(maxsize=1)
def path_pattern() -> str:
    """The ``build_path`` pattern of every anatomical file the app names."""
    optional = "".join(f"[_{key}-{{{key}}}]" for key in entity_order()
                       if key not in ("sub", "ses"))
    return ("sub-{sub}[/ses-{ses}]/anat/sub-{sub}[_ses-{ses}]" + optional
            + "_{suffix}{extension}")


def build_name(entities: dict[str, str | None], *, suffix: str, extension: str) -> str:
    """Relative path ``sub-X[/ses-Y]/anat/<name>`` of a file with ``entities`` (short keys).

    ``None`` values are skipped. Raises ValueError for a value that is not a
    BIDS label, or an entity that BIDS does not define.
    """
    from bids.layout.writing import build_path

    present = {key: str(value) for key, value in entities.items() if value is not None}
    for key, value in [*present.items(), ("suffix", suffix)]:
        if not _VALUE.fullmatch(value):
            raise ValueError(f"{key} {value!r} is not a BIDS label (letters and digits only)")
    if not extension.startswith("."):
        extension = "." + extension
    if not _EXTENSION.fullmatch(extension):
        raise ValueError(f"extension {extension!r} is not a file extension such as .nii.gz")
    unknown = sorted(set(present) - set(entity_order()))
    if unknown:
        raise ValueError(f"unknown BIDS entities: {unknown}")
    if "sub" not in present:
        raise ValueError("a BIDS file name needs a sub- entity")
    path = build_path({**present, "suffix": suffix, "extension": extension}, path_pattern(),
                      strict=True)
    if path is None:  # pragma: no cover - every key is in the pattern by construction
        raise ValueError(f"pybids could not name a file with {present}")
    return path


def parse_name(filename: str) -> tuple[list[tuple[str, str]], str, str]:
    """``"sub-01_task-a_T1w.nii.gz"`` -> ``([("sub", "01"), ("task", "a")], "T1w", ".nii.gz")``.

    Raises ValueError for a name that is not key-value pairs, a suffix and an
    extension.
    """
    stem, dot, rest = filename.partition(".")
    *pairs, suffix = stem.split("_")
    parsed = []
    for pair in pairs:
        match = _PAIR.fullmatch(pair)
        if match is None:
            raise ValueError(f"{filename!r}: {pair!r} is not a BIDS key-value pair")
        parsed.append((match["key"], match["value"]))
    if not pairs or not _VALUE.fullmatch(suffix):
        raise ValueError(f"{filename!r} is not a BIDS file name")
    return parsed, suffix, dot + rest
