#!/usr/bin/env bash
# Two "hosts" on this machine for multi-host MPI tests: network namespaces segtrain-h1 (10.77.0.1)
# and segtrain-h2 (10.77.0.2) joined by a veth pair (st-h1 <-> st-h2), each with its own loopback.
# MPI traffic between them crosses a real TCP link that tc can shape. Needs root and iproute2.
#
#   scripts/netns-hosts.sh up                 # create (fails if they exist; `down` first)
#   scripts/netns-hosts.sh shape 1gbit [0.5ms]  # limit both directions: tbf rate (+ netem delay if the kernel has it)
#   scripts/netns-hosts.sh unshape            # remove the limit
#   scripts/netns-hosts.sh exec h1|h2|ADDR CMD...   # run CMD on a host (also: scripts/netns-rsh-agent.sh)
#   scripts/netns-hosts.sh status
#   scripts/netns-hosts.sh down               # delete both namespaces (and the veth pair with them)
#
# Nothing outside the two namespaces changes: no address, route or /etc/hosts entry is added to the
# machine, and traffic between the hosts never leaves the veth pair.
set -euo pipefail

ns1=segtrain-h1; ns2=segtrain-h2
if1=st-h1; if2=st-h2
addr1=10.77.0.1; addr2=10.77.0.2; prefix=24

die() { echo "netns-hosts: error: $*" >&2; exit 1; }

namespace_of() {
  case "$1" in
    h1|"$ns1"|"$addr1") echo "$ns1" ;;
    h2|"$ns2"|"$addr2") echo "$ns2" ;;
    *) die "unknown host '$1' (h1, h2, $addr1, $addr2)" ;;
  esac
}

exists() { ip netns list | grep -qw "$1"; }

up() {
  command -v ip >/dev/null || die "ip not found (apt-get install iproute2)"
  exists "$ns1" && die "$ns1 exists already (scripts/netns-hosts.sh down first)"
  exists "$ns2" && die "$ns2 exists already (scripts/netns-hosts.sh down first)"
  ip netns add "$ns1"
  ip netns add "$ns2"
  # Created inside h1 and moved, so no interface ever appears in the machine's own namespace.
  ip -n "$ns1" link add "$if1" type veth peer name "$if2" netns "$ns2"
  ip -n "$ns1" addr add "$addr1/$prefix" dev "$if1"
  ip -n "$ns2" addr add "$addr2/$prefix" dev "$if2"
  for ns in "$ns1" "$ns2"; do ip -n "$ns" link set lo up; done
  ip -n "$ns1" link set "$if1" up
  ip -n "$ns2" link set "$if2" up
  # Wait until h1 reaches h2 over TCP-capable IP (link up, no duplicate-address delay for IPv4).
  local _
  for _ in $(seq 1 50); do
    if ip -n "$ns1" route get "$addr2" >/dev/null 2>&1 && ip -n "$ns1" link show "$if1" | grep -q "state UP"; then
      echo "netns-hosts: $ns1 ($addr1, $if1) <-> $ns2 ($addr2, $if2) up"
      return 0
    fi
    sleep 0.1
  done
  die "the veth link did not come up"
}

shape() {
  local rate=${1:?rate, e.g. 1gbit} delay=${2:-}
  local ns dev
  for pair in "$ns1:$if1" "$ns2:$if2"; do
    ns=${pair%%:*}; dev=${pair#*:}
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    if [ -n "$delay" ] && tc -n "$ns" qdisc add dev "$dev" root netem rate "$rate" delay "$delay" 2>/dev/null; then
      continue
    fi
    # Token bucket: the rate, with a burst of ~1 ms of traffic (at least 64 KiB) and room for 50 ms of queue.
    tc -n "$ns" qdisc add dev "$dev" root tbf rate "$rate" burst 256kb latency 50ms
  done
  tc -n "$ns1" qdisc show dev "$if1" | head -1 | sed "s/^/netns-hosts: $if1: /"
  if [ -n "$delay" ] && ! tc -n "$ns1" qdisc show dev "$if1" | grep -q netem; then
    echo "netns-hosts: note: this kernel has no netem qdisc; the delay $delay is not applied (rate only, tbf)"
  fi
}

unshape() {
  tc -n "$ns1" qdisc del dev "$if1" root 2>/dev/null || true
  tc -n "$ns2" qdisc del dev "$if2" root 2>/dev/null || true
}

down() {
  local ns
  for ns in "$ns1" "$ns2"; do
    if exists "$ns"; then ip netns del "$ns"; fi
  done
  echo "netns-hosts: down"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  up) up ;;
  down) down ;;
  shape) shape "$@" ;;
  unshape) unshape ;;
  exec)
    # The arguments stay as they are (no shell re-parsing); the host gets its own name (UTS namespace).
    host=${1:?host}; shift; ns=$(namespace_of "$host")
    exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$ns" "$@" ;;
  status)
    for ns in "$ns1" "$ns2"; do
      if exists "$ns"; then echo "== $ns"; ip -n "$ns" -br addr; tc -n "$ns" qdisc show | grep -v "dev lo"; else echo "== $ns: absent"; fi
    done ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 64 ;;
esac
