// A re-run source that finds the hand-off unfinished: finish it or roll it back, with the destination.

import type { ControlClient } from "../../disk/service/control-client.ts";
import type { ServeStatus } from "../../disk/service/status.ts";
import { NoSourceHypervisor } from "../../hypervisor/none.ts";
import { settleHandoff } from "../recover.ts";
import { finish, NO_DELTAS } from "./metrics.ts";
import { phaseEvent, recoveryOptions, type SourceOptions, type SourceResult } from "./options.ts";

export async function settleUnfinished(ctl: ControlClient, status: ServeStatus, bs: number, o: SourceOptions, t0: number): Promise<SourceResult> {
  phaseEvent(o, "handoff");
  const hv = o.hypervisor ?? new NoSourceHypervisor();
  try {
    const r = await settleHandoff(ctl, status, recoveryOptions(o, hv, bs));
    const now = performance.now();
    const metrics = finish(o, {
      t0,
      fencedAt: t0,
      doneAt: now,
      bulk: { bytesSent: 0, wireBytes: 0, zeroBlocks: 0, baseBlocks: 0, holeBytes: 0 },
      deltas: NO_DELTAS,
      finalDeltas: r.finalDeltas,
      bytesOnWire: r.bytesOnWire,
      throttleSteps: 0,
      reconnects: 0,
    });
    return { metrics };
  } finally {
    hv.close();
  }
}
