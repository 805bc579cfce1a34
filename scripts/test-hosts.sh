#!/usr/bin/env bash
# Test hosts on this one machine: N network namespaces joined by a switch,
# so that a scheduler and its workers each have an address of their own and
# talk over a real network stack (tests/hosts.rs runs elastic clusters on
# them). Needs root and iproute2 (`ip`); the host's own networking is not
# touched: the switch (a Linux bridge) lives in a namespace of its own too.
#
#   scripts/test-hosts.sh up N               hosts 0..N-1 (replaces any of the same prefix)
#   scripts/test-hosts.sh down               removes everything `up` made (idempotent)
#   scripts/test-hosts.sh exec I CMD [ARG..] runs CMD on host I (same files, own network)
#   scripts/test-hosts.sh addr I             prints host I's address
#   scripts/test-hosts.sh cut I              takes host I's link down (its processes keep running)
#   scripts/test-hosts.sh mend I             brings it back up
#   scripts/test-hosts.sh list               the namespaces of this prefix
#
# TESSERA_HOSTS  prefix of every name (default `tessera`): host I is the
#                namespace PREFIX-hI, the switch PREFIX-sw. Give each
#                concurrent run its own prefix (tests/hosts.rs uses one per
#                test and process).
#
# Host I has interface eth0 with address 10.77.0.(I+1)/24 and loopback up;
# the hosts reach each other and nothing else (the switch's subnet is not
# routed to this machine's namespace, so concurrent runs cannot collide).
# `down` stops what still runs on the hosts (SIGTERM, then SIGKILL after 2 s)
# before removing them. By hand:
#
#   scripts/test-hosts.sh up 3
#   scripts/test-hosts.sh exec 0 tessera scheduler --listen 10.77.0.1:7000 &
#   scripts/test-hosts.sh exec 1 tessera worker --scheduler 10.77.0.1:7000 &
#   scripts/test-hosts.sh exec 2 tessera --scheduler 10.77.0.1:7000 demo
#   scripts/test-hosts.sh down
set -euo pipefail

prefix=${TESSERA_HOSTS:-tessera}
subnet=10.77.0
max_hosts=200

die() {
  echo "test-hosts: $*" >&2
  exit 2
}

[[ $prefix =~ ^[A-Za-z0-9_.-]{1,40}$ ]] || die "TESSERA_HOSTS=\`$prefix\`: expected 1 to 40 letters, digits, '.', '_' or '-'"
switch="$prefix-sw"

host_index() { # validates a host number
  [[ ${1:-} =~ ^[0-9]+$ ]] && ((10#$1 < max_hosts)) || die "\`${1:-}\` is not a host number (0 to $((max_hosts - 1)))"
  echo $((10#$1))
}

# A host that `up` made (exists as a namespace).
host_ns() {
  local i ns
  i=$(host_index "${1:-}")
  ns="$prefix-h$i"
  [[ -e /run/netns/$ns ]] || die "no host $i (namespace $ns): run \`$0 up N\` first (TESSERA_HOSTS=$prefix)"
  echo "$ns"
}

need_root() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
  command -v ip >/dev/null || die "needs the \`ip\` command (iproute2)"
}

# The namespaces of this prefix, one a line.
ours() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix//./\\.}-(h[0-9]+|sw)\$" || true
}

down() {
  local ns pids left
  for ns in $(ours); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      # shellcheck disable=SC2086 # one pid a word
      kill -TERM $pids 2>/dev/null || true
      for _ in $(seq 20); do
        left=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -z $left ]] && break
        sleep 0.1
      done
      # shellcheck disable=SC2086
      [[ -n $left ]] && kill -KILL $left 2>/dev/null || true
    fi
    # Deleting a namespace deletes its ends of the veth pairs, and with them the peers.
    ip netns delete "$ns"
  done
}

up() {
  local n=${1:-} i ns
  [[ $n =~ ^[0-9]+$ ]] && ((10#$n >= 1 && 10#$n <= max_hosts)) || die "up N: \`$n\` is not a number of hosts (1 to $max_hosts)"
  n=$((10#$n))
  down
  # Whatever fails half-way, nothing is left behind.
  trap 'down' ERR
  ip netns add "$switch"
  ip -n "$switch" link set lo up
  ip -n "$switch" link add br0 type bridge
  ip -n "$switch" link set br0 up
  for ((i = 0; i < n; i++)); do
    ns="$prefix-h$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # One veth pair: port hI on the switch, eth0 on the host.
    ip -n "$switch" link add "h$i" type veth peer name eth0 netns "$ns"
    ip -n "$switch" link set "h$i" master br0 up
    ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
  trap - ERR
  for ((i = 0; i < n; i++)); do
    echo "$prefix-h$i $subnet.$((i + 1))"
  done
}

action=${1:-}
[[ $# -gt 0 ]] && shift
case $action in
  up)
    need_root
    up "$@"
    ;;
  down)
    need_root
    down
    ;;
  exec)
    need_root
    ns=$(host_ns "${1:-}")
    shift
    [[ $# -gt 0 ]] || die "exec I CMD: no command given"
    exec ip netns exec "$ns" "$@"
    ;;
  addr)
    i=$(host_index "${1:-}")
    echo "$subnet.$((i + 1))"
    ;;
  cut | mend)
    need_root
    ns=$(host_ns "${1:-}")
    if [[ $action == cut ]]; then state=down; else state=up; fi
    ip -n "$ns" link set eth0 "$state"
    ;;
  list)
    need_root
    ours
    ;;
  *)
    die "usage: $0 up N | down | exec I CMD [ARG...] | addr I | cut I | mend I | list (prefix: TESSERA_HOSTS)"
    ;;
esac
