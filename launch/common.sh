# Shell helpers shared by the launch scripts (sourced; gpu_slurm.sbatch keeps its own copies, since SLURM runs a
# spooled copy of it). The caller sets PROG first.
# shellcheck shell=bash

SETTINGS="few_shot cross_lingual clean_to_noisy simple_to_complex"

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; printf 'Run %s --help for usage.\n' "$PROG" >&2; exit 2; }

# Quote one word for a POSIX shell exactly like Python's shlex.quote.
q() {
  local s=$1 sq="'" rep="'\"'\"'"
  if [[ -n $s && $s != *[!A-Za-z0-9_@%+=:,./-]* ]]; then printf '%s' "$s"; return; fi
  s=${s//$sq/$rep}
  printf "'%s'" "$s"
}
qcmd() { local out="" a; for a in "$@"; do out+="${out:+ }$(q "$a")"; done; printf '%s' "$out"; }

WORDS=()
# Set WORDS to the words of a shell-quoted string (quotes honoured, nothing expanded or run); $2 names the flag.
split_words() {
  WORDS=()
  [[ -z ${1//[[:space:]]/} ]] && return 0
  printf '%s' "$1" | xargs printf '' 2>/dev/null || die "cannot parse $2 (unbalanced quotes?): $1"
  local w
  while IFS= read -r -d '' w; do WORDS+=("$w"); done < <(printf '%s' "$1" | xargs printf '%s\0')
}

# Local paths relative to the caller's directory (the scripts cd to the repo root later); gs:// as is.
abspath() {
  case $1 in /*|gs://*|"") printf '%s' "$1" ;; "~/"*) printf '%s/%s' "$HOME" "${1#"~/"}" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac
}

check_setting() {
  [[ -n $SETTING ]] || die "--setting is required (one of: $SETTINGS)"
  [[ " $SETTINGS " == *" $SETTING "* ]] || die "unknown --setting '$SETTING' (one of: $SETTINGS)"
}

# Parse the command line ("$@") into the caller's variables. Here: --help (the caller's usage), --dry_run (DRY_RUN=1),
# "--" (the rest: DASH_OVERRIDES), --config_overrides (OVERRIDE_STRS, after $DIAL_CONFIG_OVERRIDES) and --setting,
# --workdir, --scale, --data_dir (SETTING, WORKDIR, SCALE, DATA_DIR). The caller's own flags go to its functions
# set_flag FLAG (flags without a value) and set_opt KEY VALUE (--KEY=VALUE or --KEY VALUE); each returns 1 for a
# flag it does not take.
OVERRIDES=() DASH_OVERRIDES=() OVERRIDE_STRS=()
parse_args() {
  local arg key val
  if [[ -n ${DIAL_CONFIG_OVERRIDES:-} ]]; then OVERRIDE_STRS+=("$DIAL_CONFIG_OVERRIDES"); fi
  while (($#)); do
    arg=$1; shift
    case $arg in
      --) DASH_OVERRIDES=("$@"); break ;;
      -h|--help) usage; exit 0 ;;
      --dry_run) DRY_RUN=1 ;;
      --*)
        set_flag "$arg" && continue
        if [[ $arg == *=* ]]; then key=${arg%%=*}; val=${arg#*=}
        else key=$arg; (($#)) || die "$arg needs a value"; val=$1; shift; fi
        case $key in
          --setting) SETTING=$val ;;
          --workdir) WORKDIR=$val ;;
          --scale) SCALE=$val ;;
          --data_dir) DATA_DIR=$val ;;
          --config_overrides) OVERRIDE_STRS+=("$val") ;;
          *) set_opt "$key" "$val" || die "unknown flag $key" ;;
        esac ;;
      *) die "unexpected argument '$arg' (config overrides go in --config_overrides=... or after --)" ;;
    esac
  done
}

# OVERRIDES: the words of every --config_overrides string (and $DIAL_CONFIG_OVERRIDES), then the words after "--".
collect_overrides() {
  local s
  for s in ${OVERRIDE_STRS[@]+"${OVERRIDE_STRS[@]}"}; do
    split_words "$s" --config_overrides; OVERRIDES+=(${WORDS[@]+"${WORDS[@]}"})
  done
  OVERRIDES+=(${DASH_OVERRIDES[@]+"${DASH_OVERRIDES[@]}"})
}

# CONFIG: the config file of SETTING with the preset SCALE names (paper | default).
config_for_scale() {
  case $SCALE in paper) CONFIG=configs/$SETTING.py:paper ;; default) CONFIG=configs/$SETTING.py ;;
    *) die "--scale must be paper or default (got '$SCALE')" ;; esac
}
