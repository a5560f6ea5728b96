#!/usr/bin/env bash
# Runs an MPI job across two hosts made on this machine: two network namespaces (`zlm-a`, `zlm-b`), each
# with its own hostname and one end of a veth pair (10.77.0.1 and 10.77.0.2), so the ranks talk over TCP
# between them as two machines on a LAN would. Open MPI's `mpirun` runs in host a and starts host b's
# daemon through `tools/netns-rsh.sh` (standing in for ssh). Needs root (ip netns, unshare).
#
#   tools/two-hosts.sh target/mpi/release/pretrain --preset micro …   # one rank on each host
#
# The namespaces are removed when the job ends.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
a=zlm-a b=zlm-b
cleanup() { ip netns del "$a" 2>/dev/null || true; ip netns del "$b" 2>/dev/null || true; }
cleanup
trap cleanup EXIT
ip netns add "$a"
ip netns add "$b"
ip link add va netns "$a" type veth peer name vb netns "$b"
ip -n "$a" addr add 10.77.0.1/24 dev va
ip -n "$b" addr add 10.77.0.2/24 dev vb
for ns in "$a" "$b"; do
  ip -n "$ns" link set lo up
done
ip -n "$a" link set va up
ip -n "$b" link set vb up

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ip netns exec "$a" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$a" \
  mpirun -np 2 --host 10.77.0.1:1,10.77.0.2:1 \
  --mca plm_rsh_agent "$here/netns-rsh.sh" \
  --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
  -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
  "$@"
