"""Bad inputs and watchers for the reliability tests (issue 10).

- builders of broken T1w files (each small: every check they hit happens
  before registration), and of real images that are hard but legal (an
  oblique affine, disagreeing qform and sform, a field of view that misses the
  medial frontal region), made from the real whole-head T1w in ``../shared``;
- ``FAST_REGISTRATION``: recipe settings that register a small image in a few
  seconds (quality is not what these tests check);
- a file-system watcher (tree snapshots) and an audit hook installed in every
  Python process of a run (``sitecustomize``) that records writes and network
  attempts, for the confinement tests;
- ``cli``: the command line in a fresh interpreter with a chosen environment;
- small file systems (a tmpfs, as root) and a filler that leaves a chosen
  number of bytes free on them, for the full-disk tests.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

KMEANS = "real-t1/KmeansTest_T1UCharRaw.nii.gz"
SMALL = (40, 40, 40)  # voxels of the synthetic bad images: checks fail before any work

# registration settings that take a few seconds per small image (tests of what
# happens around registration, not of its accuracy)
FAST_REGISTRATION = ("--set", "registration.n4=false", "--set",
                     "registration.refine_on_region=false", "--set", "registration.fine_mm=4.0")


# ----------------------------------------------------------------- bad images
def _nifti_bytes(img: nib.Nifti1Image, compressed: bool = True) -> bytes:
    """The bytes of ``img`` as a ``.nii.gz`` (or ``.nii``) file."""
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if compressed else raw


def _head_like(shape: tuple[int, ...] = SMALL, seed: int = 0) -> np.ndarray:
    """A smooth positive blob: passes every data check (finite, not constant)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[:3]).astype(np.float32)
    centre = (np.asarray(shape[:3], dtype=np.float32) - 1) / 2
    radius = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    data = np.clip(1 - radius / (min(shape[:3]) / 2), 0, None) * 100
    return (data + rng.random(shape[:3], dtype=np.float32)).astype(np.float32)


def small_t1w(shape: tuple[int, ...] = SMALL, voxel_mm: float = 1.0) -> nib.Nifti1Image:
    """A valid little 3D image (not a head, but every loading check passes)."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    return nib.Nifti1Image(_head_like(shape), affine)


def _with(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    return _nifti_bytes(nib.Nifti1Image(data, np.eye(4) if affine is None else affine))


def _truncated() -> bytes:
    whole = _nifti_bytes(small_t1w())
    return whole[: len(whole) // 2]


def _truncated_header() -> bytes:
    return _nifti_bytes(small_t1w())[:120]  # cut inside the 348-byte header


def _gzip_of_noise() -> bytes:
    return gzip.compress(np.random.default_rng(1).bytes(4096))


def _nan() -> bytes:
    data = _head_like()
    data[20, 20, 20] = np.nan
    return _with(data)


def _inf() -> bytes:
    data = _head_like()
    data[3, 4, 5] = -np.inf
    return _with(data)


def _huge_header() -> bytes:
    """A header claiming 2048^3 int16 voxels (16 GiB) in front of 1 KiB of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    return _raw_nifti(header, b"\1" * 1024)


def _voxels(size_mm: float) -> bytes:
    return _nifti_bytes(small_t1w(voxel_mm=size_mm))


def _pixdim_lies() -> bytes:
    """Normal pixdim (1 mm) but an sform with 0.01 mm voxels: the sform is what counts."""
    header = nib.Nifti1Header()
    header.set_data_shape(SMALL)
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([0.01, 0.01, 0.01, 1.0]), code=1)
    header.set_zooms((1.0, 1.0, 1.0))  # after the sform: pixdim keeps saying 1 mm
    return _raw_nifti(header, _head_like().tobytes(order="F"))


def _raw_nifti(header: nib.Nifti1Header, data: bytes) -> bytes:
    """A ``.nii.gz`` written byte by byte, so no header field is 'corrected' on the way."""
    header["vox_offset"] = 352
    buffer = io.BytesIO()
    header.write_to(buffer)
    buffer.write(b"\0" * (352 - buffer.tell()) + data)
    return gzip.compress(buffer.getvalue(), compresslevel=1)


def _singular() -> bytes:
    """An sform whose third axis has no length (nibabel itself refuses to write one)."""
    header = nib.Nifti1Header()
    header.set_data_shape(SMALL)
    header.set_data_dtype(np.float32)
    header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)
    return _raw_nifti(header, _head_like().tobytes(order="F"))


def _sheared() -> bytes:
    """A converter's gantry-tilt output: the y axis leans 17 degrees towards x."""
    affine = np.eye(4)
    affine[0, 1] = 0.3
    return _with(_head_like(), affine)


def _speck() -> bytes:
    """A constant volume with a speck of signal (what a failed export can leave)."""
    data = np.full(SMALL, 100.0, np.float32)
    data[18:22, 18:22, 18:22] += np.random.default_rng(2).random((4, 4, 4)) * 50
    return _with(data)


def _hot_voxel(value: float) -> bytes:
    data = _head_like()
    data[5, 6, 7] = value
    return _with(data)


# name -> (file bytes, the words the one-sentence error must contain)
BAD_IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "is an empty file"),
    "truncated": (_truncated, "is truncated or corrupt"),
    "truncatedheader": (_truncated_header, "is not a readable NIfTI file"),
    "text": (lambda: b"this is not an image\n" * 40, "is not a readable NIfTI file"),
    "gzipnoise": (_gzip_of_noise, "is not a readable NIfTI file"),
    "twod": (lambda: _with(_head_like((40, 40, 1))[..., 0]), "has 2 dimensions"),
    "fourd": (lambda: _with(np.stack([_head_like()] * 3, axis=-1)), "has 4 dimensions"),
    "nan": (_nan, "contains NaN or infinite voxel values"),
    "inf": (_inf, "contains NaN or infinite voxel values"),
    "allzero": (lambda: _with(np.zeros(SMALL, np.float32)), "is constant (all voxels 0)"),
    "tinyvoxels": (lambda: _voxels(0.01), "implausible voxel sizes"),
    "hugevoxels": (lambda: _voxels(25.0), "implausible voxel sizes"),
    "pixdimlies": (_pixdim_lies, "implausible voxel sizes"),
    "singular": (_singular, "invalid (singular or non-finite) affine"),
    "thin": (lambda: _with(_head_like((40, 40, 4))), "is too small"),
    "huge": (_huge_header, "this app accepts"),
    # readable, but unfit to register (issue 19)
    "tinyfov": (lambda: _voxels(0.5), "covers only 20 x 20 x 20 mm"),
    "slab": (lambda: _with(_head_like((40, 40, 12)), np.diag([1.0, 1.0, 2.5, 1.0])),
             "covers only 40 x 40 x 30 mm"),
    "sheared": (_sheared, "has a sheared affine (two voxel axes are 73.3 degrees apart"),
    "speck": (_speck, "is nearly constant (99.90% of its voxels are 100)"),
    "hotvoxel": (lambda: _hot_voxel(1e9), "has an extreme intensity outlier (1e+09"),
    "coldvoxel": (lambda: _hot_voxel(-3e7), "has an extreme intensity outlier (-3e+07"),
}


def write_bad_image(path: Path, name: str) -> str:
    """Write the bad image ``name`` to ``path``; return the words its error must contain."""
    make, expected = BAD_IMAGES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(make())
    return expected


# ------------------------------------------------- hard but legal real images
def kmeans(shared_data: Path) -> nib.Nifti1Image:
    """The real whole-head T1w (128 x 128 x 62 voxels of 2 x 2 x 3 mm)."""
    img = nib.load(str(shared_data / KMEANS))
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


def oblique(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with an oblique affine (rotated 30 degrees about x and 20 about z)."""
    rotation = np.eye(4)
    rotation[:3, :3] = Rotation.from_euler("xz", [30, 20], degrees=True).as_matrix()
    return nib.Nifti1Image(np.asarray(img.dataobj), rotation @ img.affine)


def qform_disagrees(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` with its true sform and a qform rotated 90 degrees and 100 mm away."""
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    wrong = np.eye(4)
    wrong[:3, :3] = Rotation.from_euler("y", 90, degrees=True).as_matrix()
    wrong[:3, 3] = [60, -80, 40]
    out.set_sform(img.affine, code=1)
    out.set_qform(wrong @ img.affine, code=1)
    return out


def posterior_only(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The back 66 mm of the head: a field of view that misses the medial frontal region."""
    # the third array axis of the image runs posterior -> anterior
    return nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :22], img.affine)


def inferior_only(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The bottom 100 mm of the head (neck and skull base): nothing left to register."""
    # the second array axis runs inferior -> superior
    return nib.Nifti1Image(np.asarray(img.dataobj)[:, :50, :], img.affine)


# ------------------------------------------------------------ BIDS datasets
def bids_dataset(root: Path, images: dict[str, nib.Nifti1Image | bytes]) -> Path:
    """A raw BIDS dataset with one T1w per participant label."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "reliability test", "BIDSVersion": "1.10.0",
                    "Authors": ["bids_pcs tests"]}))
    (root / "README").write_text("Images made by the bids_pcs reliability tests.\n")
    lines = ["participant_id"]
    for label, content in images.items():
        path = root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            nib.save(content, str(path))
        lines.append(f"sub-{label}")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root


def make_read_only(root: Path) -> None:
    """``chmod -R a-w``; tests run as root, so the tree is also snapshot (see ``snapshot``)."""
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            path = Path(folder) / name
            path.chmod(path.stat().st_mode & ~0o222)
    root.chmod(root.stat().st_mode & ~0o222)


def make_writable(root: Path) -> None:
    """Undo :func:`make_read_only` (so pytest can clean up)."""
    root.chmod(root.stat().st_mode | 0o200)
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            path = Path(folder) / name
            path.chmod(path.stat().st_mode | 0o200)


# ------------------------------------------------------------- watching a run
Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root``: relative path -> (mode, size, mtime in ns)."""
    entries: Snapshot = {}
    if not root.exists():
        return entries
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            path = Path(folder) / name
            info = path.lstat()
            size = info.st_size if not path.is_dir() else 0
            entries[str(path.relative_to(root))] = (info.st_mode, size, info.st_mtime_ns)
    return entries


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs between two snapshots: '+new', '-gone', '~changed' entries."""
    out = [f"+{p}" for p in sorted(set(after) - set(before))]
    out += [f"-{p}" for p in sorted(set(before) - set(after))]
    out += [f"~{p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return out


_SITECUSTOMIZE = '''"""Audit hook of the bids_pcs reliability tests: writes and network use."""
import os
import sys

_LOG = os.environ.get("BIDS_PCS_AUDIT_LOG")
if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(kind, path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, str) and kind not in ("connect", "getaddrinfo", "urllib"):
            path = os.path.abspath(path)
        line = f"{kind}\\t{path}".replace("\\n", " ")
        os.write(_FD, (line + "\\n").encode("utf-8", "replace"))

    def _hook(event, args):
        try:
            if event == "open":
                path, mode, flags = args
                if isinstance(path, int):
                    return
                writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and flags & _WRITE_FLAGS)
                if writes:
                    _record("write", path)
            elif event in ("os.mkdir", "os.remove", "os.rmdir"):
                if args[-1] in (None, -1):  # names relative to a dir_fd cannot be resolved
                    _record(event, args[0])
            elif event == "os.truncate":
                _record(event, args[0])
            elif event in ("os.rename", "os.link"):
                if args[2] in (None, -1) and args[3] in (None, -1):
                    _record(event, args[0])
                    _record(event, args[1])
            elif event == "os.symlink":
                if args[-1] in (None, -1):
                    _record(event, args[1])
            elif event == "shutil.rmtree":
                _record(event, args[0])
            elif event == "shutil.copyfile":
                _record(event, args[1])
            elif event == "socket.connect":
                address = args[1]
                if isinstance(address, tuple):  # AF_INET/AF_INET6, not a local AF_UNIX path
                    _record("connect", repr(address))
            elif event == "socket.getaddrinfo":
                _record("getaddrinfo", repr(args[0]))
            elif event == "urllib.Request":
                _record("urllib", args[0])
        except Exception:  # an audit hook must never break the program it watches
            pass

    sys.addaudithook(_hook)
'''


def audit_site(folder: Path) -> Path:
    """A folder holding the audit ``sitecustomize.py`` (put it on PYTHONPATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    return folder


def read_audit(log: Path) -> list[tuple[str, str]]:
    """(kind, path or address) of every event the audit hook recorded."""
    if not log.is_file():
        return []
    return [tuple(line.split("\t", 1)) for line in log.read_text().splitlines() if "\t" in line]


def outside(events: list[tuple[str, str]], allowed: list[Path]) -> list[tuple[str, str]]:
    """The write events whose path is under none of ``allowed`` (nor /dev, /proc)."""
    roots = [str(Path(p).resolve()) for p in allowed] + ["/dev", "/proc"]
    bad = []
    for kind, path in events:
        if kind in ("connect", "getaddrinfo", "urllib"):
            continue
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r + os.sep) for r in roots):
            bad.append((kind, path))
    return bad


def network_events(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(kind, what) for kind, what in events if kind in ("connect", "getaddrinfo", "urllib")]


# ---------------------------------------------------------- the command line
def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "bids_pcs.cli", *map(str, args)]


def cli(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``bids_pcs`` in a fresh interpreter (optionally under ``prefix``, e.g. unshare)."""
    return subprocess.run([*prefix, *cli_command(*args)], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env, cwd=cwd)


def run_env(root: Path, **extra: str) -> dict[str, str]:
    """A private HOME and TMPDIR under ``root``, no bytecode writes, quiet threads."""
    env = dict(os.environ)
    for key in ("MPLCONFIGDIR", "PYTHONPATH", "BIDS_PCS_AUDIT_LOG"):
        env.pop(key, None)
    (root / "home").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(root / "home"), "TMPDIR": str(root / "tmp"),
                "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def start_cli(*args: str | Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``bids_pcs`` in its own process group (so a kill reaches every worker)."""
    handle = open(log, "w")  # noqa: SIM115 - closed by the caller through the process
    return subprocess.Popen(cli_command(*args), stdout=handle, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float,
             poll_s: float = 0.05) -> bool:
    """Poll ``condition`` until it holds, the process ends, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(poll_s)
    return False


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process and every worker it started."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return


def can_unshare(flag: str) -> bool:
    """Whether ``unshare <flag>`` works here (root in a container may lack the capability)."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    return subprocess.run([exe, flag, "true"], capture_output=True, check=False).returncode == 0


def one_error_line(stderr: str) -> str:
    """The ``bids_pcs: error: ...`` line; asserts there is exactly one and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("bids_pcs: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# ------------------------------------------------------- small file systems
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    return os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` (``"8m"``) mounted at ``path``, unmounted on exit.

    The caller skips the test where :func:`can_mount` is false; a mount that
    fails here raises (it should not, as root).
    """
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill_disk(folder: Path, leave_bytes: int = 0, name: str = ".filler") -> Path:
    """Allocate a hidden file so that about ``leave_bytes`` stay free on ``folder``'s disk."""
    filler = folder / name
    with open(filler, "ab") as handle:
        for _ in range(50):
            size = free_bytes(folder) - leave_bytes
            if size <= 0:
                break
            try:
                os.posix_fallocate(handle.fileno(), handle.seek(0, 2), size)
                break
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                # a running app wrote between the measure and the allocation: measure again
    return filler


def pages(n_bytes: int, page: int = 4096) -> int:
    """What a file of ``n_bytes`` takes on a tmpfs (whole pages)."""
    return -(-n_bytes // page) * page


# -------------------------------------------- preprocessing already done
def finished_crops(root: Path, recipe: str = "tiny-cpu-2mm", n_images: int = 4,
                   ) -> tuple[Path, Path]:
    """(BIDS_DIR, OUTPUT_DIR): small images whose preprocessing sets are complete.

    The crops are random (training levels then start at once; registration is
    tested elsewhere); each set has its sidecars and a QC record listing
    them, as the derivatives sink writes it.
    """
    from bids_pcs.config import load_settings
    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.derivatives import init_derivatives
    from bids_pcs.io.manifest import describe_files
    from bids_pcs.preprocess import output_paths, preprocessing_settings

    raw = bids_dataset(root / "bids", {f"{k:02d}": small_t1w() for k in range(1, n_images + 1)})
    out = init_derivatives(root / "out", raw)
    settings = load_settings(recipe)
    rng = np.random.default_rng(0)
    for image in collect_t1w(raw):
        where = output_paths(out, image)
        for crop in where.crops.values():
            crop.parent.mkdir(parents=True, exist_ok=True)
            data = rng.random(settings.crop.shape_vox, dtype=np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), crop)
        for path in (where.forward_transform, where.inverse_transform):
            path.write_bytes(b"transform")
        for path in where.members():
            if path.suffix == ".json":
                path.write_text("{}")
        where.qc_file.write_text(json.dumps({
            "Passed": True, "Correlation": {"L": 0.9, "R": 0.9}, "MinCorrelation": 0.9,
            "Threshold": 0.5, "Settings": preprocessing_settings(settings),
            "Files": describe_files(where.members(), where.qc_file.parent)}))
    return raw, out
