// The destination's images before anything listens: the run directory, a server that still
// holds them since the VM moved away (retired: the VM comes back onto them), the base copies,
// and the durable state a killed destination of them left.

import { existsSync, mkdirSync } from "node:fs";
import { ImageStateFile } from "../../disk/image/image-state.ts";
import { retireMovedServer } from "../../disk/service/retire-moved.ts";
import { ServeError, UsageError } from "../../errors.ts";
import type { Logger } from "../../log.ts";
import { recoverStaleJournal } from "../../redirect/journal.ts";
import { fileProblem } from "../../util/os-errors.ts";
import { runCommand } from "../../util/run.ts";
import type { DestOptions } from "./options.ts";

export interface PreparedImages {
  state: ImageStateFile;
  /** The images this run created (removed again on abort, if asked). */
  created: string[];
}

export async function prepareImages(o: DestOptions): Promise<PreparedImages> {
  const { images, log } = o;
  // The run directory is ours to make, as serve's is (`wanmig migrate --remote-run-dir`
  // names one that may not exist yet): the pid file and the sockets go there.
  try {
    mkdirSync(o.runDir, { recursive: true, mode: 0o755 });
  } catch (cause) {
    throw new ServeError(`cannot create the run directory ${o.runDir}: ${fileProblem(cause)}`, { hint: "pick another --run-dir, or create it" });
  }
  // NAME served here already: found now, not once the whole image has crossed and this
  // dest starts serving it. A server left holding these very images, fenced since the VM
  // moved away, is stopped: the VM comes back onto them. (A copy verified here before a
  // restart may be served by the dest that received it: run.ts handles that case.)
  let incoming = ImageStateFile.read(images).incoming;
  if (incoming?.state !== "verified" && (await retireMovedServer(o.runDir, o.name, images, log)) === "retired") incoming = ImageStateFile.read(images).incoming;
  const created = images.filter((p) => !existsSync(p));
  // A killed destination of these images left its position here: take it up, copy no base over it.
  const resuming = incoming?.state === "receiving" && images.every((p) => existsSync(p));
  if (o.bases.length && !resuming) await copyBases(o.bases, images, log);
  const state = new ImageStateFile(images);
  await recoverStaleJournal(o.runDir, o.name, log);
  return { state, created };
}

/** Each image starts as a sparse (or reflinked) copy of its base; an existing image is a base already. */
async function copyBases(bases: string[], images: string[], log: Logger): Promise<void> {
  if (bases.length !== images.length) throw new UsageError(`${bases.length} --base for ${images.length} --image`, "give --base once per --image, in the same order, or not at all");
  for (const image of images) if (existsSync(image)) throw new UsageError(`--image ${image} exists already`, "an existing image is itself used as the base: drop --base, or point --image at a new file");
  for (const base of bases) if (!existsSync(base)) throw new UsageError(`--base ${base} does not exist`);
  for (const [i, base] of bases.entries()) {
    const r = await runCommand(["cp", "--sparse=always", "--reflink=auto", base, images[i]!], log);
    log.info(`image ${images[i]} starts as a copy of ${base} (${r.durationMs} ms)`);
  }
}
