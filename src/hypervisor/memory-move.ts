// One run of a hypervisor's migrate command (xl migrate, virsh migrate) at the source. The
// deltas keep streaming while it moves the memory; when the migration ends badly, the domain's
// state here is looked at exactly once, by whichever comes first: the command's own failure,
// or the source giving up (abort). Shared by every hypervisor so that none forgets to look.

import type { HypervisorError } from "./errors.ts";
import { checkSourceAfterFailedMigrate, strandedUnlessRunning, type LookHere } from "./after-failed-migrate.ts";

export class MemoryMove {
  private running = true;
  private looked = false;
  /** What the command itself threw; told apart from a failure of the deltas' rounds by identity. */
  private commandFailure?: { err: unknown };
  private readonly ended: Promise<void>;

  constructor(
    private readonly command: Promise<unknown>,
    private readonly here: LookHere,
  ) {
    this.ended = command.then(
      () => void (this.running = false),
      (err) => void ((this.running = false), (this.commandFailure = { err })),
    );
  }

  /** The command has not returned yet (a cancel still has something to cancel). */
  get underWay(): boolean {
    return this.running;
  }

  /**
   * Calls `whileWaiting` over and over until the command returns. The command's own failure
   * is checked against the domain here (exit 5 when it runs here, else stranded, exit 6). A
   * failure of `whileWaiting` is thrown as it is: the command still runs, and abort stops it
   * and looks.
   */
  async run(whileWaiting: () => Promise<void>): Promise<void> {
    while (this.running) {
      await whileWaiting();
      await Bun.sleep(20);
    }
    await this.ended;
    if (!this.commandFailure) return;
    this.looked = true;
    throw await checkSourceAfterFailedMigrate(this.commandFailure.err, this.here);
  }

  /**
   * After the source gave up: `stop` asks the command to end, which is waited for; then, unless
   * the command's failure was already looked at, whether the domain runs here.
   */
  async settle(reason: unknown, stop: () => unknown): Promise<HypervisorError | undefined> {
    if (this.looked) return undefined;
    this.looked = true;
    await stop();
    await this.ended;
    return strandedUnlessRunning(reason, this.here);
  }
}
