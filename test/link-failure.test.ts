// Which failures a migrating source takes for the link's (resume; the destination waits)
// and which end the migration (the destination is told). Synthetic errors, as each layer
// raises them.
import { describe, expect, test } from "bun:test";
import { ControlError } from "../src/errors.ts";
import { HypervisorError } from "../src/hypervisor/errors.ts";
import { ChannelClosed } from "../src/net/channel.ts";
import { InitError } from "../src/phases/errors.ts";
import { isLinkFailure } from "../src/phases/link-failure.ts";
import { CommandError } from "../src/util/run.ts";

const errno = (code: string) => Object.assign(new Error(`${code}: socket`), { code });

describe("a link failure", () => {
  test("the channel closed, or a socket error on the way to the destination", () => {
    expect(isLinkFailure(new ChannelClosed())).toBe(true);
    expect(isLinkFailure(new InitError("cannot connect to the destination", { cause: errno("ECONNREFUSED") }))).toBe(true);
    expect(isLinkFailure(new Error("write failed", { cause: errno("EPIPE") }))).toBe(true);
    expect(isLinkFailure(errno("ECONNRESET"))).toBe(true);
  });

  test("not the serve's control socket, killed or restarted under us (the same errnos, another process)", () => {
    expect(isLinkFailure(new ControlError("cannot reach the control socket /run/wanmig/vm.ctl", { cause: errno("ECONNRESET") }))).toBe(false);
    expect(isLinkFailure(new Error("deltas: shipping failed", { cause: new ControlError("cannot reach the control socket", { cause: errno("ECONNREFUSED") }) }))).toBe(false);
  });

  test("not a hypervisor's or a tool's socket", () => {
    expect(isLinkFailure(new HypervisorError("QMP: connection lost", { cause: errno("ECONNRESET") }))).toBe(false);
    expect(isLinkFailure(new CommandError(["xl", "migrate"], 1, "", { cause: errno("EPIPE") }))).toBe(false);
  });

  test("not anything else", () => {
    expect(isLinkFailure(new Error("lost the recording"))).toBe(false);
    expect(isLinkFailure(undefined)).toBe(false);
  });
});
