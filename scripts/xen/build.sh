#!/usr/bin/env bash
# Builds the nested-Xen test's host into OUTDIR (default .cache/xen), from Debian packages
# only (apt-get download + dpkg-deb -x: nothing is installed on this machine):
#   xen              Debian's Xen 4.17 hypervisor, gunzipped (QEMU's multiboot -kernel takes an ELF)
#   vmlinuz          Debian's kernel, dom0's (PV)
#   dom0-initrd.gz   busybox, xl with xenstored and xenconsoled and their libraries, nbd-client
#                    (the kernel's NBD client, to give the domU wanmig's disk as phy:/dev/nbdN),
#                    the Xen, nbd, virtio and ext4 modules, and scripts/xen/dom0-init.sh as /init
#   domu-vmlinux     the same kernel, uncompressed (a PVH domU boots the ELF: no xz under TCG)
#   domu-initrd.gz   busybox, xen-blkfront and scripts/guest/init.sh (disk=xvda): the guest that
#                    writes numbered records to its disk and re-reads them, as in the QEMU tests
# wanmig itself is not in here: the test puts the compiled binary on dom0's data disk.
# Idempotent: does nothing when OUTDIR is newer than these scripts.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
GUEST_INIT=$HERE/../guest/init.sh
OUT=$(mkdir -p "${1:-$HERE/../../.cache/xen}" && cd "${1:-$HERE/../../.cache/xen}" && pwd)
fresh() { [ -s "$OUT/$1" ] && [ "$OUT/$1" -nt "$0" ] && [ "$OUT/$1" -nt "$HERE/dom0-init.sh" ] && [ "$OUT/$1" -nt "$GUEST_INIT" ]; }
if fresh xen && fresh vmlinuz && fresh dom0-initrd.gz && fresh domu-vmlinux && fresh domu-initrd.gz; then exit 0; fi
cd "$OUT"
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
KV=${KPKG#linux-image-}
# libxenctrl and libxenguest ship in libxenmisc4.17 on Debian 12.
PKGS=(xen-hypervisor-4.17-amd64 "$KPKG" xen-utils-4.17 xen-utils-common libxenmisc4.17 libxenstore4 libxentoollog1
  libxendevicemodel1 libxenforeignmemory1 libxengnttab1 libxencall1 libxenevtchn1 libxentoolcore1 libxenhypfs1 libyajl2
  xenstore-utils nbd-client libnl-3-200 libnl-genl-3-200)
mkdir -p debs
MISSING=()
for p in "${PKGS[@]}"; do ls debs/"${p}"_*.deb >/dev/null 2>&1 || MISSING+=("$p"); done
if [ ${#MISSING[@]} -gt 0 ]; then
  (cd debs && { apt-get download "${MISSING[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "${MISSING[@]}" >/dev/null; }; })
fi
R=$OUT/root
rm -rf "$R" && mkdir -p "$R"
for d in debs/*.deb; do dpkg-deb -x "$d" "$R"; done
zcat "$R/boot/xen-4.17-amd64.gz" > xen
cp "$R/boot/vmlinuz-$KV" vmlinuz
/usr/bin/python3 - "$R/boot/vmlinuz-$KV" domu-vmlinux <<'PY'
import lzma, sys
d = open(sys.argv[1], "rb").read()
i = d.find(b"\xfd7zXZ\x00")
open(sys.argv[2], "wb").write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]))
PY
M=$R/lib/modules/$KV/kernel

# ---- domU: the test guest, its disk on xen-blkfront ----
D=$OUT/domu-root
rm -rf "$D" && mkdir -p "$D"/{bin,dev,proc,sys,run,lib/modules}
cp /bin/busybox "$D/bin/" && ln -s busybox "$D/bin/sh"
cp "$M/drivers/block/xen-blkfront.ko" "$D/lib/modules/"
cp "$GUEST_INIT" "$D/init" && chmod +x "$D/init"
mknod -m 600 "$D/dev/console" c 5 1
mknod -m 666 "$D/dev/null" c 1 3
(cd "$D" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -9 > domu-initrd.gz

# ---- dom0 ----
I=$OUT/dom0-root
rm -rf "$I"
mkdir -p "$I"/{bin,sbin,proc,sys,dev,tmp,data,run/xen,run/xenstored,run/lock,etc,root,lib64,lib/x86_64-linux-gnu,usr/lib/x86_64-linux-gnu,var/lib/xen,var/lib/xenstored,var/log/xen/console,lib/modules,domu}
ln -s ../run "$I/var/run"
ln -s ../run/lock "$I/var/lock"
cp /bin/busybox "$I/bin/busybox"
for a in $(busybox --list); do [ -e "$I/bin/$a" ] || ln -s busybox "$I/bin/$a"; done
cp -a "$R/usr/lib/xen-4.17" "$I/usr/lib/"
cp -a "$R/usr/lib/x86_64-linux-gnu/." "$I/usr/lib/x86_64-linux-gnu/"
[ -d "$R/lib/x86_64-linux-gnu" ] && cp -a "$R/lib/x86_64-linux-gnu/." "$I/lib/x86_64-linux-gnu/"
cp -a "$R/etc/xen" "$I/etc/"
for b in xl xenstored xenconsoled xen-init-dom0; do ln -sf /usr/lib/xen-4.17/bin/$b "$I/sbin/$b"; done
cp "$R/sbin/nbd-client" "$I/sbin/"
for b in "$R"/usr/bin/xenstore*; do cp -a "$b" "$I/bin/"; done
# xl's hotplug scripts (/etc/xen/scripts/block for phy: disks) are bash scripts that lock
# with flock and compare files with stat -c %D: this host's bash, flock and stat (busybox
# has neither flock nor %D).
mkdir -p "$I/usr/bin"
cp /bin/bash "$I/bin/bash"
cp /usr/bin/flock /usr/bin/stat "$I/usr/bin/"
# The C libraries of everything we run there (xl's, nbd-client's, and wanmig's: libc, libm,
# libpthread, libdl), resolved here with the unpacked packages' libraries first.
LIBS=$R/usr/lib/x86_64-linux-gnu:$R/lib/x86_64-linux-gnu:$R/usr/lib/xen-4.17/lib/x86_64-linux-gnu
for bin in "$R/sbin/nbd-client" /bin/bash /usr/bin/flock /usr/bin/stat "$R"/usr/bin/xenstore-read "$R"/usr/lib/xen-4.17/bin/{xl,xenstored,xenconsoled,xen-init-dom0}; do
  LD_LIBRARY_PATH=$LIBS ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  case "$lib" in "$R"/*) ;; *) cp -Ln "$lib" "$I/lib/x86_64-linux-gnu/" ;; esac
done
for l in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libgcc_s.so.1; do cp -Ln "/lib/x86_64-linux-gnu/$l" "$I/lib/x86_64-linux-gnu/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$I/lib64/"
# Modules, loaded in this order by dom0-init.sh (there is no modules.dep).
for m in drivers/xen/xen-privcmd.ko drivers/xen/xenfs/xenfs.ko drivers/xen/xen-evtchn.ko drivers/xen/xen-gntdev.ko \
  drivers/xen/xen-gntalloc.ko drivers/block/xen-blkback/xen-blkback.ko drivers/block/nbd.ko \
  drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci_legacy_dev.ko \
  drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko lib/crc16.ko crypto/crc32c_generic.ko fs/mbcache.ko fs/jbd2/jbd2.ko fs/ext4/ext4.ko; do
  cp "$M/$m" "$I/lib/modules/"
done
cp domu-vmlinux "$I/domu/vmlinux"
cp domu-initrd.gz "$I/domu/initrd.gz"
cp "$HERE/dom0-init.sh" "$I/init" && chmod +x "$I/init"
mknod -m 600 "$I/dev/console" c 5 1
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 > dom0-initrd.gz
rm -rf "$R" "$D" "$I"
echo "nested Xen built in $OUT (Xen 4.17, kernel $KV)"
