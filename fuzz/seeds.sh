#!/usr/bin/env bash
# Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/seed-* (the working corpus,
# not committed), from the project's own fixtures and examples plus a few hand-made packets.
# Idempotent: run it before `cargo fuzz run`; bench/fuzz.sh does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
corpus=$here/corpus

seed() { # seed TARGET NAME: stdin becomes corpus/TARGET/seed-NAME
    mkdir -p "$corpus/$1"
    cat > "$corpus/$1/seed-$2"
}
z() { head -c "$1" /dev/zero; }

# cloud_config: the cloud-config corpus the validator is tested on, cloudinit's fixtures, and shapes
# the parser bounds (anchors, merges, nesting), one gzip-compressed.
n=0
for f in "$root"/cloudconfig/tests/fixtures/corpus/* "$root"/../shared/corpus/cloud-config/* \
    "$root"/cloudinit/tests/fixtures/*.yaml; do
    [ -f "$f" ] || continue
    case $f in *.tsv) continue ;; esac
    n=$((n + 1))
    seed cloud_config "fixture-$n" < "$f"
done
printf '#cloud-config\nx: &a {k: v, l: [1, 2]}\ny: *a\nz:\n  <<: *a\n  m: [*a, *a]\n' | seed cloud_config anchors
printf '#cloud-config\nhostname: h\nusers:\n  - name: core\n    groups: [sudo, docker]\nwrite_files:\n  - path: /etc/x\n    permissions: "0644"\n    encoding: gz+b64\n    content: H4sIAAAAAAAAA8tIzcnJBwCGphA2BgAAAA==\ncoreos:\n  etcd2:\n    name: $public_ipv4\n    advertise-client-urls: http://$private_ipv4:2379\n  units:\n    - name: a.service\n      command: start\n      drop_ins: [{name: b.conf, content: "[Unit]"}]\n' | seed cloud_config fields
printf '#cloud-config\na: [[[[[[[[[[[[[[[[x]]]]]]]]]]]]]]]]\nb: {c: {d: {e: !!binary aGk=}}}\n' | seed cloud_config nesting
printf '#!/bin/sh\necho hi\n' | seed cloud_config script
printf '{"ignition": {"version": "3.0.0"}}' | seed cloud_config ignition
printf '#cloud-config\nhostname: gz\n' | gzip -9 | seed cloud_config gzip

# inventory: the example inventory (images and template exist in the target's fixture folder), with
# and without a request's query string after a NUL.
seed inventory lab < "$root/examples/lab.yaml"
{ cat "$root/examples/lab.yaml"; printf '\0rack=r1&platform=efi&mac=52-54-00-12-34-56&uuid=0A-B'; } | seed inventory lab-query
printf 'profiles:\n  - name: p\n    image: img\n    boot: disk-state\n    state_label: st\n    kernel_args: a=1 b\n    cloud_config: cloud/node.yaml.j2\n    transport: tftp\ngroups:\n  - name: e\n    profile: p\n    selector: {mac: "52:54:00:00:00:01", rack: r1}\n    metadata: {hostname: n1, role: r, ssh_authorized_keys: [k]}\n    etcd_cluster: {size: 3}\n\0mac=52%%3A54%%3A00%%3A00%%3A00%%3A01&rack=r1\n' | seed inventory small

# tftp_packet: a read request with iPXE's options, a write request, DATA, ACK, ERROR, OACK.
printf '\0\1undionly.kpxe\0octet\0blksize\0001468\0tsize\0000\0windowsize\00016\0timeout\0003\0' | seed tftp_packet rrq
printf '\0\2f\0netascii\0' | seed tftp_packet wrq
printf '\0\3\0\1hello' | seed tftp_packet data
printf '\0\4\0\1' | seed tftp_packet ack
printf '\0\5\0\1File not found\0' | seed tftp_packet error
printf '\0\6blksize\0001468\0tsize\00042\0' | seed tftp_packet oack

# dhcp_packet: PXE DHCPDISCOVERs (BIOS, UEFI, iPXE) and a PXE DHCPREQUEST to port 4011.
bootp() { # bootp XID-BYTE: the 236-byte BOOTREQUEST header (Ethernet, broadcast) and the cookie
    printf '\1\1\6\0\0\0\0\'"$1"'\0\0\200\0'
    z 16
    printf '\122\124\0\22\64\126'
    z 10
    z 192
    printf '\143\202\123\143'
}
pxe_class() { printf '\74\40PXEClient:Arch:0000%s:UNDI:002001' "$1"; }
{ bootp 1; printf '\65\1\1\135\2\0\0\136\3\1\2\1'; pxe_class 0; printf '\377'; } | seed dhcp_packet discover-bios
{ bootp 2; printf '\65\1\1\135\2\0\7\141\21\0'; z 16; pxe_class 7; printf '\377'; } | seed dhcp_packet discover-efi
{ bootp 3; printf '\65\1\1\135\2\0\0'; pxe_class 0; printf '\115\4iPXE\257\3\1\1\1\377'; } | seed dhcp_packet discover-ipxe
{ bootp 4; printf '\65\1\3\66\4\300\0\2\1\135\2\0\11'; pxe_class 9; printf '\377'; } | seed dhcp_packet request-4011

# discovery_request: what `etcd --discovery` does (size, self-registration, listing, waits), /new and
# hostile keys.
printf 'GET /@/_config/size\nPUT /@/m1 value=m1%%3Dhttp%%3A%%2F%%2F10.0.0.1%%3A2380\nGET /@?recursive=true&sorted=true\nGET /@?wait=true&waitIndex=1&recursive=true\nDELETE /@/m1?prevValue=x\n' | seed discovery_request etcd
printf 'GET /new?size=5\nPOST /new size=3\nGET /\nPUT /@/_config/size value=9\nPUT /@/d?dir=true\nPUT /@/d/k?prevExist=false value=v\nDELETE /@/d?dir=true&recursive=true\n' | seed discovery_request admin
printf 'GET /@/../x\nGET /@/a%%2Fb\nPUT /@/k?ttl=5 value=v\nGET /@?wait=yes\nPUT /@/k?prevIndex=x value=v\nGET /%%ff\n' | seed discovery_request hostile

# update_manifest: a manifest as `cairn build --sign` writes it, alone and with a signature line.
manifest='{
  "format": 1,
  "name": "default",
  "version": "1.1",
  "channel": "stable",
  "created": "2025-11-27T00:46:40Z",
  "expires": "2025-12-27T01:46:40Z",
  "parts": [
    {"kind": "rootfs", "path": "rootfs.squashfs", "size": 1000, "sha256": "'$(printf 'ab%.0s' {1..32})'"},
    {"kind": "kernel", "path": "vmlinuz", "size": 10, "sha256": "'$(printf 'cd%.0s' {1..32})'"},
    {"kind": "initrd", "path": "initrd.img", "size": 20, "sha256": "'$(printf 'ef%.0s' {1..32})'"}
  ]
}'
printf '%s\n' "$manifest" | seed update_manifest manifest
{ printf '%s\n\0' "$manifest"; printf 'ed25519 0123456789abcdef %s\n' "$(z 64 | base64 -w0)"; } | seed update_manifest signed
{ printf '%s\n\0' "$manifest"; printf '1.0~rc1^p2 2025-02-28T23:59:60Z\ncairn-ed25519 %s comment\n' "$(z 32 | base64 -w0)"; } | seed update_manifest keys-and-versions

# kernel_cmdline: what cairn's boot entries and iPXE scripts write.
printf 'initrd=pxe-initrd.img cairn.root=ram console=ttyS0,115200 panic=10 cloud-config-url=http://192.0.2.1:8080/cloud-config?mac=52-54-00-12-34-56\n' | seed kernel_cmdline pxe
printf 'BOOT_IMAGE=/vmlinuz cairn.slot=b cairn.state=label:cairn-state cairn.timeout=2.5 cairn.debug init=/sbin/init quiet "x=a b"\n' | seed kernel_cmdline disk
printf 'cairn.slot=A cairn.state=tmpfs cairn.root=disk cairn.debug=0 cairn.unknown=1 cloud_config_url="http://a/b c"' | seed kernel_cmdline quotes

# config_drive_metadata: an OpenStack meta_data.json as Nova writes it.
printf '{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "availability_zone": "nova", "hostname": "vm1.novalocal", "name": "vm1", "launch_index": 0, "public_keys": {"mykey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataKey a@b\\n", "zz": "ssh-rsa AAAAB3 z\\n"}, "meta": {"role": "web"}, "files": []}' | seed config_drive_metadata nova
printf '{"hostname": null, "public_keys": null}' | seed config_drive_metadata nulls

echo "seeds written under $corpus"
