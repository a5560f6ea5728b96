#!/usr/bin/env bash
# Installs Open MPI (launcher and headers) and clang (the `mpi` crate generates its bindings with it) from
# the distribution when they are missing: what the `mpi` build and its data-parallel tests need (and
# iproute2, for the test that makes two hosts with network namespaces).
set -euo pipefail
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin)
[ -e /usr/include/x86_64-linux-gnu/mpi/mpi.h ] || [ -e /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h ] \
  || need+=(libopenmpi-dev)
command -v clang >/dev/null || need+=(clang)
command -v ip >/dev/null || need+=(iproute2)
"$(dirname "$0")/apt-install.sh" ${need[@]+"${need[@]}"}
mpirun --version | head -1
