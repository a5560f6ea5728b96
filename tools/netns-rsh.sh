#!/usr/bin/env bash
# Open MPI's remote-start agent for tools/two-hosts.sh, standing in for ssh: `netns-rsh.sh HOST CMD…`
# runs CMD in the network namespace that plays HOST (10.77.0.N → zlm-a/zlm-b), under that host's name.
set -euo pipefail
host=$1
shift
case "$host" in
  10.77.0.1) ns=zlm-a ;;
  10.77.0.2) ns=zlm-b ;;
  *) echo "netns-rsh: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0"; exec sh -c "$1"' "$ns" "$*"
