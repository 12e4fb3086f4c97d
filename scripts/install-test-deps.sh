#!/usr/bin/env bash
# Debian packages the tests and benchmarks drive as real processes:
#   libnbd-bin (nbdinfo, nbdcopy, nbdsh), python3-libnbd (nbdsh's bindings),
#   qemu-utils (qemu-img, qemu-io, qemu-nbd), nbdkit (a peer server), fio (nbd engine),
#   openssh-server + openssh-client (the ssh:// transport, tested against a real sshd),
#   qemu-system-x86 + busybox-static (the real-VM migration test: a TCG guest, its initramfs),
#   xen-utils-4.17 (Debian's real xl: on a host without Xen it must fail the way we name),
#   bind9 + bind9-dnsutils (a real named for dynamic DNS; nsupdate, dig), iproute2 and
#   iputils-ping (the network redirect and its "does the VM answer at its new address"),
#   librsvg2-bin (rsvg-convert renders the --report timeline in its test),
#   e2fsprogs (mkfs.ext4, e2fsck and debugfs for the ext4 guest's test),
#   zstd (the migrate bench's physical limit: zstd -19 of the image's data),
#   systemd (systemd-analyze scores the installed unit's sandbox), openssl (the TLS test's CA),
#   libvirt-daemon + libvirt-daemon-driver-qemu + libvirt-clients (two real libvirtd for
#   --hypervisor libvirt; not libvirt-daemon-system, whose services the test starts itself).
set -euo pipefail
pkgs=(libnbd-bin python3-libnbd qemu-utils nbdkit fio openssh-server openssh-client qemu-system-x86 busybox-static xen-utils-4.17
  bind9 bind9-dnsutils iproute2 iputils-ping librsvg2-bin e2fsprogs zstd systemd openssl
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# libvirt's QEMU driver looks up its built-in user before it reads qemu.conf (which says
# root in the test): libvirt-daemon-system's postinst would create it; we do not install that.
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
