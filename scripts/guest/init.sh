#!/bin/busybox sh
# /init of the real-VM test's guest (busybox initramfs, Debian's kernel, TCG).
# It writes numbered records to random 4 KiB blocks of its disk, each with O_DIRECT, and
# prints one serial line per acknowledged write:  GUEST W i=<n> off=<block> dev=<disk> up=<uptime>
# (up: the guest's own clock, which goes on across a migration: the gaps it sees)
# so the host can check afterwards that the last write to every block is on the disk.
# It also re-reads one of its recent writes each round (the record of what it wrote lives
# in tmpfs, guest RAM, which migrates with the VM) and prints GUEST VERIFY-FAIL on a
# mismatch: a lost write shows inside the guest too.
# Kernel parameters: slp=S (pause per round, default 0.05); gip=ADDR/LEN and ggw=GATEWAY
# give eth0 an address and a default route, and start a TCP echo server on port 7777 (the
# open connection that must survive a migration); mode=fs runs the file-system workload
# instead of raw block writes (below); disks=2 writes to a second disk as well (/dev/vdb,
# every other write: its lines say dev=vdb); disk=xvda is a Xen domU's disk (xen-blkfront)
# in place of virtio's vda.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
SLP=0.05
GIP=
GGW=
MODE=block
DISKS=1
DISK=vda
for a in $(cat /proc/cmdline); do
  case "$a" in slp=*) SLP=${a#slp=} ;; gip=*) GIP=${a#gip=} ;; ggw=*) GGW=${a#ggw=} ;; mode=*) MODE=${a#mode=} ;; disks=*) DISKS=${a#disks=} ;; disk=*) DISK=${a#disk=} ;; esac
done
# Debian builds these drivers as modules; this order satisfies their dependencies.
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net"
[ "$DISK" = xvda ] && MODS=xen-blkfront
for m in $MODS; do
  insmod /lib/modules/$m.ko || echo "GUEST insmod $m failed"
done
n=0
while [ ! -b /dev/$DISK ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
[ -b /dev/$DISK ] || { echo "GUEST NO-DISK"; exec sleep 3600; }
DEVS=$DISK
if [ "$DISKS" = 2 ]; then
  DEVS="$DISK vdb"
  n=0
  while [ ! -b /dev/vdb ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n + 1)); done
  [ -b /dev/vdb ] || { echo "GUEST NO-DISK vdb"; exec sleep 3600; }
fi
ip link set lo up
if [ -n "$GIP" ]; then
  ip link set eth0 up && ip addr add "$GIP" dev eth0 && { [ -z "$GGW" ] || ip route add default via "$GGW"; } && echo "GUEST NET eth0 $GIP"
  nc -ll -p 7777 -e cat &
  # A talker: to each client, a line every 0.05 s, with nothing asked (a stream the VM serves).
  printf '#!/bin/sh\nwhile echo tick; do sleep 0.05; done\n' > /bin/ticker && chmod +x /bin/ticker
  nc -ll -p 7778 -e /bin/ticker &
fi
# bonnie=1 (mode=fs, mode=paper): a Bonnie-like writer on /mnt besides the workload: 64 MiB
# written sequentially, then rewritten in place in 64 KiB blocks, an fsync after each pass,
# over and over, printing GUEST BONNIE round=N. Random data: nothing compresses.
bonnie() {
  n=0
  while true; do
    n=$((n + 1))
    dd if=/dev/urandom of=/mnt/bonnie bs=1M count=64 conv=fsync status=none || echo "GUEST WRITE-ERR bonnie $n"
    dd if=/dev/urandom of=/mnt/bonnie bs=64k count=512 conv=notrunc,fsync status=none || echo "GUEST WRITE-ERR bonnie rewrite $n"
    echo "GUEST BONNIE round=$n"
  done
}

# mode=fs: a real file system (ext4, made by the host) used as an application would. Each
# step writes a new file of random data, appends a record to a log, deletes the file of 8
# steps before, runs sync, and only then prints
#   GUEST ACK i=<n> md5=<the new file's md5> 
# so the host can check that every acknowledged step is on the disk after the move.
if [ "$MODE" = fs ]; then
  for m in crc16 crc32c_generic mbcache jbd2 ext4; do insmod /lib/modules/$m.ko || echo "GUEST insmod $m failed"; done
  mkdir -p /mnt
  mount -t ext4 -o discard /dev/$DISK /mnt || { echo "GUEST MOUNT-FAIL"; exec sleep 3600; }
  mkdir -p /mnt/files
  grep -q bonnie=1 /proc/cmdline && bonnie &
  echo "GUEST BOOTED fs"
  i=0
  while true; do
    i=$((i + 1))
    dd if=/dev/urandom of=/mnt/files/f$i bs=4096 count=$((1 + i % 4)) status=none || echo "GUEST WRITE-ERR i=$i"
    echo "LOG $i" >> /mnt/log || echo "GUEST WRITE-ERR i=$i log"
    rm -f /mnt/files/f$((i - 8))
    if sync; then
      echo "GUEST ACK i=$i md5=$(md5sum < /mnt/files/f$i | cut -c1-32)"
    else
      echo "GUEST WRITE-ERR i=$i sync"
    fi
    sleep $SLP
  done
fi
# mode=paper: the paper's evaluation workloads (issue 17), on a real file system (ext4, made
# by the host), served on the guest's address (gip=) to clients outside:
#   static web  busybox httpd on port 80 serving /mnt/www, its access log appended to
#               /mnt/access.log (on the disk, as a web server's is);
#   dynamic web GET /cgi-bin/post?id=N appends "POST N" to /mnt/posts and fsyncs it before
#               it answers "posted N": an acknowledged post is on the disk (the paper's phpBB);
#   video       /mnt/www/video.bin (32 MiB, made at first boot); GET /cgi-bin/video streams it
#               at a constant bit rate, 32 KiB every 0.1 s (~2.6 Mbit/s, half the paper's
#               WAN), round and round until the client goes: a player's server, paced, so
#               a pause of the VM is a gap in what arrives (httpd's own /video.bin is as
#               fast as the link, and socket buffers would hide the pause);
#   diabolical  bonnie=1: the Bonnie-like writer besides (above).
if [ "$MODE" = paper ]; then
  for m in crc16 crc32c_generic mbcache jbd2 ext4; do insmod /lib/modules/$m.ko || echo "GUEST insmod $m failed"; done
  mkdir -p /mnt
  mount -t ext4 -o discard /dev/$DISK /mnt || { echo "GUEST MOUNT-FAIL"; exec sleep 3600; }
  mkdir -p /mnt/www/cgi-bin
  [ -f /mnt/www/index.html ] || { i=0; while [ $i -lt 64 ]; do echo "<p>static page line $i of the paper's web server</p>"; i=$((i + 1)); done > /mnt/www/index.html; }
  [ -f /mnt/www/video.bin ] || dd if=/dev/urandom of=/mnt/www/video.bin bs=1M count=32 status=none
  cat > /mnt/www/cgi-bin/post <<'CGI'
#!/bin/sh
id=${QUERY_STRING#id=}
case "$id" in ''|*[!0-9]*) printf 'Status: 400
Content-Type: text/plain

bad id
'; exit 0 ;; esac
if echo "POST $id" >> /mnt/posts && sync /mnt/posts; then
  printf 'Content-Type: text/plain

posted %s
' "$id"
else
  printf 'Status: 500
Content-Type: text/plain

not posted %s
' "$id"
fi
CGI
  cat > /mnt/www/cgi-bin/video <<'CGI'
#!/bin/sh
printf 'Content-Type: application/octet-stream

'
i=0
while dd if=/mnt/www/video.bin bs=32k skip=$((i % 1024)) count=1 status=none; do i=$((i + 1)); sleep 0.1; done
CGI
  chmod +x /mnt/www/cgi-bin/post /mnt/www/cgi-bin/video
  sync
  httpd -f -vv -p 80 -h /mnt/www 2>>/mnt/access.log &
  grep -q bonnie=1 /proc/cmdline && bonnie &
  echo "GUEST BOOTED paper"
  while true; do sleep 3600; done
fi
for d in $DEVS; do
  eval "BLOCKS_$d=$(($(cat /sys/block/$d/size) / 8))"
  mkdir -p /run/last/$d
done
mkdir -p /run/recent
eval "echo \"GUEST BOOTED blocks=\$BLOCKS_$DISK disks=$DISKS\""
i=0
while true; do
  i=$((i + 1))
  dev=$DISK
  [ "$DISKS" = 2 ] && [ $((i % 2)) = 0 ] && dev=vdb
  eval "blocks=\$BLOCKS_$dev"
  off=$(((RANDOM * 32768 + RANDOM) % blocks))
  if printf 'CNT %010d OFF %08d\n' $i $off | dd of=/dev/$dev bs=4096 seek=$off count=1 conv=sync,notrunc oflag=direct status=none; then
    echo $i > /run/last/$dev/$off
    echo "$dev $off" > /run/recent/$((i % 64))
    read -r up _ </proc/uptime
    echo "GUEST W i=$i off=$off dev=$dev up=$up"
  else
    echo "GUEST WRITE-ERR i=$i off=$off dev=$dev"
  fi
  # Re-read one of the last 64 writes from the device itself.
  k=$((RANDOM % (i < 64 ? i : 64)))
  recent=$(cat /run/recent/$(((i - k) % 64)) 2>/dev/null)
  if [ -n "$recent" ]; then
    vdev=${recent% *}
    voff=${recent#* }
    want=$(printf 'CNT %010d OFF %08d' "$(cat /run/last/$vdev/$voff)" "$voff")
    got=$(dd if=/dev/$vdev bs=4096 skip=$voff count=1 iflag=direct status=none | head -c 30)
    [ "$got" = "$want" ] || echo "GUEST VERIFY-FAIL i=$i dev=$vdev off=$voff want='$want' got='$got'"
  fi
  sleep $SLP
done
