// The deltas keep streaming while a hypervisor's command moves the memory (xl migrate,
// virsh migrate): the command runs to its end, and the catch-up's rounds go on meanwhile.

/** Calls `whileWaiting` over and over until `command` settles; then returns, or throws its failure. */
export async function whileRunning(command: Promise<unknown>, whileWaiting: () => Promise<void>): Promise<void> {
  let finished = false;
  const done = command.finally(() => (finished = true));
  done.catch(() => undefined); // observed below; this keeps an early failure from going unhandled
  while (!finished) {
    await whileWaiting();
    await Bun.sleep(20);
  }
  await done;
}
