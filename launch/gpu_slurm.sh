#!/usr/bin/env bash
# Submit launch/gpu_slurm.sbatch: multi-node GPU DIAL training, one JAX process per node.
# See launch/README.md.
# shellcheck disable=SC2016  # single-quoted $VARS are meant for a remote / job-time shell
set -euo pipefail

PROG=launch/gpu_slurm.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=common.sh
source "$REPO_ROOT/launch/common.sh"  # die, q, qcmd, split_words, abspath, check_setting, parse_args, ...

usage() {
  cat <<'EOF'
Usage: launch/gpu_slurm.sh --setting=SETTING --workdir=DIR [flags] [-- OVERRIDES...]

Submits launch/gpu_slurm.sbatch with sbatch (--requeue --signal=TERM@120: on preemption or 120 s
before the time limit every task gets SIGTERM, main saves a checkpoint and exits; a requeued job
resumes from --workdir). The job runs one task per node:
  JAX_COORDINATOR_ADDRESS=<first node>:PORT JAX_NUM_PROCESSES=$SLURM_NNODES JAX_PROCESS_ID=$SLURM_PROCID \
  python -m dial_jax.main --config=configs/SETTING.py:paper --workdir=DIR [--config.data.dir=DATA] OVERRIDES
The code, venv, data and workdir must be on a filesystem every node sees (or workdir on gs://).

Run (flag, or env var in brackets):
  --setting=SETTING        few_shot | cross_lingual | clean_to_noisy | simple_to_complex (required) [DIAL_SETTING]
  --workdir=DIR            shared path or gs:// (required) [DIAL_WORKDIR]
  --scale=paper|default    config preset: paper (default) -> configs/SETTING.py:paper
  --data_dir=DIR           prepared data on the shared filesystem (--config.data.dir) [DIAL_DATA_DIR]
  --config_overrides=STR   extra main flags passed through verbatim, shell-quoted, e.g.
                           "--config.train.num_steps=7 --config.mesh.fsdp=4"; may be repeated;
                           arguments after "--" are appended as they are [DIAL_CONFIG_OVERRIDES]
  --python=PATH            interpreter on the nodes; default .venv/bin/python of this checkout, else python3
  --mem_fraction=F         XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90)
  --port=PORT              coordinator port (default 20000 + job id % 20000)
  --prepare [--raw_dir=DIR]  prepare the data into --data_dir on the first node before training
  --requeue_on_timeout     requeue the job when the time limit (not the end of training) stopped it

Resources:
  --nodes=N                default 2
  --gpus_per_node=G        default 8 (sbatch --gpus-per-node)
  --partition=P            default: the cluster's [SLURM_PARTITION]
  --account=A              [SLURM_ACCOUNT]
  --qos=Q
  --time=T                 time limit, default 24:00:00
  --cpus_per_task=C        CPUs for each node's process
  --job_name=NAME          default dial-SETTING
  --log_dir=DIR            sbatch --output goes to DIR/%x-%j.out (default ./slurm_logs of this checkout)
  --no_exclusive           do not ask for whole nodes (default: --exclusive)
  --sbatch_args=STR        extra sbatch options, shell-quoted, e.g. "--constraint=h100 --mem=0"
  --dry_run                print the sbatch command and the commands the job will run; submit nothing
  --help
EOF
}

SETTING=${DIAL_SETTING:-}
WORKDIR=${DIAL_WORKDIR:-}
DATA_DIR=${DIAL_DATA_DIR:-}
PARTITION=${SLURM_PARTITION:-}
ACCOUNT=${SLURM_ACCOUNT:-}
SCALE=paper PYTHON="" MEM_FRACTION=0.90 PORT="" PREPARE=0 RAW_DIR="" REQUEUE_ON_TIMEOUT=0
NODES=2 GPUS_PER_NODE=8 QOS="" TIME=24:00:00 CPUS_PER_TASK="" JOB_NAME="" LOG_DIR="$REPO_ROOT/slurm_logs"
EXCLUSIVE=1 SBATCH_ARGS_STR="" DRY_RUN=0

set_flag() {
  case $1 in
    --prepare) PREPARE=1 ;;
    --requeue_on_timeout) REQUEUE_ON_TIMEOUT=1 ;;
    --no_exclusive) EXCLUSIVE=0 ;;
    *) return 1 ;;
  esac
}
set_opt() {
  case $1 in
    --python) PYTHON=$2 ;;
    --mem_fraction) MEM_FRACTION=$2 ;;
    --port) PORT=$2 ;;
    --raw_dir) RAW_DIR=$2 ;;
    --nodes) NODES=$2 ;;
    --gpus_per_node) GPUS_PER_NODE=$2 ;;
    --partition) PARTITION=$2 ;;
    --account) ACCOUNT=$2 ;;
    --qos) QOS=$2 ;;
    --time) TIME=$2 ;;
    --cpus_per_task) CPUS_PER_TASK=$2 ;;
    --job_name) JOB_NAME=$2 ;;
    --log_dir) LOG_DIR=$2 ;;
    --sbatch_args) SBATCH_ARGS_STR=$2 ;;
    *) return 1 ;;
  esac
}
parse_args "$@"

check_setting
[[ -n $WORKDIR ]] || die "--workdir is required (shared by all nodes, or gs://)"
[[ $SCALE == paper || $SCALE == default ]] || die "--scale must be paper or default (got '$SCALE')"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer (got '$NODES')"
[[ $GPUS_PER_NODE =~ ^[1-9][0-9]*$ ]] || die "--gpus_per_node must be a positive integer (got '$GPUS_PER_NODE')"
[[ -z $CPUS_PER_TASK || $CPUS_PER_TASK =~ ^[1-9][0-9]*$ ]] || die "--cpus_per_task must be a positive integer"
[[ $TIME =~ ^[0-9:-]+$|^(infinite|UNLIMITED)$ ]] || die "--time must look like [D-]HH:MM:SS (got '$TIME')"
[[ -z $PORT || $PORT =~ ^[1-9][0-9]{0,4}$ ]] || die "--port must be a port number (got '$PORT')"
[[ $MEM_FRACTION =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--mem_fraction must be in (0, 1] (got '$MEM_FRACTION')"
((PREPARE)) && [[ -z $DATA_DIR ]] && die "--prepare needs --data_dir"
[[ -n $RAW_DIR ]] && ((!PREPARE)) && die "--raw_dir is only used with --prepare"
JOB_NAME=${JOB_NAME:-dial-$SETTING}
[[ $JOB_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--job_name may only contain letters, digits, '.', '_' and '-'"
collect_overrides
split_words "$SBATCH_ARGS_STR" --sbatch_args; SBATCH_EXTRA=(${WORDS[@]+"${WORDS[@]}"})
WORKDIR=$(abspath "$WORKDIR"); DATA_DIR=$(abspath "$DATA_DIR"); RAW_DIR=$(abspath "$RAW_DIR")
LOG_DIR=$(abspath "$LOG_DIR"); [[ -n $PYTHON && $PYTHON == */* ]] && PYTHON=$(abspath "$PYTHON")

SBATCH=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS_PER_NODE"
        --time="$TIME")
[[ -n $PARTITION ]] && SBATCH+=(--partition="$PARTITION")
[[ -n $ACCOUNT ]] && SBATCH+=(--account="$ACCOUNT")
[[ -n $QOS ]] && SBATCH+=(--qos="$QOS")
[[ -n $CPUS_PER_TASK ]] && SBATCH+=(--cpus-per-task="$CPUS_PER_TASK")
((EXCLUSIVE)) && SBATCH+=(--exclusive)
SBATCH+=(--requeue --signal=TERM@120 --open-mode=append --output="$LOG_DIR/%x-%j.out"
         ${SBATCH_EXTRA[@]+"${SBATCH_EXTRA[@]}"})

JOB=(--code_dir="$REPO_ROOT" --setting="$SETTING" --workdir="$WORKDIR" --scale="$SCALE" --mem_fraction="$MEM_FRACTION")
[[ -n $DATA_DIR ]] && JOB+=(--data_dir="$DATA_DIR")
[[ -n $PYTHON ]] && JOB+=(--python="$PYTHON")
[[ -n $PORT ]] && JOB+=(--port="$PORT")
((PREPARE)) && JOB+=(--prepare)
[[ -n $RAW_DIR ]] && JOB+=(--raw_dir="$RAW_DIR")
((REQUEUE_ON_TIMEOUT)) && JOB+=(--requeue_on_timeout)
((${#OVERRIDES[@]})) && JOB+=(-- "${OVERRIDES[@]}")
SCRIPT=$REPO_ROOT/launch/gpu_slurm.sbatch

if ((DRY_RUN)); then
  printf '+ %s\n' "$(qcmd mkdir -p "$LOG_DIR")"
  printf '+ %s\n' "$(qcmd "${SBATCH[@]}" "$SCRIPT" "${JOB[@]}")"
  printf '# resolved job script (what %s runs in the job):\n' "${SCRIPT#"$REPO_ROOT"/}"
  bash "$SCRIPT" --dry_run "${JOB[@]}"
  exit 0
fi

command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node (or use --dry_run)"
mkdir -p "$LOG_DIR"
printf '+ %s\n' "$(qcmd "${SBATCH[@]}" "$SCRIPT" "${JOB[@]}")" >&2
"${SBATCH[@]}" "$SCRIPT" "${JOB[@]}"
printf '%s: logs in %s/%s-<jobid>.out; stop with scancel --signal=TERM <jobid> (main checkpoints and exits)\n' \
  "$PROG" "$LOG_DIR" "$JOB_NAME" >&2
