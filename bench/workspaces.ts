// Pausing and resuming sandboxes (issue 23), per way of pausing: runsc keeping the memory (its own checkpoint), and
// keeping the files (runc here, where Debian's CRIU cannot dump; runsc with SANDBOX_PAUSE_MODE=files).
// - pause and resume p50/p99 of an idle Python kernel, and of one holding numpy, pandas and a 200 MB DataFrame; the
//   naive baseline beside them: a new sandbox that runs the same set-up code again (what a lost sandbox costs today);
// - the host's memory (MemAvailable) taken by 100 running sandboxes, then by the same 100 paused;
// - fork of 10 (BENCH_FORK_ONLY=1 runs only this): time until all 10 copies ran code, against 10 new sandboxes.
// Usage: npm run bench:workspaces (SANDBOX_RUNSC=1 bash scripts/setup.sh first: runsc, and Docker's checkpoints).
import { readFileSync } from 'node:fs'
import { Server, headers, ms, pct, sleep, eachLimited } from './server.js'

const FRAME = 'import numpy as np, pandas as pd\ndf = pd.DataFrame(np.random.rand(5_000_000, 5))\nprint(round(df.memory_usage().sum() / 2**20))'
const SETUPS = {
  'runsc, memory': { SANDBOX_RUNTIME: 'runsc', SANDBOX_PAUSE_MODE: 'memory' },
  'runsc, files': { SANDBOX_RUNTIME: 'runsc', SANDBOX_PAUSE_MODE: 'files' },
  'runc, files (auto)': {}
}
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10)
const MANY = Number(process.env.BENCH_MANY ?? 100)

const availableMb = () => Number(/MemAvailable:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) / 1024

async function call (server: Server, method: string, path: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${server.base}${path}`, { method, headers: { authorization: headers.authorization } })
  const body = await res.json() as Record<string, unknown>
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(body)}`)
  return body
}

/** Pause and resume times of `rounds` fresh sandboxes after `setup` ran in each, and the baseline: a new one running it. */
async function cycles (server: Server, setup: string, check: string, want: string, rounds: number) {
  const pauses: number[] = []
  const resumes: number[] = []
  const baseline: number[] = []
  let kept = 0
  for (let i = 0; i < rounds; i++) {
    await server.clear()
    const t0 = performance.now()
    const [id] = await server.sandboxes(1)
    await server.execute(id, setup)
    baseline.push(performance.now() - t0)
    const t1 = performance.now()
    await call(server, 'POST', `/v1/sandboxes/${id}/pause`)
    pauses.push(performance.now() - t1)
    const t2 = performance.now()
    const resumed = await call(server, 'POST', `/v1/sandboxes/${id}/resume`)
    resumes.push(performance.now() - t2)
    if (!resumed.state_lost && (await server.execute(id, check)).stdout === want) kept++
  }
  return { pauses, resumes, baseline, kept }
}

async function measure (name: keyof typeof SETUPS, n: number): Promise<{ rows: string[], memory: string }> {
  const server = new Server(`ws-${n}`, { POOL_SIZE: '1', EXECUTION_TIMEOUT_MS: '60000', MAX_SANDBOXES: '1000', SANDBOX_MEMORY_BUDGET_MB: '1000000', ...SETUPS[name] })
  await server.start()
  try {
    const rows: string[] = []
    for (const [what, setup, check, want, rounds] of [
      ['idle kernel', 'x = 42', 'print(x)', '42\n', ROUNDS],
      ['200 MB DataFrame', FRAME, 'print(len(df))', '5000000\n', Math.max(3, Math.round(ROUNDS / 2))]
    ] as const) {
      const r = await cycles(server, setup, check, want, rounds)
      rows.push(`| ${name} | ${what} | ${ms(pct(r.pauses, 50))} / ${ms(pct(r.pauses, 99))} | ${ms(pct(r.resumes, 50))} / ${ms(pct(r.resumes, 99))} | ${r.kept} of ${rounds} | ${ms(pct(r.baseline, 50))} |`)
    }

    // Host memory: 100 sandboxes with a kernel each, running, then paused.
    await server.clear()
    await sleep(2000)
    const before = availableMb()
    const ids: string[] = []
    while (ids.length < MANY) {
      const res = await fetch(`${server.base}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })
      if (res.status === 201) ids.push((await res.json() as { id: string }).id)
      else if (res.status === 503) await sleep(1000)
      else throw new Error(`create: ${res.status} ${await res.text()}`)
    }
    await eachLimited(ids, 4, async (id) => { await server.execute(id, 'x = list(range(100000))') })
    await sleep(3000)
    const running = before - availableMb()
    await eachLimited(ids, 2, async (id) => { await call(server, 'POST', `/v1/sandboxes/${id}/pause`) })
    await sleep(3000)
    const paused = before - availableMb()
    await server.clear()
    return { rows, memory: `| ${name} | ${MANY} | ${running.toFixed(0)} | ${paused.toFixed(0)} | ${(100 * paused / running).toFixed(1)} % |` }
  } finally {
    await server.clear().catch(() => {})
    await server.stop()
  }
}

/**
 * Fork of 10: from a sandbox with a file in its workspace, until all 10 copies have run code and read the file;
 * against 10 new sandboxes that each write the file again (what there was before forks).
 */
async function forks (): Promise<string[]> {
  const server = new Server('ws-fork', { POOL_SIZE: '2', MAX_SANDBOXES: '1000', SANDBOX_MEMORY_BUDGET_MB: '1000000' })
  await server.start()
  const rows: string[] = []
  try {
    for (let round = 0; round < 3; round++) {
      await server.clear()
      await server.waitWarm()
      const [id] = await server.sandboxes(1)
      await server.execute(id!, 'open("data.bin", "wb").write(bytes(50 * 2**20))\nx = 42')
      const t0 = performance.now()
      const res = await fetch(`${server.base}/v1/sandboxes/${id}/fork`, { method: 'POST', headers, body: JSON.stringify({ count: 10 }) })
      const made = (await res.json() as { data: Array<{ sandbox?: { id: string }, error?: unknown }> }).data
      const copies = made.flatMap(m => m.sandbox ? [m.sandbox.id] : [])
      await Promise.all(copies.map(async (c) => {
        const out = await server.execute(c, 'import os\nprint(os.path.getsize("data.bin"))')
        if (out.stdout !== `${50 * 2 ** 20}\n`) throw new Error(`a fork answered ${JSON.stringify(out)}`)
      }))
      const fork = performance.now() - t0
      await server.clear()
      await server.waitWarm()
      const t1 = performance.now()
      const fresh = await server.sandboxes(10)
      await Promise.all(fresh.map(async (c) => { await server.execute(c, 'open("data.bin", "wb").write(bytes(50 * 2**20))\nprint(1)') }))
      const baseline = performance.now() - t1
      rows.push(`| ${round + 1} | ${copies.length} of 10 | ${ms(fork)} | ${ms(baseline)} |`)
    }
  } finally {
    await server.clear().catch(() => {})
    await server.stop()
  }
  return rows
}

async function main (): Promise<void> {
  if (process.env.BENCH_FORK_ONLY) {
    process.stdout.write(['| round | forks made | fork of 10 until all ran code ms | baseline: 10 new sandboxes writing the 50 MB file ms |', '|---|---|---|---|', ...await forks()].join('\n') + '\n')
    return
  }
  const rows: string[] = []
  const memory: string[] = []
  const only = process.env.BENCH_SETUPS?.split(',')
  for (const [n, name] of (Object.keys(SETUPS) as Array<keyof typeof SETUPS>).entries()) {
    if (only && !only.some(o => name.startsWith(o))) continue
    const r = await measure(name, n)
    rows.push(...r.rows)
    memory.push(r.memory)
  }
  process.stdout.write([
    '| pausing | sandbox | pause p50 / p99 ms | resume p50 / p99 ms | state kept | baseline: new sandbox + set-up p50 ms |',
    '|---|---|---|---|---|---|',
    ...rows,
    '',
    '| pausing | sandboxes | host memory running MB | host memory paused MB | paused / running |',
    '|---|---|---|---|---|',
    ...memory,
    '',
    '| round | forks made | fork of 10 until all ran code ms | baseline: 10 new sandboxes writing the 50 MB file ms |',
    '|---|---|---|---|',
    ...await forks()
  ].join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
