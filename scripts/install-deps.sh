#!/usr/bin/env bash
# The Debian packages that tests and benchmarks drive as real processes, by purpose. Each
# group installs only what is missing (silent when everything is there), never asks apt to
# upgrade a package that is installed, and says which installed packages apt upgrades
# anyway because a new package needs a newer version of them (apt's own dependency rule).
#
#   scripts/install-deps.sh GROUP...   core, guest, libvirt, xen, dns, ansible, bench, or all
#
#   core:    libnbd-bin (nbdinfo, nbdcopy, nbdsh), python3-libnbd (nbdsh's bindings),
#            qemu-utils (qemu-img, qemu-io, qemu-nbd), nbdkit (a peer server), fio (nbd
#            engine), openssh-server + openssh-client (ssh:// against a real sshd), iproute2
#            and iputils-ping (the network redirect), librsvg2-bin (rsvg-convert renders the
#            --report timeline), e2fsprogs (mkfs.ext4, debugfs), zstd (the benches' physical
#            limit), systemd (systemd-analyze scores the installed unit), openssl (a TLS CA)
#   guest:   qemu-system-x86 + busybox-static (real TCG guests; also qemu-storage-daemon,
#            the migrate bench's peer)
#   libvirt: libvirt-daemon + libvirt-daemon-driver-qemu + libvirt-clients (two real
#            libvirtd; not libvirt-daemon-system, whose services the test starts itself)
#   xen:     xen-utils-4.17 (Debian's real xl: on a host without Xen it must fail the way we name)
#   dns:     bind9 + bind9-dnsutils (a real named for dynamic DNS; nsupdate, dig)
#   ansible: ansible-core (Debian's; the collection in ansible/ is tested with it)
#   bench:   iperf3 (the migrate bench's path ceiling); no test needs it, so `all` (what
#            the tests install) leaves it out
#
# `npm run demo` needs none of them; `npm test` installs all.
set -euo pipefail

packages_of() {
  case "$1" in
    core) echo libnbd-bin python3-libnbd qemu-utils nbdkit fio openssh-server openssh-client iproute2 iputils-ping librsvg2-bin e2fsprogs zstd systemd openssl ;;
    guest) echo qemu-system-x86 busybox-static ;;
    libvirt) echo libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients ;;
    xen) echo xen-utils-4.17 ;;
    dns) echo bind9 bind9-dnsutils ;;
    ansible) echo ansible-core ;;
    bench) echo iperf3 ;;
    *) echo "install-deps.sh: unknown group $1 (core, guest, libvirt, xen, dns, ansible, bench, all)" >&2; exit 2 ;;
  esac
}

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(all)
[ "${groups[*]}" = all ] && groups=(core guest libvirt xen dns ansible)

for g in "${groups[@]}"; do packages_of "$g" >/dev/null; done # an unknown group: exit 2 here
missing=()
for g in "${groups[@]}"; do
  for p in $(packages_of "$g"); do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
done

if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  # Say what apt would upgrade before it does: "Inst NAME [INSTALLED] (NEW ...)" lines.
  upgrades=$(apt-get install -s --no-upgrade --no-install-recommends "${missing[@]}" | awk '/^Inst [^ ]+ \[/ { print $2 }' | tr '\n' ' ')
  [ -z "$upgrades" ] || echo "install-deps: apt also upgrades, as the new packages require: $upgrades" >&2
  apt-get install -y -qq --no-upgrade --no-install-recommends "${missing[@]}"
fi

if [[ " ${groups[*]} " == *" libvirt "* ]]; then
  # libvirt's QEMU driver looks up its built-in user before it reads qemu.conf (which says
  # root in the test): libvirt-daemon-system's postinst would create it; we do not install that.
  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
  getent passwd libvirt-qemu >/dev/null || useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
fi
