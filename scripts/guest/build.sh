#!/usr/bin/env bash
# Builds the real-VM test's guest into OUTDIR (default .cache/guest): an uncompressed
# Debian kernel (PVH boot: no in-guest xz decompression under TCG, ~3.5 s to boot instead
# of ~8) and a busybox initramfs with the virtio modules and scripts/guest/init.sh.
# Idempotent: does nothing when OUTDIR is complete. Needs the Debian mirror once (apt-get
# download of the kernel package); the packages come from scripts/install-deps.sh guest.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(mkdir -p "${1:-$HERE/../../.cache/guest}" && cd "${1:-$HERE/../../.cache/guest}" && pwd)
if [ -s "$OUT/vmlinux" ] && [ -s "$OUT/initrd.gz" ] && [ "$OUT/initrd.gz" -nt "$HERE/init.sh" ] && [ "$OUT/initrd.gz" -nt "$0" ]; then exit 0; fi
cd "$OUT"
# The kernel linux-image-amd64 points at (6.1.0-N-amd64 on Debian 12).
KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
KVER=${KPKG#linux-image-}
if [ ! -s kernel.deb ]; then
  apt-get download "$KPKG" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$KPKG" >/dev/null; }
  mv "${KPKG}"_*.deb kernel.deb
fi
# Only the kernel image and the modules init.sh loads (the whole package unpacks to ~400 MB):
# virtio block and net, and ext4 with what it needs (the guest's file-system mode, mode=fs).
rm -rf kpkg && mkdir kpkg
dpkg-deb --fsys-tarfile kernel.deb | tar -x -C kpkg --wildcards './boot/vmlinuz-*' '*/drivers/virtio/virtio*.ko' '*/drivers/block/virtio_blk.ko' \
  '*/net/core/failover.ko' '*/drivers/net/net_failover.ko' '*/drivers/net/virtio_net.ko' \
  '*/fs/ext4/ext4.ko' '*/fs/jbd2/jbd2.ko' '*/fs/mbcache.ko' '*/lib/crc16.ko' '*/crypto/crc32c_generic.ko'
# vmlinuz carries the kernel as an xz stream: take it out for a PVH boot of the ELF.
/usr/bin/python3 - "kpkg/boot/vmlinuz-$KVER" vmlinux <<'PY'
import lzma, sys
d = open(sys.argv[1], "rb").read()
i = d.find(b"\xfd7zXZ\x00")
open(sys.argv[2], "wb").write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]))
PY
M=kpkg/lib/modules/$KVER/kernel
rm -rf initrd && mkdir -p initrd/{bin,dev,proc,sys,run,lib/modules}
cp /bin/busybox initrd/bin/ && ln -s busybox initrd/bin/sh
cp $M/drivers/virtio/{virtio_ring,virtio,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_pci}.ko $M/drivers/block/virtio_blk.ko \
  $M/net/core/failover.ko $M/drivers/net/{net_failover,virtio_net}.ko \
  $M/fs/ext4/ext4.ko $M/fs/jbd2/jbd2.ko $M/fs/mbcache.ko $M/lib/crc16.ko $M/crypto/crc32c_generic.ko initrd/lib/modules/
cp "$HERE/init.sh" initrd/init && chmod +x initrd/init
# No devtmpfs mount before /init runs: /dev/console must be in the archive.
mknod -m 600 initrd/dev/console c 5 1
mknod -m 666 initrd/dev/null c 1 3
(cd initrd && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -9 > initrd.gz
rm -rf kpkg initrd
echo "guest built in $OUT (kernel $KVER)"
