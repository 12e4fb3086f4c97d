#!/usr/bin/python
# Moves one VM with `wanmig migrate --json`, run on the host where its disk is served.
# Idempotent: a VM whose disk moved away already (fenced here for good) or that is served at
# the target and not here reports ok. Check mode is wanmig's pre-flight (--dry-run).

from __future__ import annotations

DOCUMENTATION = r"""
module: migrate
short_description: Move a VM, its local disks included, to another host with wanmig
description:
  - Runs C(wanmig migrate NAME --to ssh://... --json) on the host where the VM's disk is served,
    and returns the figures of its C(done) event.
  - A VM already moved (its disk fenced here for good, or served at the target and not here)
    reports C(ok), not C(changed). A hand-off left unfinished by an earlier run is finished or
    rolled back, as C(wanmig migrate) does.
  - In check mode it runs the pre-flight checks only (C(--dry-run)) and changes nothing.
options:
  name: {description: The VM, as served here (C(wanmig serve --name)), type: str, required: true}
  to: {description: "The target host: ssh://[USER@]HOST[:PORT]", type: str, required: true}
  bin: {description: wanmig on this host, type: str, default: /usr/local/bin/wanmig}
  run_dir: {description: The run directory here, type: str, default: /run/wanmig}
  remote_run_dir: {description: The run directory there (default the same), type: str}
  remote_bin: {description: wanmig there, type: str, default: /usr/local/bin/wanmig}
  remote_images: {description: The image paths there, once per disk (default the same paths), type: list, elements: str, default: []}
  group: {description: "The host-wide group of moves (C(--group)): at most C(concurrency) run at once here, sharing C(bandwidth)", type: str}
  concurrency: {description: With group, moves of the group at once on this host, type: int, default: 2}
  bandwidth: {description: "The cap (C(--bandwidth)); with group, the group's budget shared by its moves: 200mbit", type: str}
  hypervisor: {description: Who moves the memory, type: str, choices: [none, qemu, xl, libvirt], default: none}
  qmp: {description: With qemu, the source QEMU's QMP socket (unix:PATH), type: str}
  remote_qmp: {description: With qemu, the destination QEMU's QMP socket there, type: str}
  migrate_uri: {description: With qemu, where the destination QEMU listens (tcp:HOST:PORT), type: str}
  domain: {description: With xl or libvirt, the domain, type: str}
  extra_args: {description: More flags for wanmig migrate, type: list, elements: str, default: []}
  ssh_command: {description: The ssh client wanmig uses (C(WANMIG_SSH)), type: str}
"""

RETURN = r"""
outcome: {description: "moved, already-moved, already-there, would-move (check mode), or failed", type: str, returned: always}
rc: {description: wanmig's exit code, type: int, returned: when wanmig migrate ran}
kind: {description: "On failure, what the exit code means: aborted-vm-runs-here (5), needs-attention (6), refused (3), peer-failure (4), usage (2), interrupted (130), internal (1)", type: str, returned: failure}
vm_runs_here: {description: "After a failure, whether the VM's disk is served and writable here (read from wanmig status, not inferred from the exit code)", type: bool, returned: failure}
done: {description: The done event of wanmig migrate --json (migrationTimeMs, downtimeMs, storageDowntimeMs, bytesOnWire, ...), type: dict, returned: changed}
checks: {description: The pre-flight checks, type: list, returned: when they ran}
state_before: {description: The VM's state here before (wanmig status's state), type: str, returned: always}
"""

import json
import shlex

from ansible.module_utils.basic import AnsibleModule

EXIT_KINDS = {
    1: "internal",
    2: "usage",
    3: "refused",
    4: "peer-failure",
    5: "aborted-vm-runs-here",
    6: "needs-attention",
    130: "interrupted",
}


def one_line(stderr):
    """wanmig's own one-line error (the last line that starts with 'wanmig:'), else the last line."""
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    mine = [l for l in lines if l.startswith("wanmig:")]
    return (mine or lines or ["(no message)"])[-1]


def events_of(stdout):
    out = []
    for line in stdout.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def ssh_url_parts(url):
    rest = url[len("ssh://"):].rstrip("/")
    user = None
    if "@" in rest:
        user, rest = rest.split("@", 1)
    port = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = tail[1:]
    elif ":" in rest:
        host, port = rest.rsplit(":", 1)
    else:
        host = rest
    return user, host, port


class Mover:
    def __init__(self, module):
        self.m = module
        self.p = module.params
        self.env = {"WANMIG_SSH": self.p["ssh_command"]} if self.p["ssh_command"] else {}

    def run(self, argv):
        return self.m.run_command(argv, environ_update=self.env)

    def status_here(self):
        rc, out, _ = self.run([self.p["bin"], "status", "--name", self.p["name"], "--run-dir", self.p["run_dir"], "--json"])
        return json.loads(out) if rc == 0 else None

    def status_there(self):
        user, host, port = ssh_url_parts(self.p["to"])
        ssh = shlex.split(self.p["ssh_command"] or "ssh") + ["-o", "BatchMode=yes"] + (["-p", port] if port else [])
        remote = [self.p["remote_bin"], "status", "--name", self.p["name"], "--run-dir", self.p["remote_run_dir"] or self.p["run_dir"], "--json"]
        rc, out, _ = self.run(ssh + [("%s@%s" % (user, host)) if user else host, "--", " ".join(shlex.quote(a) for a in remote)])
        try:
            return json.loads(out) if rc == 0 else None
        except ValueError:
            return None

    def runs_here_now(self):
        """After a failure, whether the VM's disk is writable here: read, not inferred from the exit code."""
        after = self.status_here()
        return bool(after) and after.get("state") == "serving"

    def migrate_argv(self):
        p = self.p
        argv = [p["bin"], "migrate", p["name"], "--to", p["to"], "--run-dir", p["run_dir"], "--remote-bin", p["remote_bin"], "--json"]
        if p["remote_run_dir"]:
            argv += ["--remote-run-dir", p["remote_run_dir"]]
        for image in p["remote_images"]:
            argv += ["--remote-image", image]
        if p["group"]:
            argv += ["--group", p["group"], "--concurrency", str(p["concurrency"])]
        if p["bandwidth"]:
            argv += ["--bandwidth", p["bandwidth"]]
        if p["hypervisor"] != "none":
            argv += ["--hypervisor", p["hypervisor"]]
        for flag in ("qmp", "remote_qmp", "migrate_uri", "domain"):
            if p[flag]:
                argv += ["--" + flag.replace("_", "-"), p[flag]]
        return argv + p["extra_args"]

    def main(self):
        here = self.status_here()
        if here is None:
            there = self.status_there()
            if there and there.get("state") in ("serving", "recording"):
                self.m.exit_json(changed=False, outcome="already-there", state_before="not-here", msg="%s is served at %s and not here" % (self.p["name"], self.p["to"]))
            self.m.fail_json(msg="no serve of %s here (%s) or at %s" % (self.p["name"], self.p["run_dir"], self.p["to"]), outcome="failed", kind="refused", vm_runs_here=False, state_before="not-here")
        state = here.get("state", "serving")
        if state == "moved":
            self.m.exit_json(changed=False, outcome="already-moved", state_before=state, moved_to=here.get("handoff", {}).get("to"), msg="%s moved away already (%s)" % (self.p["name"], here.get("handoff", {}).get("text", "")))
        if state in ("fenced", "receiving", "recording"):
            self.m.fail_json(msg="%s is %s here: %s" % (self.p["name"], state, here.get("handoff", {}).get("text", "")), outcome="failed", kind="refused", vm_runs_here=state == "recording", state_before=state)
        argv = self.migrate_argv()
        if self.m.check_mode:
            argv.append("--dry-run")
        rc, out, err = self.run(argv)
        events = events_of(out)
        checks = [e for e in events if e.get("event") == "check"]
        if rc != 0:
            kind = EXIT_KINDS.get(rc, "internal")
            failed_checks = ["%s: %s" % (c.get("what"), c.get("detail")) for c in checks if not c.get("ok")]
            msg = one_line(err) + (" (%s)" % "; ".join(failed_checks) if failed_checks else "")
            self.m.fail_json(msg=msg, rc=rc, kind=kind, outcome="failed", vm_runs_here=self.runs_here_now(), checks=checks, state_before=state, stderr_lines=err.strip().splitlines()[-20:])
        if self.m.check_mode:
            self.m.exit_json(changed=True, outcome="would-move", checks=checks, state_before=state, msg="%s can move to %s" % (self.p["name"], self.p["to"]))
        done = next((e for e in reversed(events) if e.get("event") == "done"), {})
        self.m.exit_json(changed=True, outcome="moved", rc=rc, done=done, checks=checks, state_before=state, msg="%s moved to %s" % (self.p["name"], self.p["to"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            to=dict(type="str", required=True),
            bin=dict(type="str", default="/usr/local/bin/wanmig"),
            run_dir=dict(type="str", default="/run/wanmig"),
            remote_run_dir=dict(type="str"),
            remote_bin=dict(type="str", default="/usr/local/bin/wanmig"),
            remote_images=dict(type="list", elements="str", default=[]),
            group=dict(type="str"),
            concurrency=dict(type="int", default=2),
            bandwidth=dict(type="str"),
            hypervisor=dict(type="str", choices=["none", "qemu", "xl", "libvirt"], default="none"),
            qmp=dict(type="str"),
            remote_qmp=dict(type="str"),
            migrate_uri=dict(type="str"),
            domain=dict(type="str"),
            extra_args=dict(type="list", elements="str", default=[]),
            ssh_command=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    if not module.params["to"].startswith("ssh://"):
        module.fail_json(msg="to must be ssh://[USER@]HOST[:PORT]", outcome="failed", kind="usage", vm_runs_here=True, state_before="unknown")
    Mover(module).main()


if __name__ == "__main__":
    main()
