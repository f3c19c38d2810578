#!/usr/bin/env bash
# Install the Debian packages for a single-node SLURM 22.05 cluster on localhost
# (slurmctld + slurmd + slurmdbd, munge, MariaDB for accounting).
# Idempotent: exits quickly when everything is already installed.
# Usage: sudo launchers/local-slurm/install.sh
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install.sh: all packages already installed (${PACKAGES[*]}); nothing to do ($(elapsed) s)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: ERROR: must run as root (apt-get install of: ${missing[*]})" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know a candidate for every
# missing package (fresh image with empty /var/lib/apt/lists, or stale lists).
need_update=0
for p in "${missing[@]}"; do
    cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then need_update=1; break; fi
done
if [ "$need_update" -eq 1 ]; then
    echo "install.sh: apt-get update"
    apt-get update -q
fi

echo "install.sh: installing ${missing[*]}"
# policy-rc.d: keep the packages' maintainer scripts from trying to start
# daemons (no systemd/init here; start.sh starts everything by hand).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

# A fetch of a stale list can 404; retry once after an update.
if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; then
    echo "install.sh: install failed; retrying after apt-get update" >&2
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi

for bin in slurmctld slurmd slurmdbd sbatch sacctmgr munged mariadbd; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || {
        echo "install.sh: ERROR: $bin not found after install" >&2; exit 1; }
done
echo "install.sh: installed in $(elapsed) s"
