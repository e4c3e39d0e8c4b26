#!/usr/bin/env bash
# Fan the participant level of bids_pcs out over SLURM: one array task per
# participant of BIDS_DIR/participants.tsv (or PARTICIPANTS_FILE), then the
# group level as a job that waits for the whole array.
#
#   ./submit_participants.sh BIDS_DIR OUTPUT_DIR [bids_pcs participant options]
#
# e.g., with the Singularity image and a model:
#   export BIDS_PCS_EXEC="apptainer exec --cleanenv -B /project -B /scratch $PWD/bids_pcs.sif"
#   ./submit_participants.sh /project/bids /scratch/pcs --model /project/models/pcs-lora
#
# Environment:
#   BIDS_PCS_EXEC, PARTICIPANTS_FILE, WORK_ROOT   see participant_array.sbatch
#   MAX_PARALLEL   array tasks running at once (default 50)
#   SBATCH_ARGS    extra sbatch options for both jobs (e.g. "--account=abc --partition=cpu")
# Logs of every task and the exit-code table go to OUTPUT_DIR/logs/slurm*.
set -euo pipefail

if (( $# < 2 )); then
    echo "usage: $0 BIDS_DIR OUTPUT_DIR [bids_pcs participant options]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
bids_dir=$(cd "$1" && pwd)
mkdir -p "$2/logs/slurm"
output_dir=$(cd "$2" && pwd)
shift 2

if [[ -n "${PARTICIPANTS_FILE:-}" ]]; then
    PARTICIPANTS_FILE=$(cd "$(dirname "$PARTICIPANTS_FILE")" && pwd)/$(basename "$PARTICIPANTS_FILE")
    export PARTICIPANTS_FILE
    n=$(grep -cv '^[[:space:]]*$' "$PARTICIPANTS_FILE" || true)
elif [[ -f "$bids_dir/participants.tsv" ]]; then
    n=$(awk -F'\t' 'NR > 1 && NF' "$bids_dir/participants.tsv" | wc -l)
else
    n=$(find "$bids_dir" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
fi
if (( n == 0 )); then
    echo "$0: no participants found in $bids_dir (participants.tsv or sub-* folders)" >&2
    exit 1
fi

# shellcheck disable=SC2086  # SBATCH_ARGS holds several options
array_job=$(sbatch --parsable ${SBATCH_ARGS:-} --array="1-$n%${MAX_PARALLEL:-50}" \
    --output="$output_dir/logs/slurm/participant-%A_%a.out" \
    "$here/participant_array.sbatch" "$bids_dir" "$output_dir" "$@")
array_job=${array_job%%;*}  # --parsable prints "id;cluster" on federated clusters
# shellcheck disable=SC2086
group_job=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterany:$array_job" \
    --output="$output_dir/logs/slurm/group-%j.out" \
    "$here/group.sbatch" "$bids_dir" "$output_dir" "$array_job" "$n")
group_job=${group_job%%;*}
echo "participant array: job $array_job ($n tasks); group level: job $group_job"
echo "exit codes will be in $output_dir/logs/slurm_participant_$array_job.tsv"
