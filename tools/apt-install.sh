#!/usr/bin/env bash
# Installs the given Debian packages (as root, or through sudo); the other install scripts call it with
# what they found missing.
set -euo pipefail
[ $# -gt 0 ] || exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
