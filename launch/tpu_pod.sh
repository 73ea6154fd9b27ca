#!/usr/bin/env bash
# Create-or-reuse a Cloud TPU VM (single host or pod slice), copy this code to every worker, install,
# prepare the data and start `python -m dial_jax.main` on ALL workers at once. See launch/README.md.
# shellcheck disable=SC2016,SC2088  # $VARS and ~ in single quotes are for the workers' shell
set -euo pipefail

PROG=launch/tpu_pod.sh
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=common.sh
source "$REPO_ROOT/launch/common.sh"  # die, q, qcmd, check_setting, parse_args, collect_overrides, ...

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name=NAME --zone=ZONE --setting=SETTING --workdir=gs://BUCKET/PATH [flags] [-- OVERRIDES...]

Creates (or reuses) a TPU VM, copies the code to every worker, installs it with "jax[tpu]", prepares
the data and starts, on ALL workers, under nohup/setsid (survives ssh disconnects):
  python -m dial_jax.main --config=configs/SETTING.py:paper --workdir=WORKDIR \
      --config.data.dir=DATA_DIR OVERRIDES
with the output of each worker in ~/dial_logs/RUN-<hostname>.log on that worker.

TPU VM (flag, or env var in brackets):
  --name=NAME              TPU VM name (required) [TPU_NAME]
  --zone=ZONE              e.g. us-central2-b for v4 (required) [TPU_ZONE]
  --project=PROJECT        GCP project; default: gcloud's configured project [TPU_PROJECT]
  --accelerator_type=TYPE  default v4-8 (4 chips, 1 worker: the :paper step fits, README "TPU slices")
                           [TPU_ACCELERATOR_TYPE]
  --runtime_version=V      default from the type: v2/v3/v4 tpu-ubuntu2204-base, v5litepod
                           v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e [TPU_RUNTIME_VERSION]
  --preemptible | --spot   create a preemptible / spot VM (not both)
  --skip_create            never create: the VM must already exist
  --internal_ip            ssh/scp over internal IPs (when launching from a GCE VM in the same VPC)
  --delete_after           wait for the run to end (poll every --poll_s=300 s), then delete the VM

Run:
  --setting=SETTING        few_shot | cross_lingual | clean_to_noisy | simple_to_complex (required) [DIAL_SETTING]
  --workdir=gs://...       checkpoints and metrics; must be gs:// (shared by all workers, survives
                           preemption) (required) [DIAL_WORKDIR]
  --scale=paper|default    config preset: paper (default) -> configs/SETTING.py:paper
  --config_overrides=STR   extra main flags passed through verbatim, shell-quoted, e.g.
                           "--config.train.num_steps=7 --config.mesh.fsdp=4"; may be repeated;
                           arguments after "--" are appended as they are [DIAL_CONFIG_OVERRIDES]
  --run_name=NAME          names the log files; default SETTING-<UTC time>
  --hf_token_file=PATH     local file with a Hugging Face token (gemma-2b is gated); copied to
                           ~/.cache/huggingface/token on every worker

Code (default: a `git archive` tarball of the local checkout at --ref, committed files only):
  --repo=URL               instead `git clone URL` on each worker [DIAL_REPO]
  --ref=REF                commit/branch/tag; tarball default HEAD, clone default the default branch [DIAL_REF]
  --skip_install           code and ~/dial_venv are already on the workers (just restart the run)
  --python_version=V       Python for the worker venv (made with uv), default 3.11 (jax needs >= 3.11)

Data (prepared on each worker into --data_dir):
  --data_dir=PATH          path on the workers, default ~/dial_data [DIAL_DATA_DIR]
  --data_from=gs://...     copy already-prepared splits (a `dial_jax.prepare` out_dir) from a bucket
  --raw_from=gs://...      copy the raw files from a bucket, then prepare from them (needed for
                           cross_lingual and simple_to_complex: no public download for Korean HH / ASAP)
  --skip_data              the data is already in --data_dir on every worker
  (default: `python -m dial_jax.prepare --out_dir=DATA_DIR --settings=SETTING`, which downloads)

Other actions (same --name/--zone/--project):
  --action=up              (default) everything above
  --action=logs            follow the log of one worker (--worker=N, default 0)
  --action=stop            SIGTERM the run on all workers (it saves a checkpoint and exits)
  --action=delete          delete the TPU VM
  --dry_run                print every command ("+ " lines; "# " lines are notes), run nothing
  --help

Resume: rerun the very same command (same --workdir). A preempted VM (state PREEMPTED) is deleted
and recreated, the code/venv/data are set up again and main resumes from the latest checkpoint in
--workdir. On a live VM with a finished/stopped run, add --skip_install --skip_data to just restart.
EOF
}

# Remote form of a worker path: a leading ~ becomes "$HOME" (expanded by the worker's shell).
rq() {
  case $1 in
    "~") printf '"$HOME"' ;;
    "~/"*) printf '"$HOME"/%s' "$(q "${1#"~/"}")" ;;
    *) q "$1" ;;
  esac
}
note() { if [[ $DRY_RUN == 1 ]]; then printf '# %s\n' "$*"; else printf '%s: %s\n' "$PROG" "$*" >&2; fi; }
run() {
  if [[ $DRY_RUN == 1 ]]; then printf '+ %s\n' "$(qcmd "$@")"; return 0; fi
  printf '+ %s\n' "$(qcmd "$@")" >&2
  "$@"
}

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCEL=${TPU_ACCELERATOR_TYPE:-v4-8}  # python -m dial_jax.aot: fits, one host
RUNTIME=${TPU_RUNTIME_VERSION:-}
SETTING=${DIAL_SETTING:-}
WORKDIR=${DIAL_WORKDIR:-}
DATA_DIR=${DIAL_DATA_DIR:-"~/dial_data"}
REPO=${DIAL_REPO:-}
REF=${DIAL_REF:-}
PREEMPTIBLE=0 SPOT=0 SKIP_CREATE=0 INTERNAL_IP=0 DELETE_AFTER=0 POLL_S=300
SCALE=paper RUN_NAME="" HF_TOKEN_FILE="" SKIP_INSTALL=0 PY_VERSION=3.11
DATA_FROM="" RAW_FROM="" SKIP_DATA=0 ACTION=up WORKER=0 DRY_RUN=0

set_flag() {
  case $1 in
    --preemptible) PREEMPTIBLE=1 ;;
    --spot) SPOT=1 ;;
    --skip_create) SKIP_CREATE=1 ;;
    --internal_ip) INTERNAL_IP=1 ;;
    --delete_after) DELETE_AFTER=1 ;;
    --skip_install) SKIP_INSTALL=1 ;;
    --skip_data) SKIP_DATA=1 ;;
    *) return 1 ;;
  esac
}
set_opt() {
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --accelerator_type) ACCEL=$2 ;;
    --runtime_version) RUNTIME=$2 ;;
    --data_from) DATA_FROM=$2 ;;
    --raw_from) RAW_FROM=$2 ;;
    --repo) REPO=$2 ;;
    --ref) REF=$2 ;;
    --run_name) RUN_NAME=$2 ;;
    --hf_token_file) HF_TOKEN_FILE=$2 ;;
    --python_version) PY_VERSION=$2 ;;
    --poll_s) POLL_S=$2 ;;
    --action) ACTION=$2 ;;
    --worker) WORKER=$2 ;;
    *) return 1 ;;
  esac
}
parse_args "$@"

# ---- validation -------------------------------------------------------------------------------
[[ -n $NAME ]] || die "--name is required (or set TPU_NAME)"
[[ -n $ZONE ]] || die "--zone is required (or set TPU_ZONE), e.g. --zone=us-central2-b"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME': use lowercase letters, digits and '-'"
case $ACTION in up|logs|stop|delete) ;; *) die "--action must be up, logs, stop or delete (got '$ACTION')" ;; esac
[[ $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker index (got '$WORKER')"
[[ $POLL_S =~ ^[1-9][0-9]*$ ]] || die "--poll_s must be a positive integer (got '$POLL_S')"

GC_LOC=(--zone="$ZONE")
[[ -n $PROJECT ]] && GC_LOC+=(--project="$PROJECT")
SSH_EXTRA=()
((INTERNAL_IP)) && SSH_EXTRA+=(--internal-ip)
TPU=(gcloud compute tpus tpu-vm)

tpu_ssh() {  # tpu_ssh WORKER REMOTE_SHELL_COMMAND
  run "${TPU[@]}" ssh "$NAME" "${GC_LOC[@]}" --worker="$1" ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$2"
}

R_LOGS='"$HOME"/dial_logs'
R_CODE='"$HOME"/dial_jax'
R_VENV='"$HOME"/dial_venv'
R_PIDFILE="$R_LOGS/train.pid"
# True while the run started by this script is alive on the worker (a zombie counts as finished).
R_ALIVE="[ -f $R_PIDFILE ] && kill -0 \"\$(cat $R_PIDFILE)\" 2>/dev/null && ! ps -o stat= -p \"\$(cat $R_PIDFILE)\" | grep -q Z"
R_BUSY="if $R_ALIVE; then echo \"\$(hostname): a DIAL run is still going (pid \$(cat $R_PIDFILE)); stop it first with $PROG --action=stop\" >&2; exit 1; fi"

case $ACTION in
  logs)
    tpu_ssh "$WORKER" "tail -n 200 -F $R_LOGS/latest.log"
    exit 0 ;;
  stop)
    tpu_ssh all "if $R_ALIVE; then kill -TERM -- -\"\$(cat $R_PIDFILE)\" && echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): no run going\"; fi"
    exit 0 ;;
  delete)
    run "${TPU[@]}" delete "$NAME" "${GC_LOC[@]}" --quiet
    exit 0 ;;
esac

check_setting
[[ -n $WORKDIR ]] || die "--workdir is required (a gs://BUCKET/PATH shared by all workers)"
[[ $WORKDIR == gs://?* ]] || die "--workdir must be a gs:// path (every worker writes there; local disks are lost on preemption), got '$WORKDIR'"
config_for_scale
((PREEMPTIBLE && SPOT)) && die "--preemptible and --spot are exclusive"
[[ -n $DATA_DIR ]] || die "--data_dir is empty"
[[ $DATA_DIR == gs://* ]] && die "--data_dir is a path on the workers; to copy prepared data from a bucket use --data_from=$DATA_DIR"
[[ -n $DATA_FROM && -n $RAW_FROM ]] && die "--data_from and --raw_from are exclusive"
((SKIP_DATA)) && [[ -n $DATA_FROM || -n $RAW_FROM ]] && die "--skip_data conflicts with --data_from/--raw_from"
[[ $HF_TOKEN_FILE == "~/"* ]] && HF_TOKEN_FILE=$HOME/${HF_TOKEN_FILE#"~/"}
[[ -z $HF_TOKEN_FILE || $DRY_RUN == 1 || -r $HF_TOKEN_FILE ]] || die "--hf_token_file '$HF_TOKEN_FILE' is not readable"
[[ $PY_VERSION =~ ^3\.[0-9]+$ ]] || die "--python_version must look like 3.11 (got '$PY_VERSION')"
RUN_NAME=${RUN_NAME:-$SETTING-$(date -u +%Y%m%d-%H%M%S)}
[[ $RUN_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--run_name may only contain letters, digits, '.', '_' and '-'"
collect_overrides
if [[ -z $RUNTIME ]]; then
  case $ACCEL in
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    v2-*|v3-*|v4-*) RUNTIME=tpu-ubuntu2204-base ;;
    *) die "no default --runtime_version for --accelerator_type=$ACCEL; pass one" ;;
  esac
fi

# ---- 1. the TPU VM: create or reuse -----------------------------------------------------------
CREATE=("${TPU[@]}" create "$NAME" "${GC_LOC[@]}" --accelerator-type="$ACCEL" --version="$RUNTIME")
((PREEMPTIBLE)) && CREATE+=(--preemptible)
((SPOT)) && CREATE+=(--spot)
DESCRIBE=("${TPU[@]}" describe "$NAME" "${GC_LOC[@]}" --format='value(state)')
FRESH=0
if [[ $DRY_RUN == 1 ]]; then
  run "${DESCRIBE[@]}"
  if ((SKIP_CREATE)); then
    note "--skip_create: the TPU VM must exist and be READY"
  else
    note "only if the describe above finds no VM (a PREEMPTED/TERMINATED one is deleted first):"
    run "${CREATE[@]}"
    ((SKIP_INSTALL || SKIP_DATA)) && note "(on a newly created VM --skip_install/--skip_data are ignored)"
  fi
else
  printf '+ %s\n' "$(qcmd "${DESCRIBE[@]}")" >&2
  state=$("${DESCRIBE[@]}" 2>/dev/null) || state=""
  case $state in
    READY) note "reusing TPU VM $NAME (READY)" ;;
    "")
      ((SKIP_CREATE)) && die "TPU VM $NAME not found in $ZONE and --skip_create was given"
      run "${CREATE[@]}"; FRESH=1 ;;
    PREEMPTED|TERMINATED)
      ((SKIP_CREATE)) && die "TPU VM $NAME is $state; rerun without --skip_create to recreate it"
      note "TPU VM $NAME is $state: deleting and recreating it"
      run "${TPU[@]}" delete "$NAME" "${GC_LOC[@]}" --quiet
      run "${CREATE[@]}"; FRESH=1 ;;
    STOPPED) run "${TPU[@]}" start "$NAME" "${GC_LOC[@]}" ;;
    *) die "TPU VM $NAME is in state $state; wait for READY (or delete it) and rerun" ;;
  esac
fi
if ((FRESH && (SKIP_INSTALL || SKIP_DATA))); then
  note "new VM: ignoring --skip_install/--skip_data"; SKIP_INSTALL=0; SKIP_DATA=0
fi

# ---- 2. code ----------------------------------------------------------------------------------
if ((SKIP_INSTALL)); then
  note "--skip_install: using the code in ~/dial_jax and the venv in ~/dial_venv on the workers"
elif [[ -n $REPO ]]; then
  clone="set -eu; $R_BUSY; rm -rf $R_CODE; git clone --quiet $(q "$REPO") $R_CODE"
  [[ -n $REF ]] && clone+="; git -C $R_CODE checkout --quiet $(q "$REF")"
  tpu_ssh all "$clone"
else
  TARBALL="${TMPDIR:-/tmp}/dial_jax-$RUN_NAME.tar.gz"
  [[ $DRY_RUN == 1 ]] || trap 'rm -f "$TARBALL"' EXIT
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$TARBALL" "${REF:-HEAD}"
  run "${TPU[@]}" scp "$TARBALL" "$NAME:dial_jax.tar.gz" "${GC_LOC[@]}" --worker=all ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
  tpu_ssh all "set -eu; $R_BUSY; rm -rf $R_CODE; mkdir -p $R_CODE; tar -xzf \"\$HOME\"/dial_jax.tar.gz -C $R_CODE; rm -f \"\$HOME\"/dial_jax.tar.gz"
fi
if [[ -n $HF_TOKEN_FILE ]]; then
  run "${TPU[@]}" scp "$HF_TOKEN_FILE" "$NAME:dial_hf_token" "${GC_LOC[@]}" --worker=all ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
  tpu_ssh all 'set -eu; mkdir -p "$HOME"/.cache/huggingface; mv "$HOME"/dial_hf_token "$HOME"/.cache/huggingface/token; chmod 600 "$HOME"/.cache/huggingface/token'
fi

# ---- 3. install -------------------------------------------------------------------------------
if ((!SKIP_INSTALL)); then
  tpu_ssh all "set -eu; export PATH=\"\$HOME/.local/bin:\$PATH\"; if ! command -v uv >/dev/null 2>&1; then curl -LsSf https://astral.sh/uv/install.sh | sh; fi; if [ ! -x $R_VENV/bin/python ]; then uv venv --python $(q "$PY_VERSION") $R_VENV; fi; uv pip install --python $R_VENV/bin/python -e $R_CODE'[gcs]' 'jax[tpu]'"
fi

# ---- 4. data ----------------------------------------------------------------------------------
RDATA=$(rq "$DATA_DIR")
prepare() { printf 'cd %s; %s/bin/python -m dial_jax.prepare %s--out_dir=%s --settings=%s' "$R_CODE" "$R_VENV" "$1" "$RDATA" "$(q "$SETTING")"; }
if ((SKIP_DATA)); then
  note "--skip_data: expecting prepared data in $DATA_DIR on every worker"
elif [[ -n $DATA_FROM ]]; then
  tpu_ssh all "set -eu; mkdir -p $RDATA; gcloud storage rsync --recursive $(q "$DATA_FROM") $RDATA"
elif [[ -n $RAW_FROM ]]; then
  RRAW=$(rq "${DATA_DIR%/}/raw")
  tpu_ssh all "set -eu; mkdir -p $RRAW; gcloud storage rsync --recursive $(q "$RAW_FROM") $RRAW; $(prepare "--raw_dir=$RRAW ")"
else
  tpu_ssh all "set -eu; $(prepare "")"
fi

# ---- 5. run on all workers --------------------------------------------------------------------
MAIN=(-m dial_jax.main --config="$CONFIG" --workdir="$WORKDIR")
R_MAIN="$R_VENV/bin/python $(qcmd "${MAIN[@]}") --config.data.dir=$RDATA"
((${#OVERRIDES[@]})) && R_MAIN+=" $(qcmd "${OVERRIDES[@]}")"
R_EXIT="$R_LOGS/$RUN_NAME.exit"
tpu_ssh all "set -eu; mkdir -p $R_LOGS; cd $R_CODE; $R_BUSY; log=$R_LOGS/$RUN_NAME-\"\$(hostname)\".log; rm -f $R_EXIT; setsid nohup bash -c 'trap : TERM; \"\$@\"; echo \$? > \"\$0\"' $R_EXIT $R_MAIN > \"\$log\" 2>&1 < /dev/null & echo \$! > $R_PIDFILE; ln -sf \"\$log\" $R_LOGS/latest.log; echo \"\$(hostname): started, log \$log\""

LOC_FLAGS="--name=$NAME --zone=$ZONE${PROJECT:+ --project=$PROJECT}"
note "started run $RUN_NAME on all workers of $NAME; follow worker 0 with: $PROG --action=logs $LOC_FLAGS"
note "resume after preemption: rerun this same command (same --workdir=$WORKDIR)"

# ---- 6. optional tear-down --------------------------------------------------------------------
if ((DELETE_AFTER)); then
  CHECK="test -f $R_EXIT && cat $R_EXIT"
  if [[ $DRY_RUN == 1 ]]; then
    note "--delete_after: every ${POLL_S}s until worker 0 has written its exit file (or the VM is no longer READY):"
    run "${DESCRIBE[@]}"
    tpu_ssh 0 "$CHECK"
    note "then:"
    run "${TPU[@]}" delete "$NAME" "${GC_LOC[@]}" --quiet
  else
    note "--delete_after: waiting for the run to end (polling every ${POLL_S}s; Ctrl-C leaves the VM up)"
    while sleep "$POLL_S"; do
      state=$("${DESCRIBE[@]}" 2>/dev/null) || state=""
      if [[ $state != READY ]]; then note "TPU VM state is '${state:-gone}' (preempted?): rerun to resume"; break; fi
      if code=$("${TPU[@]}" ssh "$NAME" "${GC_LOC[@]}" --worker=0 ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$CHECK" 2>/dev/null); then
        note "run finished on worker 0 with exit status $code"; break
      fi
    done
    run "${TPU[@]}" delete "$NAME" "${GC_LOC[@]}" --quiet
  fi
fi
