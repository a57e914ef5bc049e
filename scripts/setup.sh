#!/usr/bin/env bash
# Installs everything Kiln needs on a fresh Debian 12 machine (run as root):
# the Debian packages used by Kiln and its tests, then the npm dependencies
# (which bring Node 26 and build the native addon).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  ca-certificates gcc libc6-dev make python3 git
  attr zstd jq
  crun runc
  busybox-static
  qemu-user-static binfmt-support openssh-client
  umoci skopeo oci-image-tool docker-registry
  docker.io
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x node_modules/.bin/node ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: installing npm dependencies"
  # npm ci rejects this npm's lock files (it wants optional packages of other platforms
  # that npm install does not record), so install from the lock file with npm install.
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent build:native >/dev/null
npm run --silent build:cli

# /dev/null must be the null device: tools (and Node's stdio 'ignore') write into it.
if [[ ! -c /dev/null ]]; then
  echo "setup: /dev/null is not a character device; recreating it"
  mknod -m 666 /dev/.null.kiln c 1 3 && mv -f /dev/.null.kiln /dev/null
fi

# The reference builder (docker's BuildKit) for differential tests and benchmarks:
# start Debian's dockerd when it is not running (there is no systemd here).
if ! /usr/bin/docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  mkdir -p /var/log
  nohup /usr/sbin/dockerd >/var/log/kiln-dockerd.log 2>&1 &
  for _ in $(seq 60); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.5; done
  /usr/bin/docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/kiln-dockerd.log" >&2; exit 1; }
fi
echo "setup: done ($(npx --no-install node --version))"
