// Load benchmark: simultaneous sandbox creates, executions under concurrency, and the first plot with and without
// SANDBOX_PRELOAD, against a server started as a user starts it (`interpreter-server serve`), with the capacity bounds
// on and, in the same run, switched off (the behaviour before them).
// Usage: npm run bench:load [-- --bursts 50,100,300 --baseline-bursts 50,100 --concurrency 1,10,50,100 --plots 8]
import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import Docker from 'dockerode'
import { Server, eachLimited, ms, pct, sleep } from './server.js'

const { values } = parseArgs({
  options: {
    bursts: { type: 'string', default: '50,100,300' },
    'baseline-bursts': { type: 'string', default: '50,100,300' },
    concurrency: { type: 'string', default: '1,10,50,100' },
    'exec-seconds': { type: 'string', default: '4' },
    plots: { type: 'string', default: '8' }
  }
})
const list = (s: string) => s.split(',').filter(Boolean).map(Number)
const PRELOAD = 'numpy,pandas,matplotlib.pyplot'
const PLOT = 'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.show()'

interface BurstRow { server: string, n: number, statuses: string, noRetryAfter: number, p50: number, p99: number, max: number, usableS: number, ran: string }

/** N creates at the same moment; then print(1) in every sandbox that was given. */
async function burst (server: Server, n: number): Promise<BurstRow> {
  const t0 = performance.now()
  const answers = await Promise.all(Array.from({ length: n }, async () => {
    const res = await server.post('/v1/sandboxes', {}).catch((err: Error) => ({ status: 0, err }))
    const at = performance.now() - t0
    if (!('ok' in res)) return { status: 0, code: 'network', at, id: null, retryAfter: null }
    const body = await res.json() as { id?: string, error?: { code: string } }
    return { status: res.status, code: body.error?.code ?? '', at, id: body.id ?? null, retryAfter: res.headers.get('retry-after') }
  }))
  const counts = new Map<string, number>()
  for (const a of answers) counts.set(a.status === 201 ? '201' : `${a.status} ${a.code}`, (counts.get(a.status === 201 ? '201' : `${a.status} ${a.code}`) ?? 0) + 1)
  const ids = answers.flatMap(a => a.id ? [a.id] : [])
  let ran = 0
  await eachLimited(ids, 20, async (id) => { if ((await server.execute(id, 'print(1)').catch(() => ({ stdout: '' }))).stdout === '1\n') ran++ })
  const usable = performance.now() - t0
  const latencies = answers.map(a => a.at)
  return {
    server: server.name,
    n,
    statuses: [...counts].map(([k, v]) => `${v} × ${k}`).join(', '),
    noRetryAfter: answers.filter(a => a.status === 503 && !a.retryAfter).length,
    p50: pct(latencies, 50),
    p99: pct(latencies, 99),
    max: Math.max(...latencies),
    usableS: usable / 1000,
    ran: `${ran}/${ids.length}`
  }
}

interface ExecRow { server: string, c: number, n: number, p50: number, p99: number, errors: number, perS: number, rssMb: number }

/** `c` clients, each on its own sandbox, running print(i) in a loop for a few seconds. */
async function executions (server: Server, ids: string[], c: number, seconds: number): Promise<ExecRow> {
  const latencies: number[] = []
  let errors = 0
  let rss = 0
  const end = performance.now() + seconds * 1000
  const t0 = performance.now()
  const sampler = setInterval(() => { rss = Math.max(rss, server.rssMb()) }, 200)
  await Promise.all(ids.slice(0, c).map(async (id) => {
    for (let i = 0; performance.now() < end; i++) {
      const s = performance.now()
      try {
        if ((await server.execute(id, `print(${i})`)).stdout !== `${i}\n`) errors++
      } catch { errors++ }
      latencies.push(performance.now() - s)
    }
  }))
  clearInterval(sampler)
  const elapsed = (performance.now() - t0) / 1000
  return { server: server.name, c, n: latencies.length, p50: pct(latencies, 50), p99: pct(latencies, 99), errors, perS: latencies.length / elapsed, rssMb: rss }
}

/** Removes a namespace's containers (after a server died and could not). */
async function removeContainers (namespace: string): Promise<void> {
  const docker = new Docker()
  const list = await docker.listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })
  await eachLimited(list, 8, async (c) => { await docker.getContainer(c.Id).remove({ force: true }).catch(() => {}) })
}

/** Idle memory of warm sandboxes, as the cgroup counts it minus reclaimable file cache. */
async function idleMemoryMb (namespace: string): Promise<number[]> {
  const docker = new Docker()
  const containers = await docker.listContainers({ filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })
  const out: number[] = []
  for (const c of containers) {
    const stats = await docker.getContainer(c.Id).stats({ stream: false }) as unknown as { memory_stats: { usage: number, stats: Record<string, number> } }
    const m = stats.memory_stats
    out.push((m.usage - (m.stats.inactive_file ?? m.stats.total_inactive_file ?? 0)) / 1024 / 1024)
  }
  return out
}

/** Fresh sandbox (from a refilled warm pool) to its first matplotlib PNG, `n` times. */
async function firstPlots (server: Server, n: number): Promise<number[]> {
  const times: number[] = []
  for (let i = 0; i < n; i++) {
    await server.waitWarm()
    const t0 = performance.now()
    const res = await server.post('/v1/sandboxes', {})
    const { id } = await res.json() as { id: string }
    const run = await server.execute(id, PLOT)
    if (!run.results[0]?.data['image/png']) throw new Error('no PNG')
    times.push(performance.now() - t0)
  }
  await server.clear()
  return times
}

async function main (): Promise<void> {
  const bounded = new Server('bounded', { SANDBOX_MEMORY_BUDGET_MB: '1000000', MAX_SANDBOXES: '1000' })
  const unbounded = new Server('unbounded', {
    SANDBOX_START_CONCURRENCY: '100000', SANDBOX_QUEUE_TIMEOUT_MS: '3600000', POOL_MAX: '2', SANDBOX_MEMORY_BUDGET_MB: '1000000', MAX_SANDBOXES: '100000'
  })
  const queueTimeout = Number(bounded.env.SANDBOX_QUEUE_TIMEOUT_MS ?? 30000)
  const bursts: BurstRow[] = []
  const execs: ExecRow[] = []
  const failures: string[] = []
  const conc = list(values.concurrency)
  for (const [server, sizes] of [[bounded, list(values.bursts)], [unbounded, list(values['baseline-bursts'])]] as const) {
    await server.start()
    await server.waitWarm()
    try {
      for (const n of sizes) {
        process.stderr.write(`[bench:load] ${server.name}: ${n} simultaneous creates\n`)
        bursts.push(await burst(server, n))
        process.stderr.write(`[bench:load]   ${JSON.stringify(bursts.at(-1))}\n`)
        await server.clear()
        await sleep(2000)
        await server.waitWarm()
      }
      process.stderr.write(`[bench:load] ${server.name}: executions at concurrency ${conc.join(', ')}\n`)
      const ids = await server.sandboxes(Math.max(...conc))
      for (const c of conc) {
        execs.push(await executions(server, ids, c, Number(values['exec-seconds'])))
        process.stderr.write(`[bench:load]   ${JSON.stringify(execs.at(-1))}\n`)
      }
      await server.clear()
    } catch (err) {
      // The server died or stopped answering: that is a result too (it is what the bounds are for).
      const died = server.child.exitCode !== null ? `exited with ${server.child.exitCode}` : 'stopped answering'
      failures.push(`${server.name}: ${(err as Error).message}; the server ${died} (log: ${server.log})`)
      process.stderr.write(`[bench:load]   ${failures.at(-1)}\n`)
      await removeContainers(server.namespace)
    }
    await server.stop()
  }

  process.stderr.write('[bench:load] first plot and idle memory, with and without SANDBOX_PRELOAD\n')
  const plots: Array<{ name: string, times: number[], memory: number[] }> = []
  for (const [name, env] of [['no preload', {}], [`SANDBOX_PRELOAD=${PRELOAD}`, { SANDBOX_PRELOAD: PRELOAD }]] as const) {
    const server = new Server(name === 'no preload' ? 'plain' : 'preload', { POOL_SIZE: '4', ...env })
    await server.start()
    await server.waitWarm()
    await sleep(1000)
    const memory = await idleMemoryMb(server.namespace)
    plots.push({ name, times: await firstPlots(server, Number(values.plots)), memory })
    await server.stop()
  }

  // Start-up after a burst: leave containers behind (keep on close), then time a restart until /v1/health answers.
  process.stderr.write('[bench:load] start-up with 100 sandboxes left behind\n')
  const leaver = new Server('restart', { SANDBOX_KEEP_ON_CLOSE: 'true', SANDBOX_MEMORY_BUDGET_MB: '1000000', POOL_SIZE: '0' })
  await leaver.start()
  await leaver.sandboxes(100)
  await leaver.stop()
  const restart = new Server('restart', { SANDBOX_KEEP_ON_CLOSE: 'false', SANDBOX_MEMORY_BUDGET_MB: '1000000', POOL_SIZE: '0' })
  const healthMs = await restart.start()
  const t0 = performance.now()
  let recovery: { state: string, adopted: number } = { state: 'pending', adopted: 0 }
  while (recovery.state !== 'done' && recovery.state !== 'failed') {
    recovery = (await (await fetch(`${restart.base}/v1/ready`)).json() as { recovery: typeof recovery }).recovery
    await sleep(100)
  }
  const recoveredS = (performance.now() - t0) / 1000
  await restart.clear()
  await restart.stop()

  const out: string[] = []
  out.push(`## Simultaneous creates (SANDBOX_QUEUE_TIMEOUT_MS ${queueTimeout}; bounded = defaults, start concurrency = cores; unbounded = every start at once, no queue timeout)`, '')
  out.push('| server | N | answers | 503 without Retry-After | p50 ms | p99 ms | max ms | last usable s | print(1) ran |', '|---|---|---|---|---|---|---|---|---|')
  for (const r of bursts) out.push(`| ${r.server} | ${r.n} | ${r.statuses} | ${r.noRetryAfter} | ${ms(r.p50)} | ${ms(r.p99)} | ${ms(r.max)} | ${r.usableS.toFixed(1)} | ${r.ran} |`)
  for (const f of failures) out.push('', `Failed: ${f}`)
  out.push('', '## Executions, print(i), each client on its own sandbox', '')
  out.push('| server | clients | executions | p50 ms | p99 ms | errors | executions/s | server RSS MiB |', '|---|---|---|---|---|---|---|---|')
  for (const r of execs) out.push(`| ${r.server} | ${r.c} | ${r.n} | ${ms(r.p50)} | ${ms(r.p99)} | ${r.errors} | ${r.perS.toFixed(0)} | ${r.rssMb.toFixed(0)} |`)
  out.push('', '## Fresh sandbox to first matplotlib PNG, and idle memory per warm sandbox', '')
  out.push('| kernel | first plot p50 ms | p90 ms | n | idle memory MiB (mean of warm sandboxes) |', '|---|---|---|---|---|')
  for (const p of plots) out.push(`| ${p.name} | ${ms(pct(p.times, 50))} | ${ms(pct(p.times, 90))} | ${p.times.length} | ${(p.memory.reduce((a, b) => a + b, 0) / p.memory.length).toFixed(1)} |`)
  out.push('', `## Start-up with 100 sandboxes left: /v1/health answered ${(healthMs / 1000).toFixed(1)} s after the process started; recovery ${recovery.state} (${recovery.adopted} adopted) ${recoveredS.toFixed(1)} s after that`)
  process.stdout.write(out.join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
