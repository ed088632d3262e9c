// Sandbox benchmark: warm acquire, HTTP execute round trip, streaming delay, idle memory, against the naive
// baselines `docker exec` and `docker run --rm` measured in the same run. Usage: npm run bench [-- --runs N]
import { parseArgs } from 'node:util'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { performance } from 'node:perf_hooks'
import Docker from 'dockerode'
import { buildApp } from '../app.js'
import { loadConfig } from '../services/config.js'
import { sandboxImageTag } from '../services/sandbox/image.js'
import { printTimes, stdoutDelays } from './server.js'

const run = promisify(execFile)
const { values } = parseArgs({ options: { runs: { type: 'string', default: '200' } } })
const RUNS = Number(values.runs)
const KEY = 'bench-key-secret'
const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }

const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p / 100 * s.length))] }
const time = async (fn: () => Promise<unknown>) => { const t0 = performance.now(); await fn(); return performance.now() - t0 }
async function repeat (n: number, fn: () => Promise<unknown>): Promise<number[]> {
  const out: number[] = []
  for (let i = 0; i < n; i++) out.push(await time(fn))
  return out
}

async function main (): Promise<void> {
  const image = sandboxImageTag()
  const config = loadConfig({ API_KEYS: `bench:admin:${KEY}`, LOG_LEVEL: 'silent', POOL_SIZE: '2', RATE_LIMIT_PER_MINUTE: '1000000', SESSION_RATE_LIMIT_PER_MINUTE: '1000000', SANDBOX_KEEP_ON_CLOSE: 'false', SANDBOX_NAMESPACE: `bench-${process.pid}`, MAX_SANDBOXES_PER_KEY: '1000' })
  const app = await buildApp({ config, sandbox: { waitWarm: true } }, false)
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const pool = app.sandboxes.pool
  const docker = new Docker()

  // 1. warm acquire: time pool.acquire() with the pool full, refill outside the timing
  const acquire: number[] = []
  const acquired: string[] = []
  for (let i = 0; i < 20; i++) {
    await pool.fill()
    acquire.push(await time(async () => { acquired.push((await pool.acquire()).containerId) }))
  }
  await Promise.all(acquired.map(id => pool.containers.remove(id)))
  await pool.fill()

  // 2. HTTP execute round trip on a warm sandbox
  const sandbox = await (await fetch(`${base}/v1/sandboxes`, { method: 'POST', headers, body: '{}' })).json() as { id: string }
  const exec = async () => {
    const res = await fetch(`${base}/v1/sandboxes/${sandbox.id}/execute`, { method: 'POST', headers, body: JSON.stringify({ code: 'print(1)' }) })
    const body = await res.json() as { stdout: string }
    if (body.stdout !== '1\n') throw new Error(`unexpected ${JSON.stringify(body)}`)
  }
  await repeat(20, exec)
  const http = await repeat(RUNS, exec)

  // 3. baselines: docker exec (API, as a server would) and docker run --rm (CLI)
  const record = await app.store.getSandbox(sandbox.id)
  const container = docker.getContainer(record!.container_id)
  const dockerExec = await repeat(Math.min(RUNS, 40), async () => {
    const e = await container.exec({ Cmd: ['python3', '-c', 'print(1)'], AttachStdout: true, AttachStderr: true, User: '1000' })
    const stream = await e.start({ hijack: true, stdin: false })
    await new Promise<void>((resolve) => { stream.on('end', () => resolve()); stream.resume() })
  })
  const dockerRun = await repeat(8, () => run('docker', ['run', '--rm', '--network', 'none', image, 'python3', '-c', 'print(1)']))

  // 4. streaming delay: print time.time() in the sandbox, compare with arrival at an SSE client
  const lines = 60
  const res = await fetch(`${base}/v1/sandboxes/${sandbox.id}/execute`, { method: 'POST', headers, body: JSON.stringify({ stream: true, code: printTimes(lines) }) })
  const delays = await stdoutDelays(res)

  // 5. memory of idle warm sandboxes (agent + python kernel), as the cgroup counts it minus reclaimable file cache
  await pool.fill()
  const ids = (await pool.containers.list()).map(c => c.id).filter(id => pool.isWarm(id))
  const memory: number[] = []
  for (const id of ids) {
    const stats = await docker.getContainer(id).stats({ stream: false }) as unknown as { memory_stats: { usage: number, stats: Record<string, number> } }
    const m = stats.memory_stats
    memory.push((m.usage - (m.stats.inactive_file ?? m.stats.total_inactive_file ?? 0)) / 1024 / 1024)
  }
  await app.close()

  const row = (name: string, xs: number[], unit = 'ms', target = '') =>
    `| ${name.padEnd(38)} | ${pct(xs, 50).toFixed(2).padStart(8)} | ${pct(xs, 90).toFixed(2).padStart(8)} | ${unit.padEnd(4)} | ${String(xs.length).padStart(4)} | ${target.padEnd(10)} |`
  const out = [
    `| ${'measure'.padEnd(38)} |      p50 |      p90 | unit |    n | target     |`,
    `|${'-'.repeat(40)}|----------|----------|------|------|------------|`,
    row('warm acquire (pool.acquire)', acquire, 'ms', '< 10 ms'),
    row('HTTP execute print(1), warm sandbox', http, 'ms', '< 5 ms'),
    row('baseline: docker exec python3 -c', dockerExec, 'ms'),
    row('baseline: docker run --rm python3 -c', dockerRun, 'ms'),
    row('print -> SSE client delay', delays, 'ms', '< 5 ms'),
    row('idle sandbox memory', memory, 'MiB', '< 25 MiB'),
    '',
    `HTTP execute is ${(pct(dockerExec, 50) / pct(http, 50)).toFixed(1)}x faster than docker exec and ${(pct(dockerRun, 50) / pct(http, 50)).toFixed(1)}x faster than docker run --rm (p50).`,
    `Warm acquire is ${(pct(dockerRun, 50) / pct(acquire, 50)).toFixed(1)}x faster than starting a container with docker run (p50).`
  ]
  process.stdout.write(out.join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
