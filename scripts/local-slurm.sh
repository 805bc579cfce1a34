#!/usr/bin/env bash
# Brings up a Slurm cluster on this one host, for tests: slurmctld, slurmdbd
# (so that `sacct` answers) over MariaDB, munge, and one slurmd per node.
# Debian/Ubuntu, as root, without systemd. Idempotent: a second `start` only
# starts what is not running, and restarts the daemons when the layout changed.
#
#   scripts/local-slurm.sh [start]   install (if needed), configure, start, wait until usable
#   scripts/local-slurm.sh install   only install the packages
#   scripts/local-slurm.sh status    daemons and sinfo
#   scripts/local-slurm.sh stop      stop every daemon this script started (config stays)
#   scripts/local-slurm.sh teardown  stop, then remove config, state, logs and the accounting database
#
# TESSERA_SLURM_NODES=0 (default) one node named after this host;
#                     N >= 1: N nodes n1..nN on this host (`slurmd -N nI`, one port each),
#                     enough for multi-node jobs and `srun --mpi=pmix` across "nodes".
# TESSERA_SLURM_CPUS  CPUs each node advertises (default: nproc)
set -euo pipefail

action=${1:-start}
nodes=${TESSERA_SLURM_NODES:-0}
cpus=${TESSERA_SLURM_CPUS:-$(nproc)}
host=$(hostname -s)
conf=/etc/slurm/slurm.conf
logdir=/var/log/slurm
apt=(apt-get -o DPkg::Lock::Timeout=600)
# `srun --mpi=pmix`: the plugin (mpi_pmix_v4) is in slurm-wlm-basic-plugins and
# loads libpmix2 at run time; Open MPI is what the ranks run.
packages=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server libpmix2 openmpi-bin)

say() { echo "[local-slurm] $*" >&2; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
node_names() { if ((nodes >= 1)); then seq -f 'n%g' 1 "$nodes"; else echo "$host"; fi; }

stop_pidfile() {
  local pf=$1 i
  if alive "$pf"; then
    kill "$(cat "$pf")" 2>/dev/null || true
    for i in $(seq 50); do alive "$pf" || break; sleep 0.2; done
    if alive "$pf"; then kill -9 "$(cat "$pf")" 2>/dev/null || true; fi
  fi
  rm -f "$pf"
}

install_packages() {
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  # No init system here: keep the packages' postinst scripts from starting services.
  local policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
  fi
  [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit) ]] || "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"
  if ((policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

write_config() {
  local tmp port=6901 n
  tmp=$(mktemp)
  cat >"$tmp" <<CONF
# written by scripts/local-slurm.sh
ClusterName=tessera
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$logdir/slurmctld.log
SlurmdLogFile=$logdir/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
OverTimeLimit=0
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
MailProg=/bin/true
# One TmpFS per slurmd: mpi/pmix makes \$TmpFS/spmix_appdir_<uid>_<job>.<step>,
# which collides when several slurmd share a host and /tmp.
TmpFS=/var/spool/slurmd/%n/tmp
CONF
  if ((nodes >= 1)); then
    for n in $(node_names); do
      echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=2048 State=UNKNOWN" >>"$tmp"
      port=$((port + 1))
    done
    echo "PartitionName=debug Nodes=n[1-$nodes] Default=YES MaxTime=INFINITE State=UP" >>"$tmp"
  else
    echo "NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=2048 State=UNKNOWN" >>"$tmp"
    echo "PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP" >>"$tmp"
  fi
  mkdir -p /etc/slurm
  [[ -f /etc/slurm/cgroup.conf ]] || echo "CgroupPlugin=autodetect" >/etc/slurm/cgroup.conf
  if ! cmp -s "$tmp" "$conf"; then
    say "writing $conf"
    install -m 0644 "$tmp" "$conf"
    changed=1
  fi
  rm -f "$tmp"
}

start_munge() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  local i
  for i in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
  say "munge does not answer"
  return 1
}

start_dbd() {
  local i
  mysqladmin ping >/dev/null 2>&1 || /etc/init.d/mariadb start >/dev/null
  for i in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$logdir/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  alive /run/slurmdbd.pid || /usr/sbin/slurmdbd
  for i in $(seq 60); do sacctmgr -n show cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -n -P show cluster format=cluster | grep -qx tessera || sacctmgr -i add cluster tessera >/dev/null
}

start_slurm() {
  local pf n i states
  mkdir -p /var/spool/slurmctld /var/spool/slurmd "$logdir"
  if ((changed)); then # the node layout changed: restart everything
    for pf in /run/slurmd-*.pid; do [[ -e $pf ]] && stop_pidfile "$pf"; done
    stop_pidfile /run/slurmctld.pid
  fi
  alive /run/slurmctld.pid || /usr/sbin/slurmctld
  for n in $(node_names); do
    mkdir -p "/var/spool/slurmd/$n/tmp"
    if ! alive "/run/slurmd-$n.pid"; then
      if ((nodes >= 1)); then /usr/sbin/slurmd -N "$n"; else /usr/sbin/slurmd; fi
    fi
  done
  for i in $(seq 120); do
    states=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n $states ]] && ! grep -qvE '^((idle|mixed|allocated|completing) ?)+$' <<<"$states"; then
      n=$(node_names | wc -l)
      if timeout 60 srun --quiet -N"$n" -n"$n" -t 1 true; then
        say "up: $n node(s), $states"
        return 0
      fi
      say "srun smoke test failed"
      return 1
    fi
    if grep -qE 'down|drain|unknown' <<<"$states"; then
      for n in $(node_names); do scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true; done
    fi
    sleep 0.5
  done
  say "nodes did not become usable: $states"
  tail -n 20 "$logdir"/slurmctld.log "$logdir"/slurmd-*.log >&2 || true
  return 1
}

stop_all() {
  local pf
  for pf in /run/slurmd-*.pid; do [[ -e $pf ]] && stop_pidfile "$pf"; done
  stop_pidfile /run/slurmctld.pid
  stop_pidfile /run/slurmdbd.pid
  if mysqladmin ping >/dev/null 2>&1; then /etc/init.d/mariadb stop >/dev/null || true; fi
  stop_pidfile /run/munge/munged.pid
  say "stopped"
}

changed=0
case $action in
  install) install_packages ;;
  start)
    install_packages
    write_config
    start_munge
    start_dbd
    start_slurm
    ;;
  status)
    for pf in /run/munge/munged.pid /run/slurmdbd.pid /run/slurmctld.pid /run/slurmd-*.pid; do
      [[ -e $pf ]] || continue
      if alive "$pf"; then echo "$pf: running"; else echo "$pf: dead"; fi
    done
    sinfo -N || true
    ;;
  stop) stop_all ;;
  teardown)
    scancel --quiet --full -u "$(id -un)" 2>/dev/null || true
    sleep 1
    # Job ids start again at 1 once the state is gone: drop the accounting
    # records too, or `sacct -j ID` would answer with an old job's.
    if mysqladmin ping >/dev/null 2>&1; then mysql -e 'DROP DATABASE IF EXISTS slurm_acct_db' || true; fi
    stop_all
    rm -rf /var/spool/slurmctld /var/spool/slurmd "$conf" /etc/slurm/cgroup.conf /etc/slurm/slurmdbd.conf
    rm -f "$logdir"/slurmctld.log* "$logdir"/slurmd-*.log* "$logdir"/slurmdbd.log*
    say "torn down (packages stay installed)"
    ;;
  *)
    echo "usage: $0 [start|install|status|stop|teardown]" >&2
    exit 2
    ;;
esac
