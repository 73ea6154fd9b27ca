#!/usr/bin/env bash
# DIAL training on one node with N GPUs: ONE process sees all local GPUs (JAX single controller per
# host) and shards over them with the config's mesh. See launch/README.md.
# shellcheck disable=SC2016  # single-quoted $VARS are meant for a remote / job-time shell
set -euo pipefail

PROG=launch/gpu_single_node.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=common.sh
source "$REPO_ROOT/launch/common.sh"  # die, q, qcmd, abspath, check_setting, parse_args, collect_overrides, ...

usage() {
  cat <<'EOF'
Usage: launch/gpu_single_node.sh --setting=SETTING --workdir=DIR [flags] [-- OVERRIDES...]

Runs, in the foreground, from the repository root:
  [CUDA_VISIBLE_DEVICES=...] XLA_PYTHON_CLIENT_MEM_FRACTION=F \
  python -m dial_jax.main --config=configs/SETTING.py:paper --workdir=DIR [--config.data.dir=DATA] OVERRIDES
(wrap it in tmux/nohup for long runs). Install first: pip install -e . "jax[cuda12]".

  --setting=SETTING        few_shot | cross_lingual | clean_to_noisy | simple_to_complex (required) [DIAL_SETTING]
  --workdir=DIR            checkpoints and metrics (local path or gs://) (required) [DIAL_WORKDIR]
  --scale=paper|default    config preset: paper (default) -> configs/SETTING.py:paper
  --data_dir=DIR           prepared data (`python -m dial_jax.prepare --out_dir=DIR`); passed as
                           --config.data.dir; default: the config's (env DIAL_DATA_DIR, else ./data)
  --config_overrides=STR   extra main flags passed through verbatim, shell-quoted, e.g.
                           "--config.train.num_steps=7 --config.mesh.fsdp=4"; may be repeated;
                           arguments after "--" are appended as they are [DIAL_CONFIG_OVERRIDES]
  --num_gpus=N             use the first N GPUs (sets CUDA_VISIBLE_DEVICES; the first N of an
                           existing CUDA_VISIBLE_DEVICES); default: all visible GPUs
  --mem_fraction=F         XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.90
  --xla_flags=STR          XLA_FLAGS for the run (default: unchanged)
  --python=PATH            interpreter; default .venv/bin/python of this checkout if present, else python3
  --prepare                first run `python -m dial_jax.prepare --out_dir=DATA --settings=SETTING`
                           (needs --data_dir; downloads, unless --raw_dir is given)
  --raw_dir=DIR            raw files for --prepare (needed for cross_lingual / simple_to_complex)
  --log_file=PATH          also append the output to PATH
  --dry_run                print the commands ("+ " lines), run nothing
  --help

Resume: rerun the same command with the same --workdir; main continues from the latest checkpoint.
SIGTERM (e.g. `kill PID`) makes main save a checkpoint and exit.
EOF
}

SETTING=${DIAL_SETTING:-}
WORKDIR=${DIAL_WORKDIR:-}
DATA_DIR="" SCALE=paper NUM_GPUS="" MEM_FRACTION=0.90 XLA_FLAGS_ARG="" XLA_FLAGS_SET=0 PYTHON=""
PREPARE=0 RAW_DIR="" LOG_FILE="" DRY_RUN=0

set_flag() { case $1 in --prepare) PREPARE=1 ;; *) return 1 ;; esac; }
set_opt() {
  case $1 in
    --num_gpus) NUM_GPUS=$2 ;;
    --mem_fraction) MEM_FRACTION=$2 ;;
    --xla_flags) XLA_FLAGS_ARG=$2; XLA_FLAGS_SET=1 ;;
    --python) PYTHON=$2 ;;
    --raw_dir) RAW_DIR=$2 ;;
    --log_file) LOG_FILE=$2 ;;
    *) return 1 ;;
  esac
}
parse_args "$@"

check_setting
[[ -n $WORKDIR ]] || die "--workdir is required"
config_for_scale
[[ -z $NUM_GPUS || $NUM_GPUS =~ ^[1-9][0-9]*$ ]] || die "--num_gpus must be a positive integer (got '$NUM_GPUS')"
[[ $MEM_FRACTION =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--mem_fraction must be in (0, 1] (got '$MEM_FRACTION')"
((PREPARE)) && [[ -z $DATA_DIR ]] && die "--prepare needs --data_dir"
[[ -n $RAW_DIR ]] && ((!PREPARE)) && die "--raw_dir is only used with --prepare"
collect_overrides
WORKDIR=$(abspath "$WORKDIR"); DATA_DIR=$(abspath "$DATA_DIR"); RAW_DIR=$(abspath "$RAW_DIR")
LOG_FILE=$(abspath "$LOG_FILE")
if [[ -z $PYTHON ]]; then
  if [[ -x $REPO_ROOT/.venv/bin/python ]]; then PYTHON=$REPO_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

RUN_ENV=(env)
# One process: drop multi-host settings a surrounding shell / SLURM allocation may have left.
for v in JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES JAX_PROCESS_ID JAX_LOCAL_DEVICE_IDS; do
  [[ -n ${!v+x} ]] && RUN_ENV+=(-u "$v")
done
if [[ -n ${SLURM_NTASKS:-} && ${SLURM_NTASKS} != 1 ]]; then RUN_ENV+=(SLURM_NTASKS=1); fi
if [[ -n $NUM_GPUS ]]; then
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
    ((${#visible[@]} >= NUM_GPUS)) || die "--num_gpus=$NUM_GPUS but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES has ${#visible[@]}"
  else
    visible=()
    for ((i = 0; i < NUM_GPUS; i++)); do visible+=("$i"); done
    if ((!DRY_RUN)) && command -v nvidia-smi >/dev/null 2>&1; then
      have=$(nvidia-smi -L | grep -c '^GPU' || true)
      ((have >= NUM_GPUS)) || die "--num_gpus=$NUM_GPUS but nvidia-smi lists $have GPUs"
    fi
  fi
  devs=$(IFS=,; printf '%s' "${visible[*]:0:NUM_GPUS}")
  RUN_ENV+=(CUDA_VISIBLE_DEVICES="$devs")
fi
RUN_ENV+=(XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
((XLA_FLAGS_SET)) && RUN_ENV+=(XLA_FLAGS="$XLA_FLAGS_ARG")

MAIN=("${RUN_ENV[@]}" "$PYTHON" -m dial_jax.main --config="$CONFIG" --workdir="$WORKDIR")
[[ -n $DATA_DIR ]] && MAIN+=(--config.data.dir="$DATA_DIR")
MAIN+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
PREP=("$PYTHON" -m dial_jax.prepare --out_dir="$DATA_DIR" --settings="$SETTING")
[[ -n $RAW_DIR ]] && PREP+=(--raw_dir="$RAW_DIR")

if ((DRY_RUN)); then
  printf '+ %s\n' "$(qcmd cd "$REPO_ROOT")"
  ((PREPARE)) && printf '+ %s\n' "$(qcmd "${PREP[@]}")"
  printf '+ %s\n' "$(qcmd "${MAIN[@]}")"
  [[ -n $LOG_FILE ]] && printf '# output also appended to %s\n' "$LOG_FILE"
  exit 0
fi

cd "$REPO_ROOT"
if ((PREPARE)); then printf '+ %s\n' "$(qcmd "${PREP[@]}")" >&2; "${PREP[@]}"; fi
printf '+ %s\n' "$(qcmd "${MAIN[@]}")" >&2
if [[ -n $LOG_FILE ]]; then
  mkdir -p "$(dirname "$LOG_FILE")"
  # exec into a pipeline is not possible; forward SIGTERM/SIGINT so main can checkpoint.
  "${MAIN[@]}" > >(tee -a "$LOG_FILE") 2>&1 &
  pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
  rc=0; wait "$pid" || rc=$?
  # A trapped signal makes wait return early (>128): wait again for main to finish saving.
  while ((rc > 128)); do
    r2=0; wait "$pid" 2>/dev/null || r2=$?
    ((r2 == 127)) && break  # already reaped: rc was main's own status
    rc=$r2
  done
  exit "$rc"
fi
exec "${MAIN[@]}"
