#!/usr/bin/env bash
# Brings up Son of Grid Engine on this one host, for tests: sge_qmaster and
# sge_execd, queue all.q with one slot per core, parallel environments `smp`
# ($pe_slots) and `mpi` ($fill_up), and a 1 s scheduling interval.
# Debian/Ubuntu (gridengine-* packages), as root, without systemd. Idempotent.
# Coexists with scripts/local-slurm.sh (not with slurm-wlm-torque, which also
# ships qsub/qstat/qdel).
#
#   scripts/local-sge.sh [start]   install (if needed), configure, start, wait until the queue takes jobs
#   scripts/local-sge.sh install   only install the packages
#   scripts/local-sge.sh status    qhost and qstat -f
#   scripts/local-sge.sh stop      stop execd and qmaster
set -euo pipefail

action=${1:-start}
host=$(hostname)
slots=${TESSERA_SGE_SLOTS:-$(nproc)}
apt=(apt-get -o DPkg::Lock::Timeout=600)
cell=/var/lib/gridengine/default/common
qmaster_pid=/var/spool/gridengine/qmaster/qmaster.pid
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default

say() { echo "[local-sge] $*" >&2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
execd_pidfile() { compgen -G '/var/spool/gridengine/execd/*/execd.pid' | head -n 1 || true; }

stop_pid() {
  local pf=$1 i
  alive "$pf" || return 0
  kill "$(cat "$pf")" 2>/dev/null || true
  for i in $(seq 50); do alive "$pf" || return 0; sleep 0.2; done
  kill -9 "$(cat "$pf")" 2>/dev/null || true
}

# `qconf -m<what>` without an interactive editor: $1 = option, then sed expressions.
qconf_edit() {
  local opt=$1 editor
  shift
  editor=$(mktemp)
  {
    echo '#!/bin/sh'
    printf 'sed -i'
    printf " -e '%s'" "$@"
    echo ' "$1"'
  } >"$editor"
  chmod +x "$editor"
  EDITOR=$editor qconf "$opt" >/dev/null
  rm -f "$editor"
}

install_packages() {
  if dpkg-query -W -f='${Status}\n' gridengine-master gridengine-exec gridengine-client 2>/dev/null |
    grep -c "install ok installed" | grep -qx 3; then
    return 0
  fi
  say "installing gridengine"
  debconf-set-selections <<SEL
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginemaster string $host
SEL
  local policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
  fi
  [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit) ]] || "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends \
    gridengine-master gridengine-exec gridengine-client
  if ((policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

configure_and_start() {
  local i rev pe rule first dir pf
  echo "$host" >"$cell/act_qmaster"
  # SGE wants forward and reverse lookups to agree; when this host's address
  # reverse-resolves to another name (localhost), declare it an alias.
  rev=$(getent hosts "$(getent hosts "$host" | awk '{print $1; exit}')" | awk '{print $2; exit}')
  if [[ -n $rev && $rev != "$host" ]]; then echo "$host $rev" >"$cell/host_aliases"; fi
  mkdir -p /var/run/gridengine && chown sgeadmin:sgeadmin /var/run/gridengine
  alive "$qmaster_pid" || /usr/sbin/sge_qmaster
  for i in $(seq 60); do qconf -sh >/dev/null 2>&1 && break; sleep 0.5; done
  qconf -sh >/dev/null || { say "qmaster does not answer"; tail /var/spool/gridengine/qmaster/messages >&2; return 1; }
  # Let root and system users run jobs (set before execd starts), schedule every second.
  qconf_edit -mconf 's/^min_uid .*/min_uid 0/' 's/^min_gid .*/min_gid 0/'
  qconf_edit -msconf 's/^schedule_interval .*/schedule_interval 0:0:1/' \
    's/^flush_submit_sec .*/flush_submit_sec 1/' 's/^flush_finish_sec .*/flush_finish_sec 1/'
  qconf -ss 2>/dev/null | grep -qx "$host" || qconf -as "$host" >/dev/null
  qconf -sh | grep -qx "$host" || qconf -ah "$host" >/dev/null
  dir=$(mktemp -d)
  for pe in smp mpi; do
    qconf -spl 2>/dev/null | grep -qx "$pe" && continue
    rule='$pe_slots' first=TRUE
    if [[ $pe == mpi ]]; then rule='$fill_up' first=FALSE; fi
    printf '%s\n' "pe_name $pe" "slots 9999" "user_lists NONE" "xuser_lists NONE" "start_proc_args NONE" \
      "stop_proc_args NONE" "allocation_rule $rule" "control_slaves TRUE" "job_is_first_task $first" \
      "urgency_slots min" "accounting_summary FALSE" "qsort_args NONE" >"$dir/$pe"
    qconf -Ap "$dir/$pe" >/dev/null
  done
  if ! qconf -sql 2>/dev/null | grep -qx all.q; then
    {
      printf '%s\n' "qname all.q" "hostlist $host" "seq_no 0" "load_thresholds NONE" "suspend_thresholds NONE" \
        "nsuspend 1" "suspend_interval 00:05:00" "priority 0" "min_cpu_interval 00:05:00" "processors UNDEFINED" \
        "qtype BATCH INTERACTIVE" "ckpt_list NONE" "pe_list smp mpi" "rerun FALSE" "slots $slots" "tmpdir /tmp" \
        "shell /bin/sh" "prolog NONE" "epilog NONE" "shell_start_mode unix_behavior" "starter_method NONE" \
        "suspend_method NONE" "resume_method NONE" "terminate_method NONE" "notify 00:00:60" "owner_list NONE" \
        "user_lists NONE" "xuser_lists NONE" "subordinate_list NONE" "complex_values NONE" "projects NONE" \
        "xprojects NONE" "calendar NONE" "initial_state default"
      for l in s_rt h_rt s_cpu h_cpu s_fsize h_fsize s_data h_data s_stack h_stack s_core h_core s_rss h_rss \
        s_vmem h_vmem; do echo "$l INFINITY"; done
    } >"$dir/all.q"
    qconf -Aq "$dir/all.q" >/dev/null
  fi
  rm -rf "$dir"
  pf=$(execd_pidfile)
  if [[ -z $pf ]] || ! alive "$pf"; then /usr/sbin/sge_execd; fi
  for i in $(seq 60); do
    # execd reports load and the queue instance is in no error/alarm/unknown/disabled state
    if qhost -h "$host" 2>/dev/null | awk -v h="$host" '$1==h && $7!="-"{ok=1} END{exit !ok}' &&
      ! qstat -f -q all.q 2>/dev/null | awk '/all.q@/{print $6}' | grep -qE '[Eaud]'; then
      say "up: all.q@$host with $slots slots"
      return 0
    fi
    qmod -c "all.q@$host" >/dev/null 2>&1 || true
    sleep 0.5
  done
  say "execd did not come up"
  qhost >&2 || true
  return 1
}

case $action in
  install) install_packages ;;
  start)
    install_packages
    configure_and_start
    ;;
  status)
    qhost || true
    qstat -f || true
    ;;
  stop)
    pf=$(execd_pidfile)
    if [[ -n $pf ]]; then
      qconf -ke "$host" >/dev/null 2>&1 || true
      sleep 1
      stop_pid "$pf"
    fi
    qconf -km >/dev/null 2>&1 || true
    sleep 1
    stop_pid "$qmaster_pid"
    say "stopped"
    ;;
  *)
    echo "usage: $0 [start|install|status|stop]" >&2
    exit 2
    ;;
esac
