#!/usr/bin/env bash
# Validates a sysctl.d file (default deploy/sysctl/99-ssekify.conf) against the
# kernel it runs on, read-only and offline: nothing is written to /proc/sys.
#   - every line is blank, a comment (# or ;), or `key = value` as
#     sysctl.d(5) reads it, and no key is set twice;
#   - every key exists under /proc/sys (dots become slashes) and can be read
#     (`sysctl -n`, or the file where procps is not installed);
#   - every value has the shape of the kernel's current value: as many
#     fields, each an integer, when the kernel's value is numbers; a
#     comma list of ports and ranges for ip_local_reserved_ports;
#   - what the kernel refuses or warns about: a port range must be
#     1 <= low < high <= 65535 with low and high of different parity;
#     tcp/udp memory triples ascend; reserved ports lie in the range of
#     ephemeral ports set (else reserving them is useless); fs.nr_open stays
#     in 64..1073741816; net.ipv4.tcp_tw_reuse is 0, 1 or 2;
#   - the settings a comment suggests (`#   key = value`, the "notes, not
#     set") pass the same checks, and carry no trailing `# …`: sysctl.d has no
#     inline comments, so uncommenting such a line would hand the comment to
#     the kernel as part of the value. A net.netfilter.* key exists only while nf_conntrack is
#     loaded (the file says so); where it is not, that is printed, not failed.
# Cross-file numbers (somaxconn against --backlog, nr_open against
# LimitNOFILE, the reserved ports against --listen) are checked by
# scripts/check_deploy_consistency.py.
#
#   scripts/check-sysctl.sh [FILE]    # run by scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

file=${1:-deploy/sysctl/99-ssekify.conf}
errors=0
error() {
  printf 'error: %s\n' "$*" >&2
  errors=$((errors + 1))
}

is_int() { [[ $1 =~ ^-?[0-9]+$ ]]; }

# The kernel's current value of a key, on one line (fields separated by single spaces).
current() {
  local key=$1 path=/proc/sys/${1//.//} value
  if command -v sysctl >/dev/null 2>&1; then
    value=$(sysctl -n "$key" 2>/dev/null) || return 1
  else
    value=$(cat "$path" 2>/dev/null) || return 1
  fi
  # shellcheck disable=SC2086 # split on whitespace on purpose
  set -- $value
  printf '%s\n' "$*"
}

# check_port_list WHERE VALUE: `8080,8081` or `8000-8010,9000`, every port in 1..65535.
reserved=()
check_port_list() {
  local where=$1 value=$2 item low high
  if [[ -z $value ]]; then
    return 0
  fi
  if ! [[ $value =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]]; then
    error "$where: '$value' is not a comma list of ports and low-high ranges"
    return 0
  fi
  IFS=, read -ra items <<<"$value"
  for item in "${items[@]}"; do
    low=${item%-*}
    high=${item#*-}
    if ((low < 1 || high > 65535 || low > high)); then
      error "$where: '$item' is not a port or a range of ports within 1-65535"
    fi
    reserved+=("$item")
  done
}

declare -A seen=()
port_range=
checked=0
line_no=0
while IFS= read -r line || [[ -n $line ]]; do
  line_no=$((line_no + 1))
  where="$file:$line_no"
  trimmed=${line#"${line%%[![:space:]]*}"}
  suggested=false
  if [[ -z $trimmed ]]; then
    continue
  elif [[ $trimmed =~ ^[#\;][[:space:]]*([a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
    # A setting a comment suggests: checked as if it were uncommented.
    suggested=true
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[3]}
  elif [[ $trimmed == [#\;]* ]]; then
    continue
  elif [[ $trimmed =~ ^([^=[:space:]]+)[[:space:]]*=[[:space:]]*(.*)$ ]]; then
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
  else
    error "$where: not a comment nor \`key = value\`: $line"
    continue
  fi
  value=${value%"${value##*[![:space:]]}"}
  if ! [[ $key =~ ^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$ ]]; then
    error "$where: '$key' is not a dotted sysctl name (no '-' prefix, '/' or globs in this file)"
    continue
  fi
  if [[ $suggested == true ]]; then
    if [[ $value == *'#'* ]]; then
      error "$where: the suggested $key carries a trailing comment; sysctl.d has no inline comments, so uncommented its value would be '$value'"
      value=${value%%#*}
      value=${value%"${value##*[![:space:]]}"}
    fi
  else
    if [[ -n ${seen[$key]:-} ]]; then
      error "$where: $key is already set on line ${seen[$key]}"
    fi
    seen[$key]=$line_no
  fi

  path=/proc/sys/${key//.//}
  if [[ ! -f $path ]]; then
    if [[ $suggested == true && $key == net.netfilter.* ]] && ! grep -qw '^nf_conntrack' /proc/modules 2>/dev/null; then
      printf '%-40s not in /proc/sys here (nf_conntrack is not loaded), as the file warns\n' "$key"
      continue
    fi
    hint=
    if [[ $key == net.* ]]; then
      # A container's own network namespace shows only the per-namespace
      # net.* keys (net.core.netdev_max_backlog and net.ipv4.tcp_mem, for
      # one, belong to the host's).
      hint="; if this runs in a container, check on the host: a network namespace of its own hides the host-wide net.* keys"
    fi
    error "$where: $key does not exist on this kernel ($path)$hint"
    continue
  fi
  if ! now=$(current "$key"); then
    error "$where: $key cannot be read, so its value's shape cannot be checked"
    continue
  fi
  read -ra want <<<"$value"
  read -ra have <<<"$now"

  case $key in
    net.ipv4.ip_local_reserved_ports)
      check_port_list "$where" "$value"
      ;;
    *)
      all_int=true
      for field in ${have[@]+"${have[@]}"}; do is_int "$field" || all_int=false; done
      if [[ ${#have[@]} -gt 0 && $all_int == true ]]; then
        if [[ ${#want[@]} -ne ${#have[@]} ]]; then
          error "$where: $key takes ${#have[@]} number(s) (now: $now), not '$value'"
          continue
        fi
        for field in "${want[@]}"; do
          is_int "$field" || error "$where: $key: '$field' is not an integer"
        done
      fi
      ;;
  esac

  case $key in
    *.ip_local_port_range)
      if [[ ${#want[@]} -eq 2 ]] && is_int "${want[0]}" && is_int "${want[1]}"; then
        if ((want[0] < 1 || want[1] > 65535 || want[0] >= want[1])); then
          error "$where: $key needs 1 <= low < high <= 65535, not '$value'"
        elif (((want[0] + want[1]) % 2 == 0)); then
          error "$where: $key: low and high of the same parity (the kernel warns; connect() prefers even ports, bind() odd)"
        fi
        [[ $suggested == true ]] || port_range="${want[0]} ${want[1]}"
      fi
      ;;
    net.ipv4.tcp_mem | net.ipv4.tcp_rmem | net.ipv4.tcp_wmem | net.ipv4.udp_mem)
      if [[ ${#want[@]} -eq 3 ]] && ((want[0] > want[1] || want[1] > want[2])); then
        error "$where: $key must ascend (min, pressure/default, max), not '$value'"
      fi
      ;;
    fs.nr_open)
      if is_int "$value" && ((value < 64 || value > 1073741816)); then
        error "$where: fs.nr_open must be within 64..1073741816, not $value"
      fi
      ;;
    net.ipv4.tcp_tw_reuse)
      [[ $value =~ ^[012]$ ]] || error "$where: net.ipv4.tcp_tw_reuse is 0, 1 or 2, not '$value'"
      ;;
  esac
  checked=$((checked + 1))
  printf '%-40s %-28s (now: %s)%s\n' "$key" "$value" "${now:-empty}" "$([[ $suggested == true ]] && echo ', suggested in a comment')"
done <"$file"

# Reserved ports outside the ephemeral range reserve nothing.
if [[ -n $port_range ]]; then
  read -r low high <<<"$port_range"
  for item in ${reserved[@]+"${reserved[@]}"}; do
    if ((${item%-*} < low || ${item#*-} > high)); then
      error "$file: reserved port(s) $item lie outside ip_local_port_range $low-$high: reserving them does nothing"
    fi
  done
fi

if ((checked == 0)); then
  error "$file: no settings found"
fi
if ((errors > 0)); then
  echo "$file: $errors problem(s)" >&2
  exit 1
fi
echo "$file: $checked settings valid for this kernel ($(uname -r)); nothing was written"
