#!/usr/bin/env bash
# Time `bash .ci/run` as CI runs it on a fresh machine of the project's kind:
# a fresh clone of HEAD, empty cargo, package and test-image caches, and the
# machine image's own QEMU state (qemu-utils from backports, no
# qemu-system-x86, none of the test tools). As root; it purges the packages
# .ci/run installs and puts the backports qemu-utils back first.
#
#   bash bench/ci-fresh.sh [QEMU_UTILS_BACKPORTS_DEB]
#
# The .deb is the machine image's qemu-utils (1:10.0.2+ds-2+deb13u1~bpo12+1);
# without one it is fetched from the suite's backports on the mirror this
# machine's apt sources name. Logs and the time go to /tmp/ci-fresh/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=/tmp/ci-fresh
rm -rf "$work" && mkdir -p "$work"
export DEBIAN_FRONTEND=noninteractive

# --- the machine image's state
apt-get purge -y -q qemu-system-x86 qemu-system-common qemu-system-data qemu-system-gui \
  ovmf ipxe ipxe-qemu seabios etcd-server etcd-client atftp tftp-hpa dnsmasq-base \
  squashfs-tools mtools >/dev/null 2>&1 || true
deb=${1:-}
if [ -z "$deb" ]; then
  mirror=$(apt-get indextargets --format '$(SITE)' 'Identifier: Packages' | head -1)
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
  echo "deb $mirror ${suite}-backports main" > /etc/apt/sources.list.d/ci-fresh-bpo.list
  apt-get update -q >/dev/null
  (cd "$work" && apt-get download "qemu-utils/${suite}-backports")
  rm /etc/apt/sources.list.d/ci-fresh-bpo.list
  apt-get update -q >/dev/null
  deb=$(ls "$work"/qemu-utils_*.deb)
fi
dpkg -i "$deb" >/dev/null
echo "qemu-utils now: $(dpkg-query -W -f='${Version}' qemu-utils)"

# --- a fresh clone with empty caches
git clone -q "$repo" "$work/clone"
export CARGO_HOME="$work/cargo-home" XDG_CACHE_HOME="$work/cache" CI=true
mkdir -p "$CARGO_HOME"
start=$(date +%s)
set +e
(cd "$work/clone" && bash .ci/run) >"$work/ci.log" 2>&1 </dev/null
rc=$?
set -e
end=$(date +%s)
echo "bash .ci/run exited $rc after $((end - start)) s" | tee "$work/result"
tail -40 "$work/ci.log"
