#!/usr/bin/env bash
# An "ssh" for the namespace hosts of scripts/netns-hosts.sh: `netns-rsh-agent.sh HOST COMMAND...`
# runs COMMAND (a shell command line, as ssh would) inside HOST's network namespace. Open MPI uses
# it as its remote launcher (`--mca plm_rsh_agent scripts/netns-rsh-agent.sh`) to start its daemon
# (orted) on 10.77.0.2 the way it would over ssh on a real cluster.
set -euo pipefail
# ssh-style options before the host name (Open MPI may pass some) are ignored.
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
host=${1:?usage: netns-rsh-agent.sh HOST COMMAND...}
shift
case "$host" in
  h1|segtrain-h1|10.77.0.1) ns=segtrain-h1 ;;
  h2|segtrain-h2|10.77.0.2) ns=segtrain-h2 ;;
  *) echo "netns-rsh-agent: unknown host '$host'" >&2; exit 255 ;;
esac
# Its own UTS namespace too, so that the host also has its own name (as `hostname` and MPI report it).
exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns; $*"
