#!/usr/bin/env bash
# segtrain on a plain cluster reached over SSH (no batch system): Open MPI's mpirun starts its
# daemons on the hosts of a hostfile with ssh, then one rank per socket (default), each pinned to
# its socket's cores and running that many threads.
#
#   SEGTRAIN_HOSTFILE=cluster/mpirun/hostfile cluster/mpirun/run.sh [--] [segtrain train arguments]
#
# Everything after the script (an optional leading "--" is dropped) goes to `segtrain train`, after
# $SEGTRAIN_ARGS; `--out $SEGTRAIN_OUT --resume auto` are added unless given, so running the same
# command again after a stop continues the run. Stop it cleanly with SIGUSR1 to this script's
# process (it becomes mpirun, which forwards the signal to every rank): they checkpoint after the
# same step and the run exits 0.
#
# Environment:
#   SEGTRAIN_HOSTFILE        hostfile (default ./hostfile): one line per node, `NAME slots=RANKS_PER_NODE`
#   SEGTRAIN_RANKS_PER_NODE  "socket" (default: one rank per socket) or a number of ranks per node
#   SEGTRAIN_THREADS         threads per rank (default: cores per socket, or cores per node / ranks
#                            per node, read with lscpu on this machine: the nodes must be alike)
#   SEGTRAIN_BIND            core (default: each rank bound to its SEGTRAIN_THREADS cores) or none
#   SEGTRAIN_MPIRUN_ARGS     more mpirun arguments, split on spaces (e.g. "--mca btl_tcp_if_include eth1")
#   SEGTRAIN                 segtrain binary, the same path on every node (default: segtrain on PATH,
#                            else .build/release/segtrain under the current folder)
#   SEGTRAIN_OUT             output folder on a shared filesystem (default runs/cluster)
#
# The mapping: `--map-by ppr:1:socket:pe=T --bind-to core` = 1 process per resource "socket", each
# given T processing elements (cores) and bound to them. Ranks per node x T = cores per node. With
# SEGTRAIN_RANKS_PER_NODE=K it is `ppr:K:node:pe=T`. `--bind-to none` leaves placement to the OS.
set -euo pipefail

[ "${1:-}" = "--" ] && shift
user_args=()
# Split on blanks, no glob expansion.
[ -n "${SEGTRAIN_ARGS:-}" ] && read -r -a user_args <<<"$SEGTRAIN_ARGS"
user_args+=("$@")

hostfile=${SEGTRAIN_HOSTFILE:-hostfile}
[ -r "$hostfile" ] || { echo "run.sh: error: hostfile '$hostfile' not found (set SEGTRAIN_HOSTFILE; see cluster/mpirun/hostfile.example)" >&2; exit 1; }

bin=${SEGTRAIN:-}
if [ -z "$bin" ]; then
  if command -v segtrain >/dev/null 2>&1; then bin=$(command -v segtrain); else bin=$PWD/.build/release/segtrain; fi
fi
[ -x "$bin" ] || { echo "run.sh: error: segtrain binary not found ($bin): set SEGTRAIN or put segtrain on PATH" >&2; exit 1; }
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

per_node=${SEGTRAIN_RANKS_PER_NODE:-socket}
# Cores of this machine (taken as every node's): physical cores, per socket.
sockets=$(lscpu -p=SOCKET 2>/dev/null | grep -v '^#' | sort -u | wc -l)
cores=$(lscpu -p=SOCKET,CORE 2>/dev/null | grep -v '^#' | sort -u | wc -l)
[ "$sockets" -ge 1 ] || sockets=1
[ "$cores" -ge 1 ] || cores=$(nproc)
if [ "$per_node" = socket ]; then
  threads=${SEGTRAIN_THREADS:-$(( cores / sockets ))}
  map="ppr:1:socket"
else
  threads=${SEGTRAIN_THREADS:-$(( cores / per_node > 0 ? cores / per_node : 1 ))}
  map="ppr:$per_node:node"
fi
bind=${SEGTRAIN_BIND:-core}
if [ "$bind" = none ]; then
  mapping=(--map-by "$map" --bind-to none)
else
  mapping=(--map-by "$map:pe=$threads" --bind-to "$bind")
fi

out=""; has_resume=0
for ((i = 0; i < ${#user_args[@]}; i++)); do
  case "${user_args[i]}" in
    --out) out=${user_args[i + 1]:-} ;;
    --out=*) out=${user_args[i]#--out=} ;;
    --resume|--resume=*) has_resume=1 ;;
  esac
done
extra=()
[ -n "$out" ] || { out=${SEGTRAIN_OUT:-runs/cluster}; extra+=(--out "$out"); }
[ "$has_resume" -eq 1 ] || extra+=(--resume auto)

export SEGTRAIN_THREADS=$threads
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
more=()
[ -n "${SEGTRAIN_MPIRUN_ARGS:-}" ] && read -r -a more <<<"$SEGTRAIN_MPIRUN_ARGS"
cmd=(mpirun --hostfile "$hostfile" "${mapping[@]}" -x SEGTRAIN_THREADS "${more[@]}"
     "$bin" train "${extra[@]}" "${user_args[@]}")
echo "run.sh: ${cmd[*]}"
exec "${cmd[@]}"
