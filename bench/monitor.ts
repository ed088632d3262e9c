// npm run bench:monitor: what the operator's monitor costs the server.
// 1. Memory of an hour of charts: 360 samples (13 protocols, 3 hosts) taken by TimeSeries, heap before and after.
// 2. Reading the merged series of 3 replicas from Redis (GET /v1/admin/timeseries's work), p50/p99.
// 3. Engine stats calls over 20 s for 5 open Sandboxes pages and 4 sandboxes: the shared poller (one per host) against
//    the naive baseline, each page polling every container itself.
import { performance } from 'node:perf_hooks'
import Docker from 'dockerode'
import { Redis } from 'ioredis'
import { TimeSeries, KEEP } from '../services/timeseries.js'
import { StatsPoller } from '../services/sandbox/stats.js'
import { DockerDriver } from '../services/sandbox/driver.js'

const gc = (globalThis as { gc?: () => void }).gc
const heap = () => { gc?.(); gc?.(); return process.memoryUsage().heapUsed }
const protocols = ['rest', 'chat', 'websocket', 'openai', 'librechat', 'mcp', 'jupyter', 'e2b', 'tools', 'terminal', 'x1', 'x2', 'x3']
const gauges = () => ({ live: 40, warm: 3, paused: 5, queued: 0, memory_used_mb: 20480, memory_budget_mb: 18000, hosts: { 'host-a': 20, 'host-b': 15, 'host-c': 5 } })
let executions = 0
const totals = async () => ({ executions: Object.fromEntries(protocols.map(p => [p, executions++])), starts: { count: executions, sum: executions * 0.6 } })

// 1. An hour of samples, with a full window of request durations in each.
const before = heap()
const series = new TimeSeries('bench', null, gauges, totals)
const t0 = Date.now() - KEEP * 10_000
for (let i = 0; i < KEEP; i++) {
  for (let r = 0; r < 2000; r++) series.request(Math.random() * 50)
  await series.sample(t0 + i * 10_000)
}
const after = heap()
console.log(`an hour of charts in one process: ${((after - before) / 1024).toFixed(0)} KB of heap for ${KEEP} samples${gc ? '' : ' (run with --expose-gc for exact numbers)'}`)

// 2. Three replicas' hours in Redis, merged.
const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { keyPrefix: `bench-monitor-${process.pid}:` })
const replicas = ['r1', 'r2', 'r3'].map(r => new TimeSeries(r, redis, gauges, totals))
for (let i = 0; i < KEEP; i++) for (const r of replicas) await r.sample(Date.now() - (KEEP - i) * 10_000)
const times: number[] = []
for (let i = 0; i < 50; i++) {
  const start = performance.now()
  await replicas[0]!.series(60)
  times.push(performance.now() - start)
}
times.sort((a, b) => a - b)
const merged = await replicas[0]!.series(60)
console.log(`merged series of ${merged.replicas} replicas (${merged.samples.length} points): p50 ${times[25]!.toFixed(1)} ms, p99 ${times[49]!.toFixed(1)} ms`)
const keys = await redis.keys(`bench-monitor-${process.pid}:*`)
const bytes = (await Promise.all(keys.map(k => redis.memory('USAGE', k.slice(`bench-monitor-${process.pid}:`.length)) as Promise<number>))).reduce((s, n) => s + (n ?? 0), 0)
console.log(`Redis memory for those hours: ${(bytes / 1024).toFixed(0)} KB`)
await redis.del(...keys.map(k => k.slice(`bench-monitor-${process.pid}:`.length)))
await redis.quit()

// 3. Engine stats calls: 5 pages, 4 sandboxes (real containers), 20 s.
const docker = new Docker()
const driver = new DockerDriver(docker)
const image = (await docker.listImages()).find(i => i.RepoTags?.some(t => t.startsWith('interpreter-sandbox:')))?.RepoTags?.[0]
if (!image) {
  console.log('no sandbox image: the stats comparison needs one (npm run image)')
  process.exit(0)
}
const containers = await Promise.all(Array.from({ length: 4 }, async () => {
  const c = await docker.createContainer({ Image: image, Cmd: ['sleep', '60'], HostConfig: { NetworkMode: 'none' } })
  await c.start()
  return c.id
}))
let shared = 0
const poller = new StatsPoller(new Map([['local', async (id: string) => { shared++; return await driver.stats(id) }]]), 5000)
const targets = new Map([['local', containers.map((c, i) => ({ sandbox: `s${i}`, container: c }))]])
let naive = 0
const until = Date.now() + 20_000
const pages = Array.from({ length: 5 }, async () => {
  while (Date.now() < until) {
    poller.read(targets)
    // The naive page: every container's stats itself, every 5 s.
    await Promise.all(containers.map(async c => { naive++; await driver.stats(c) }))
    await new Promise(resolve => setTimeout(resolve, 5000))
  }
})
await Promise.all(pages)
poller.close()
console.log(`engine stats calls in 20 s, 5 pages, 4 sandboxes: shared poller ${shared}, naive (each page polls) ${naive} (${(naive / Math.max(1, shared)).toFixed(1)}x)`)
await Promise.all(containers.map(c => docker.getContainer(c).remove({ force: true })))
