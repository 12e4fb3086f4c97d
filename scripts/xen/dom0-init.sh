#!/bin/sh
# /init of the nested-Xen test's dom0 (scripts/xen/build.sh): one Xen host that plays both
# ends of a migration, as the test's two hosts would, with the exact commands an operator
# runs on a Xen host:
#   A: wanmig serve (the domU's disk, /data/src.img), nbd-client -> /dev/nbd0, xl create (phy:/dev/nbd0)
#   B: wanmig dest --hypervisor xl (into /data/dst.img), attached as /dev/nbd1 by the receiving
#      command, which then runs xl migrate-receive -p
#   A: wanmig source --hypervisor xl --xl-ssh "" --xl-host "<attach nbd1> xl migrate-receive -p"
#      --xl-config (the same domU with phy:/dev/nbd1)
# /data is the test's disk (virtio, ext4) with the compiled wanmig on it; the images stay
# there for the host to check after QEMU exits. Lines for the test start with "@@ ", the
# files it needs are printed with a prefix each (SRC, DST, SERVE, CONA, CONB).
export PATH=/sbin:/bin:/usr/lib/xen-4.17/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/usr/lib/xen-4.17/lib/x86_64-linux-gnu
up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "@@ $* (dom0 uptime $(up))"; }
fail() { mark "FAIL $*"; finish; }
dump() { [ -f "$2" ] && sed "s/^/$1 /" "$2"; }
finish() {
  dump SERVE /tmp/serve.log; dump DESTLOG /tmp/dest.log; dump SRCLOG /tmp/source.log
  dump SRC /tmp/source.out; dump DST /tmp/dest.out
  for f in /var/log/xen/console/guest-domu.log /var/log/xen/console/guest-domu--incoming.log; do [ -f "$f" ] && echo "@@ console $f"; done
  dump CONA /var/log/xen/console/guest-domu.log; dump CONB /var/log/xen/console/guest-domu--incoming.log
  # Bounded: before xenstored runs, xl would wait for it for ever.
  timeout 20 xl destroy domu 2>/dev/null
  timeout 10 nbd-client -d /dev/nbd1 2>/dev/null; timeout 10 nbd-client -d /dev/nbd0 2>/dev/null
  kill $(pidof wanmig) 2>/dev/null; sleep 1
  sync; umount /data
  mark all-done
  reboot -f
}
# Waits up to $2 seconds for the shell test $1.
waitfor() { n=0; while ! eval "$1"; do n=$((n + 1)); [ $n -ge $(($2 * 10)) ] && return 1; sleep 0.1; done; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
# What udev would make: xl's hotplug scripts lock through /dev/stdin.
ln -s /proc/self/fd /dev/fd; ln -s /proc/self/fd/0 /dev/stdin; ln -s /proc/self/fd/1 /dev/stdout; ln -s /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /tmp
mark dom0-init
for m in xen-privcmd xenfs xen-evtchn xen-gntdev xen-gntalloc xen-blkback virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
  virtio_pci virtio_blk crc16 crc32c_generic mbcache jbd2 ext4; do
  insmod /lib/modules/$m.ko || echo "insmod $m failed"
done
# No partitions on NBD devices: nothing reads them when they are attached.
insmod /lib/modules/nbd.ko nbds_max=4 max_part=0 || echo "insmod nbd failed"
mount -t xenfs xenfs /proc/xen
ip link set lo up
waitfor '[ -b /dev/vda ]' 10 || fail "no data disk"
mount -t ext4 /dev/vda /data || fail "cannot mount the data disk"
xenstored --pid-file /run/xenstored.pid
xen-init-dom0 >/dev/null
# Timestamps on the domU's console lines (dom0's clock): the guest's view of the move.
xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console --timestamp=guest
echo "@@ xen_version $(xl info | sed -n 's/^xen_version *: *//p')"
mark xen-up
W=/data/wanmig
$W --version || fail "wanmig does not run in dom0"
mkdir -p /run/wanmig-a /run/wanmig-b
truncate -s 64M /data/src.img
# The domU's shape; /data/xen-test.env (optional: the test writes WANMIG_XEN_DOMU there) may
# change it for an experiment: DOMU_EXTRA (more kernel options), DOMU_MEM (MiB), DOMU_VCPUS,
# DOMU_CFG (more lines for xl's config, e.g. cpus = "1" or tsc_mode = "native").
DOMU_EXTRA= DOMU_MEM=128 DOMU_VCPUS=1 DOMU_CFG=
[ -f /data/xen-test.env ] && . /data/xen-test.env && echo "@@ xen-test.env: $(tr '\n' ' ' </data/xen-test.env)"
for side in a b; do
  dev=/dev/nbd0; [ $side = b ] && dev=/dev/nbd1
  cat > /domu/$side.cfg <<EOF
name = "domu"
type = "pvh"
kernel = "/domu/vmlinux"
ramdisk = "/domu/initrd.gz"
extra = "console=hvc0 quiet panic=-1 disk=xvda slp=0 $DOMU_EXTRA"
memory = $DOMU_MEM
vcpus = $DOMU_VCPUS
$DOMU_CFG
disk = [ "phy:$dev,xvda,w" ]
on_crash = "preserve"
on_reboot = "preserve"
EOF
done
# B's receiving command: attach B's disk as /dev/nbd1, then become xl migrate-receive. Its
# stdin and stdout are the migration stream: nothing else may write there.
cat > /domu/attach-b <<'EOF'
#!/bin/sh
{
  n=0; while [ ! -S /run/wanmig-b/domu.nbd ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  nbd-client -N disk0 -u /run/wanmig-b/domu.nbd /dev/nbd1 -b 4096
  echo "@@ attached /dev/nbd1 ($?) at $(cut -d' ' -f1 /proc/uptime)"
} >/dev/console 2>&1 </dev/null
exec "$@"
EOF
chmod +x /domu/attach-b

# ---- A: the domU on wanmig's disk ----
$W serve --name domu --image /data/src.img --run-dir /run/wanmig-a >/tmp/serve.log 2>&1 &
waitfor '[ -S /run/wanmig-a/domu.nbd ]' 60 || fail "serve did not start"
nbd-client -N disk0 -u /run/wanmig-a/domu.nbd /dev/nbd0 -b 4096 || fail "nbd-client /dev/nbd0"
mark serve-attached
# The block hotplug script traced: its failures say little through xl.
mv /etc/xen/scripts/block /etc/xen/scripts/block.real
printf '#!/bin/bash\nexec bash -x /etc/xen/scripts/block.real "$@" 2>>/tmp/block.trace\n' > /etc/xen/scripts/block
chmod +x /etc/xen/scripts/block
xl create /domu/a.cfg || { dump BLOCK /tmp/block.trace; dump HOTPLUG /var/log/xen/xen-hotplug.log; fail "xl create"; }
mark domu-created
waitfor 'grep -q "GUEST W i=30 " /var/log/xen/console/guest-domu.log 2>/dev/null' 180 || fail "the domU does not write"
mark domu-writing

# ---- B: the destination ----
$W dest --name domu --image /data/dst.img --run-dir /run/wanmig-b --listen 127.0.0.1:7000 --insecure --hypervisor xl --domain domu --json >/tmp/dest.out 2>/tmp/dest.log &
waitfor 'grep -q "listening on" /tmp/dest.log' 60 || fail "dest did not listen"

# ---- A: the migration ----
mark source-start
$W source --name domu --run-dir /run/wanmig-a --to 127.0.0.1:7000 --insecure --json --hypervisor xl --domain domu \
  --xl-ssh "" --xl-host "/domu/attach-b xl migrate-receive -p" --xl-config /domu/b.cfg >/tmp/source.out 2>/tmp/source.log
rc=$?
echo "@@ source-exit $rc"
echo "@@ source-mode $($W status --name domu --run-dir /run/wanmig-a --json | sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p')"
mark source-done
if [ $rc != 0 ]; then
  # Aborted: where is the domain? (running at A, its disk writable there, is the safe outcome.)
  echo "@@ domain-at-A $(xl list domu 2>/dev/null | awk 'NR==2{print $5}')"
  finish
fi
waitfor 'grep -q "the VM runs here (xl)" /tmp/dest.log' 60 || fail "the domain does not run at B"
mark domu-unpaused
# It carries on at B: 30 more writes.
waitfor 'grep -c "GUEST W" /var/log/xen/console/guest-domu--incoming.log 2>/dev/null | grep -qE "^([3-9][0-9]|[0-9]{3,})$"' 60 || mark "FAIL the domU does not write at B"
echo "@@ source-mode-after $($W status --name domu --run-dir /run/wanmig-a --json | sed -n 's/.*"mode":"\([a-z]*\)".*/\1/p')"
xl list
finish
