#!/usr/bin/env bash
# Boot the default image two ways under QEMU (TCG, same kernel, same QEMU
# settings, same package set) and compare:
#   A) cairn: vmlinuz + initrd.img (Rust /init) + root slot a of disk.raw
#   B) stock Debian: mmdebstrap of the same packages and the same kernel
#      package version, ext4 root, initramfs-tools' initrd
# For each boot it reads the serial console and reports
#   * initrd time: kernel timestamp of "Run /init as init process" to the
#     first systemd message ("running in system mode"), both from kmsg;
#   * multi-user: kernel timestamp of systemd's "Reached target
#     multi-user.target" (systemd logs to kmsg: systemd.log_target=kmsg);
#   * then the phases on the way (systemd's start, sysinit.target,
#     systemd-resolved's start, basic.target, etcd's start), read back from
#     the consoles it keeps in BENCH_DIR ({cairn,debian}-N.log).
# Boots alternate A, B, A, B, ... (RUNS each, default 3) so that machine
# load affects both alike; medians are printed with the ratio.
# The same units are enabled on both sides: the Debian tree gets what its
# packages' postinsts enable, plus networkd and resolved as in cairn's
# definition, and its Docker units are made to match cairn's (socket
# activation, as on CoreOS): docker.socket enabled, docker.service and
# containerd.service not started at boot (a customize-hook below). A tree
# cached in BENCH_DIR from before that hook (no debian.units stamp) is made
# again. Debian's SSH host keys are made at install (openssh-server's
# postinst); cairn's on its first boot, the RSA one after multi-user: the
# first cairn boot runs until that unit says it is done, so the later boots
# of both are those of a machine that has its keys.
# Usage: bash bench/boot-vs-debian.sh   (as root; installs mmdebstrap,
# qemu-system-x86 and e2fsprogs if missing). Mirror: this machine's apt
# sources.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/tmp/cairn-bench-boot}
runs=${RUNS:-3}
mkdir -p "$work"
for p in mmdebstrap qemu-system-x86 e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends "$p"; }
done

cargo build --release -q
cairn=${CARGO_TARGET_DIR:-target}/release/cairn
$cairn build images/default.yaml -o "$work/cairn" >/dev/null

# The stock tree: the definition's packages, the kernel package pinned to
# the lock's version, networkd with the same DHCP file as cairn's overlay.
read -r kpkg kver < <(python3 - <<'PY'
import re
lock = open("images/default.lock").read()
m = re.search(r"- name: (linux-image-[0-9][^\n]*-amd64)\n  version: ([^\n]+)", lock)
print(m.group(1), m.group(2).strip("'"))
PY
)
pkgs=$(python3 - <<'PY'
import re
text = open("images/default.yaml").read()
m = re.search(r"^packages:\n((?:  - .*\n)+)", text, re.M)
print(",".join(l.strip()[2:].split("#")[0].strip() for l in m.group(1).splitlines()))
PY
)
# the units hook the cached tree was made with (see the header)
units_stamp="docker.socket; not docker.service containerd.service"
if [ ! -f "$work/debian.ext4" ] || [ "$(cat "$work/debian.units" 2>/dev/null)" != "$units_stamp" ]; then
  rm -rf "$work/debian-root" "$work/debian.units"
  mmdebstrap --variant=required --include="$pkgs,$kpkg=$kver,initramfs-tools" \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
    --customize-hook='echo debian > "$1/etc/hostname"' \
    --customize-hook="cp images/default.overlay/etc/systemd/network/80-dhcp.network \"\$1/etc/systemd/network/\"" \
    --customize-hook='chroot "$1" systemctl enable systemd-networkd systemd-resolved' \
    --customize-hook='chroot "$1" systemctl disable docker.service containerd.service' \
    --customize-hook='chroot "$1" systemctl enable docker.socket' \
    --customize-hook='for u in docker.service containerd.service; do ! chroot "$1" systemctl -q is-enabled $u || { echo "$u still enabled" >&2; exit 1; }; done' \
    bookworm "$work/debian-root" >/dev/null 2>&1
  cp "$work"/debian-root/boot/vmlinuz-* "$work/debian-vmlinuz"
  cp "$work"/debian-root/boot/initrd.img-* "$work/debian-initrd.img"
  mkfs.ext4 -q -F -L root -d "$work/debian-root" "$work/debian.ext4" 4G
  echo "$units_stamp" > "$work/debian.units"
fi
cmp -s "$work/debian-vmlinuz" "$work/cairn/vmlinuz" ||
  echo "note: the two kernels differ (different builds of $kpkg)"

python3 - "$work" "$runs" <<'PY'
import os, re, shutil, statistics, subprocess, sys, time
work, runs = sys.argv[1], int(sys.argv[2])
common = "console=ttyS0,115200 panic=10 systemd.log_target=kmsg printk.devkmsg=on"
def boot(kind, n):
    if kind == "cairn":
        disk = f"{work}/cairn-disk.raw"
        if n == 0:
            shutil.copy(f"{work}/cairn/disk.raw", disk)
        kernel, initrd = f"{work}/cairn/vmlinuz", f"{work}/cairn/initrd.img"
        append = f"cairn.slot=a systemd.gpt_auto=0 {common}"
    else:
        disk = f"{work}/debian-disk.raw"
        if n == 0:
            shutil.copy(f"{work}/debian.ext4", disk)
        kernel, initrd = f"{work}/debian-vmlinuz", f"{work}/debian-initrd.img"
        append = f"root=/dev/vda rw {common}"
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "2048",
           "-smp", "2", "-display", "none", "-no-reboot", "-serial", "stdio",
           "-monitor", "none", "-kernel", kernel, "-initrd", initrd, "-append", append,
           "-drive", f"file={disk},if=virtio,format=raw",
           "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    run_init = sysmode = reached = None
    log = []
    logf = open(f"{work}/{kind}-{n}.log", "w")
    try:
        for raw in p.stdout:
            line = raw.decode(errors="replace")
            log.append(line)
            logf.write(line); logf.flush()
            ts = re.match(r"\[\s*(\d+\.\d+)\]", line)
            if ts and "Run /init as init process" in line:
                run_init = float(ts.group(1))
            if ts and sysmode is None and "running in system mode" in line:
                sysmode = float(ts.group(1))
            if ts and "systemd[1]: Reached target multi-user.target" in line:
                reached = (sysmode - run_init, float(ts.group(1)))
                if not (kind == "cairn" and n == 0):
                    return reached
            # cairn's first boot makes the SSH RSA host key after
            # multi-user (seconds of CPU, at idle priority) and says so on
            # the console: let it finish,
            # so that the later boots, like Debian's (keys made at install),
            # are those of a machine that has its keys
            if reached and "cairn: SSH RSA host key made" in line:
                return reached
            if time.monotonic() - t0 > 600:
                if reached:
                    return reached
                break
    finally:
        p.kill(); p.wait()
    open(f"{work}/{kind}-failed.log", "w").writelines(log)
    sys.exit(f"{kind} boot {n} did not reach multi-user (log in {work}/{kind}-failed.log)")
res = {"cairn": [], "debian": []}
# boot 0 of each is the first boot (cairn formats its state partition);
# it is reported apart and left out of the medians.
first = {}
for n in range(runs + 1):
    for kind in ("cairn", "debian"):
        r = boot(kind, n)
        print(f"{kind:6} boot {n}: initrd {r[0]:6.2f} s   multi-user {r[1]:6.1f} s", flush=True)
        (res[kind].append(r) if n else first.__setitem__(kind, r))
med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
print()
print(f"first boot: cairn initrd {first['cairn'][0]:.2f} s, multi-user {first['cairn'][1]:.1f} s; "
      f"debian initrd {first['debian'][0]:.2f} s, multi-user {first['debian'][1]:.1f} s")
print(f"median of {runs} later boots:")
print(f"  initrd time   cairn {med['cairn'][0]:6.2f} s   debian {med['debian'][0]:6.2f} s   ratio (debian/cairn) {med['debian'][0]/med['cairn'][0]:.2f}x")
print(f"  multi-user    cairn {med['cairn'][1]:6.1f} s   debian {med['debian'][1]:6.1f} s   ratio (debian/cairn) {med['debian'][1]/med['cairn'][1]:.2f}x")

# where the time goes, from the consoles of the later boots (kernel
# timestamps, median and range)
marks = {
    "systemd": "running in system mode",
    "sysinit": "systemd[1]: Reached target sysinit.target",
    "basic": "systemd[1]: Reached target basic.target",
    "resolved_start": "systemd[1]: Starting systemd-resolved.service",
    "resolved_ready": "systemd[1]: Started systemd-resolved.service",
    "etcd_start": "systemd[1]: Starting etcd.service",
    "etcd_ready": "systemd[1]: Started etcd.service",
}
def phases(path):
    seen = {}
    for line in open(path, errors="replace"):
        ts = re.match(r"\[\s*(\d+\.\d+)\] (.*)", line)
        if ts:
            for k, pat in marks.items():
                if pat in ts.group(2):
                    seen.setdefault(k, float(ts.group(1)))
    return seen
rows = [
    ("systemd starts", lambda p: p["systemd"]),
    ("systemd to sysinit.target", lambda p: p["sysinit"] - p["systemd"]),
    ("systemd-resolved start to ready", lambda p: p["resolved_ready"] - p["resolved_start"]),
    ("basic.target", lambda p: p["basic"]),
    ("etcd start to ready", lambda p: p["etcd_ready"] - p["etcd_start"]),
]
seen = {k: [phases(f"{work}/{k}-{n}.log") for n in range(1, runs + 1)] for k in res}
print("phases, median (range) of the later boots:")
for name, f in rows:
    cells = []
    for kind in ("cairn", "debian"):
        try:
            v = [f(p) for p in seen[kind]]
            cells.append(f"{kind} {statistics.median(v):5.2f} s ({min(v):.2f}-{max(v):.2f})")
        except KeyError as e:
            cells.append(f"{kind} (no {e.args[0]} on a console)")
    print(f"  {name:32} " + "   ".join(cells))
PY
