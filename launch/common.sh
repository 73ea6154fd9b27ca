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
