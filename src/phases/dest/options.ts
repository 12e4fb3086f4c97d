// What a destination is asked to do: the command's flags, parsed and checked.

import type { DestHypervisor } from "../../hypervisor/types.ts";
import type { Logger } from "../../log.ts";
import type { TlsFiles } from "../../net/tls.ts";
import type { Credentials } from "../init.ts";

export interface DestOptions {
  name: string;
  /** The VM's images here, in the source's disk order. */
  images: string[];
  /** --base: each image starts as a copy of these (none: no copy). */
  bases: string[];
  runDir: string;
  /** TCP: where sources connect. Undefined: the protocol on stdin/stdout (`ssh HOST wanmig dest --stdio`). */
  listen?: { host: string; port: number; tls?: TlsFiles };
  /** After a broken link, how long to wait for the source to resume. */
  resumeTimeout: { ms: number; text: string };
  creds: Credentials;
  hv: DestHypervisor;
  pidFile?: string;
  /** If the migration aborts, remove the images this run created (`wanmig migrate` asks). */
  removeOnAbort: boolean;
  /** With a network redirect: the interface behind which the VM sits here. */
  vmDev?: string;
  /** JSON events on stdout (TCP only: over ssh, stdout is the protocol). */
  json: boolean;
  log: Logger;
  serveLog: Logger;
}
