// The largest NBD request a serve advertises (NBD_INFO_BLOCK_SIZE's maximum). A client
// keeps a few requests in flight (QEMU: 16), each at most this large; while a migration
// holds writes back (the rate cap), those in-flight writes wait at the serve, and the VM's
// pause drains them all. They become deltas that must cross the link before the
// destination can run the VM, so the maximum bounds that part of the downtime.

import { UsageError } from "../../errors.ts";
import { parseSize } from "../../util/size.ts";
import { BLOCK_MAX, BLOCK_MAX_FLOOR, BLOCK_PREFERRED } from "./nbd-protocol.ts";

/** `--max-request SIZE`: within [64 KiB, 32 MiB] and a multiple of the preferred block size (the NBD spec wants the maximum a multiple of the minimum; clients split on it). */
export function parseMaxRequest(spec: string): number {
  const n = parseSize(spec, "--max-request");
  if (n < BLOCK_MAX_FLOOR || n > BLOCK_MAX || n % BLOCK_PREFERRED !== 0)
    throw new UsageError(`--max-request ${spec}: must be a multiple of 4KiB from 64KiB to 32MiB`, "for example --max-request 1MiB");
  return n;
}
