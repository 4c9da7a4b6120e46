# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/bench-*.sh: waiting for a condition
# instead of sleeping a fixed time.
#
#   wait_for SECONDS WHAT COMMAND [ARGS...]
#
# Runs COMMAND every 20 ms until it succeeds. After SECONDS it prints
# "WHAT did not happen within SECONDS s" on stderr and returns 1, so that
# `wait_for ... || exit 1` (or set -e) stops the script loudly instead of
# carrying on with a half-started setup.
wait_for() {
  local secs=$1 what=$2 deadline
  shift 2
  deadline=$(( $(date +%s%N) + secs * 1000000000 ))
  until "$@"; do
    if [ "$(date +%s%N)" -ge "$deadline" ]; then
      echo "$what did not happen within ${secs} s" >&2
      return 1
    fi
    sleep 0.02
  done
}

# complete_lines FILE: FILE without a last line still being written (a
# serial console or a log can end in the middle of a line).
complete_lines() {
  [ -e "$1" ] || return 0
  if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then
    sed '$d' "$1"
  else
    cat "$1"
  fi
}

# count_lines PATTERN FILE: complete lines of FILE containing the fixed
# string PATTERN (0 when the file does not exist yet).
count_lines() {
  local n
  n=$(complete_lines "$2" | grep -cF -- "$1") || true
  echo "${n:-0}"
}

# more_lines_than N PATTERN FILE: whether FILE has more than N such lines.
more_lines_than() {
  [ "$(count_lines "$2" "$3")" -gt "$1" ]
}
