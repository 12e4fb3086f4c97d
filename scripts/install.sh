#!/usr/bin/env bash
# Installs wanmig on a host: the binary, a systemd template unit that serves one VM's disk
# per instance (wanmig-serve@NAME), and bash completion.
#
#   npm run build && scripts/install.sh [BINARY]       (BINARY: default dist/wanmig)
#   echo 'IMAGE=/var/lib/vms/web1.img' > /etc/wanmig/web1.env
#   systemctl enable --now wanmig-serve@web1
#
# PREFIX (default /usr/local) and DESTDIR (a staging root, for packaging) are honoured.
set -euo pipefail
BIN=${1:-$(dirname "$0")/../dist/wanmig}
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
[ -x "$BIN" ] || { echo "install.sh: no wanmig binary at $BIN (run: npm run build)" >&2; exit 2; }
install -D -m 755 "$BIN" "$DESTDIR$PREFIX/bin/wanmig"
install -d -m 755 "$DESTDIR/etc/wanmig" "$DESTDIR/etc/systemd/system" "$DESTDIR/etc/bash_completion.d"
# Where images may live: the unit may write there and nowhere else but its run directory.
# An image elsewhere: `systemctl edit wanmig-serve@NAME`, [Service] ReadWritePaths=DIR.
IMAGE_DIRS=${WANMIG_IMAGE_DIRS:-/var/lib/wanmig /var/lib/vms /var/lib/libvirt/images}
RW=""
for d in $IMAGE_DIRS; do RW="$RW -$d"; done
cat > "$DESTDIR/etc/systemd/system/wanmig-serve@.service" <<UNIT
[Unit]
Description=wanmig serve: the disk of VM %i over NBD (/run/wanmig/%i.nbd)
After=local-fs.target network.target

[Service]
Type=simple
# IMAGE=/path/to/the/image (and any other flag in WANMIG_SERVE_ARGS)
EnvironmentFile=/etc/wanmig/%i.env
ExecStart=$PREFIX/bin/wanmig serve --name %i --image \${IMAGE} --run-dir /run/wanmig \$WANMIG_SERVE_ARGS
# SIGTERM: stop listening, flush and close the image, remove the sockets.
KillSignal=SIGTERM
Restart=on-failure
RuntimeDirectory=wanmig
RuntimeDirectoryPreserve=yes

# Sandbox. serve reads and writes one image and its state file beside it, and listens on
# unix sockets in /run/wanmig (TCP only with --nbd tcp:). It needs no capability as root
# over root's files, no device but a block-device image, no namespaces, no new privileges.
# Not MemoryDenyWriteExecute: Bun's JIT writes the code it runs.
ProtectSystem=strict
ReadWritePaths=/run/wanmig$RW
ProtectHome=read-only
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
DevicePolicy=closed
DeviceAllow=block-* rw
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
PrivateMounts=yes
PrivateNetwork=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
IPAddressDeny=any
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
UMask=0077

[Install]
WantedBy=multi-user.target
UNIT
"$DESTDIR$PREFIX/bin/wanmig" completion bash > "$DESTDIR/etc/bash_completion.d/wanmig"
if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "installed $PREFIX/bin/wanmig, wanmig-serve@.service and bash completion${DESTDIR:+ under $DESTDIR}"
