// bun test/helpers/http-get.ts URL [FILE]: GET URL (60 s at most), the body to stdout or FILE;
// exit 1 with the status or the error on stderr. Run inside a network namespace with
// `ip netns exec`, where the test process itself cannot reach. 60 s: the guest-workloads
// test's 32 MiB video from a TCG guest whose Bonnie writer runs beside it once took over 20.
export {};
const [url, file] = process.argv.slice(2);
try {
  const res = await fetch(url!, { signal: AbortSignal.timeout(60_000) });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  if (file) await Bun.write(file, res);
  else process.stdout.write(await res.text());
} catch (err) {
  process.stderr.write(`GET ${url}: ${(err as Error).message}\n`);
  process.exit(1);
}
