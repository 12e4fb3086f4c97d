// `npm run bench -- NAME [options]`: benchmarks that compare wanmig with its peers in one run.
const benches: Record<string, () => Promise<{ main(args: string[]): Promise<void> }>> = {
  nbd: () => import("./nbd.ts"),
  migrate: () => import("./migrate.ts"),
  durability: () => import("./durability.ts"),
  downtime: () => import("./downtime.ts"),
  paper: () => import("./paper.ts"),
  evacuate: () => import("./evacuate.ts"),
};

const [name, ...rest] = process.argv.slice(2);
const load = name ? benches[name] : undefined;
if (!load) {
  console.error(`usage: npm run bench -- ${Object.keys(benches).join("|")} [options]`);
  process.exit(2);
}
await (await load()).main(rest);
export {};
