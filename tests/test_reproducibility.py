"""What makes a rerun write the same bytes: ANTs' seed, HDF5 write times (issue 18, item 4).

The end-to-end check (a second preprocessing run writes byte-identical
transforms and crops) is in test_preprocess_workflow.py.
"""

from __future__ import annotations

import time

import numpy as np

from bids_pcs.io.hdf5_times import clear_object_times, lookup3
from bids_pcs.spatial.antsio import import_ants
from bids_pcs.spatial.registration import ants_random_seed


def test_lookup3_matches_the_reference_values_of_lookup3_c():
    # the self-test values printed by Bob Jenkins' lookup3.c (driver5)
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


def _write_affine(path):
    ants = import_ants()
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           translation=[1.5, -2.0, 3.25])
    ants.write_transform(transform, str(path))
    return ants


def test_transform_files_written_at_different_times_become_identical(tmp_path):
    first, second = tmp_path / "a.h5", tmp_path / "b.h5"
    _write_affine(first)
    time.sleep(1.1)  # HDF5 stamps whole seconds
    ants = _write_affine(second)
    assert first.read_bytes() != second.read_bytes()
    assert clear_object_times(first) > 0
    assert clear_object_times(second) > 0
    assert first.read_bytes() == second.read_bytes()
    # still a valid file (HDF5 checks each header's checksum on reading) with the same content
    read = ants.read_transform(str(first))
    np.testing.assert_allclose(read.parameters[-3:], [1.5, -2.0, 3.25])
    cleared = first.read_bytes()
    clear_object_times(first)
    assert first.read_bytes() == cleared


def test_a_file_that_is_not_hdf5_is_left_alone(tmp_path):
    path = tmp_path / "x.h5"
    content = b"OHDR\x02\x20" + bytes(40)  # looks like a header, checksum does not match
    path.write_bytes(content)
    assert clear_object_times(path) == 0
    assert path.read_bytes() == content


def test_ants_never_gets_seed_zero_which_it_reads_as_the_clock():
    seeds = [ants_random_seed(s) for s in range(-3, 50)]
    assert 0 not in seeds
    assert len(set(seeds)) == len(seeds)
