// Execution fast path: executions/s and p50/p99 at several concurrencies on distinct sandboxes, CPU per execution by
// process (the profile), print -> SSE delay, and chat turn overhead with an instant fake LLM. Three servers in one run:
// `baseline` (the checkout at --baseline-rev: the path before the fast path), `attach` (this checkout, agents over
// docker attach) and `socket` (this checkout, agents over their unix socket: the default).
// Usage: npm run bench:fastpath [-- --baseline-rev REV --servers baseline,attach,socket --concurrency 1,10,50 --n 20000 --rounds 1]
import { parseArgs } from 'node:util'
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, symlinkSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import Docker from 'dockerode'
import { Redis } from 'ioredis'
import { FakeLlm, type Reply } from '../test/fake-llm.js'
import { Server, headers, ms, pct, eachLimited, printTimes, stdoutDelays } from './server.js'

const { values } = parseArgs({
  options: {
    // The last commit before the fast path (issue 10): agents over docker attach, the agent of that time.
    'baseline-rev': { type: 'string', default: '1262bbc' },
    servers: { type: 'string', default: 'baseline,attach,socket' },
    concurrency: { type: 'string', default: '1,10,50' },
    // Executions per measurement (a fifth of it with one client): several seconds each, so that the figures are the
    // steady state (3000 took about a second on the new path, and a run that short read 30-40% low).
    n: { type: 'string', default: '20000' },
    turns: { type: 'string', default: '60' },
    // A V8 CPU profile of each server under test (node --cpu-prof), written to this directory: where the server's time goes.
    'cpu-prof': { type: 'string' },
    // Every server runs at this log level: info is the shipped default (what a user runs), warn leaves logging out.
    'log-level': { type: 'string', default: 'info' },
    // Each round runs every server again (in reverse order every other round): the machine's speed drifts, and the
    // ratio to the baseline is then reported per round and as the median.
    rounds: { type: 'string', default: '1' }
  }
})
const N = Number(values.n)

/** A checkout of the baseline revision beside this one (made once), with its sandbox image built. */
function baselineTree (rev: string): string {
  const dir = join(tmpdir(), `interpreter-server-baseline-${rev}`)
  if (!existsSync(join(dir, 'package.json'))) {
    execFileSync('git', ['worktree', 'add', '--force', '--detach', dir, rev], { stdio: 'ignore' })
    symlinkSync(resolve('node_modules'), join(dir, 'node_modules'))
  }
  execFileSync(process.execPath, ['--import', 'tsx', 'scripts/build-image.ts'], { cwd: dir, stdio: 'ignore' })
  return dir
}

// --- CPU per process, from /proc: every thread's time on CPU (schedstat, ns) ---------------------------------------
interface Proc { pid: number, ppid: number, comm: string, cmd: string }

function processes (): Proc[] {
  const out: Proc[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const close = stat.lastIndexOf(')')
      const comm = stat.slice(stat.indexOf('(') + 1, close)
      const ppid = Number(stat.slice(close + 2).split(' ')[1])
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ')
      out.push({ pid: Number(entry), ppid, comm, cmd })
    } catch { /* it exited */ }
  }
  return out
}

function cpuNs (pid: number): number {
  let total = 0
  try {
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      total += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0])
    }
  } catch { /* it exited */ }
  return total
}

/** The process classes the issue names: server, dockerd, containerd, containerd-shim, agent, kernel, init, redis. */
function classify (server: Server): Map<number, string> {
  const procs = processes()
  const byPid = new Map(procs.map(p => [p.pid, p]))
  const classes = new Map<number, string>()
  const under = (p: Proc, ancestor: number) => { for (let q: Proc | undefined = p; q; q = byPid.get(q.ppid)) if (q.pid === ancestor) return true; return false }
  for (const p of procs) {
    if (p.pid === server.child.pid) classes.set(p.pid, 'server (node)')
    else if (p.pid === process.pid) classes.set(p.pid, 'load generator (this benchmark, not the service)')
    else if (p.comm === 'dockerd') classes.set(p.pid, 'dockerd')
    else if (p.comm === 'containerd') classes.set(p.pid, 'containerd')
    else if (p.comm.startsWith('containerd-shim')) classes.set(p.pid, 'containerd-shim')
    else if (p.comm.startsWith('redis-server')) classes.set(p.pid, 'redis')
    else if (p.cmd.includes('/agent.py')) classes.set(p.pid, 'agent (python)')
    else if (p.cmd.includes('kernel_python.py') || p.cmd.includes('kernel_node.js')) classes.set(p.pid, 'kernel')
  }
  for (const p of procs) if (p.comm === 'docker-init' && [...classes].some(([pid, c]) => c === 'agent (python)' && under(byPid.get(pid)!, p.pid))) classes.set(p.pid, 'docker-init')
  return classes
}

function snapshot (classes: Map<number, string>): Map<string, number> {
  const totals = new Map<string, number>()
  for (const [pid, name] of classes) totals.set(name, (totals.get(name) ?? 0) + cpuNs(pid))
  return totals
}

// --- measures ---------------------------------------------------------------------------------------------------
interface Load { c: number, n: number, perS: number, p50: number, p99: number, errors: number, cpu?: Map<string, number>, redisCalls?: number }

/** Commands Redis has run so far (all clients: nothing else uses this Redis during the benchmark). */
async function redisCalls (): Promise<number> {
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379')
  try {
    return [...(await redis.info('commandstats')).matchAll(/calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0)
  } finally { redis.disconnect() }
}

/** `n` executions of print(i) spread over `c` clients, each on its own sandbox. */
async function load (server: Server, ids: string[], c: number, n: number, profile = false): Promise<Load> {
  const latencies: number[] = []
  let errors = 0
  let next = 0
  const classes = profile ? classify(server) : new Map<number, string>()
  const before = snapshot(classes)
  const callsBefore = profile ? await redisCalls() : 0
  const t0 = performance.now()
  const connections = await Promise.all(ids.slice(0, c).map(() => server.connection()))
  await Promise.all(ids.slice(0, c).map(async (id, k) => {
    let connection = connections[k]
    while (next < n) {
      const i = next++
      const s = performance.now()
      try {
        if ((await connection.execute(id, `print(${i})`)).stdout !== `${i}\n`) errors++
      } catch {
        errors++
        connection.close()
        connection = connections[k] = await server.connection()
      }
      latencies.push(performance.now() - s)
    }
  }))
  for (const connection of connections) connection.close()
  const elapsed = (performance.now() - t0) / 1000
  const after = snapshot(classes)
  const calls = profile ? await redisCalls() - callsBefore : 0
  const cpu = new Map([...after].map(([k, v]) => [k, (v - (before.get(k) ?? 0)) / n / 1e6]))
  return { c, n, perS: n / elapsed, p50: pct(latencies, 50), p99: pct(latencies, 99), errors, ...(profile ? { cpu, redisCalls: calls / n } : {}) }
}

/** The delay between a line printed in the sandbox and its arrival at an SSE client. */
async function sseDelays (server: Server, id: string, lines = 60): Promise<number[]> {
  return await stdoutDelays(await server.post(`/v1/sandboxes/${id}/execute`, { stream: true, code: printTimes(lines) }))
}

/** Chat turns (one code call, then an answer) against an instant fake LLM: `sessions` in parallel, `turns` in all. */
async function chatTurns (server: Server, sessions: number, turns: number): Promise<number[]> {
  const times: number[] = []
  let left = turns
  await Promise.all(Array.from({ length: sessions }, async () => {
    let sessionId: string | undefined
    while (left-- > 0) {
      const t0 = performance.now()
      const res = await fetch(`${server.base}/v1/chat`, { method: 'POST', headers, body: JSON.stringify({ messages: [{ role: 'user', content: 'run it' }], ...(sessionId ? { session_id: sessionId } : {}), config: { llm: { model: 'gpt' } } }) })
      const body = await res.json() as { session_id: string, finish_reason: string }
      if (res.status !== 200 || body.finish_reason !== 'stop') throw new Error(`chat: ${res.status} ${JSON.stringify(body)}`)
      if (sessionId) times.push(performance.now() - t0) // the first turn of a session also makes its sandbox
      sessionId = body.session_id
    }
  }))
  return times
}

/** Answers each request with a code call, and with text once the code's output came back. */
function instantModel (body: Record<string, unknown>): Reply {
  const messages = body.messages as Array<{ role: string }>
  return messages.at(-1)?.role === 'tool' ? { text: 'done' } : { code: { language: 'python', code: 'print(1)' } }
}

async function main (): Promise<void> {
  const fake = await new FakeLlm().start()
  fake.script('gpt', ...Array.from({ length: 100_000 }, () => instantModel))
  const modelsDir = mkdtempSync(join(tmpdir(), 'bench-models-'))
  writeFileSync(join(modelsDir, 'models.yaml'), `default: gpt\nmodels:\n  - { name: gpt, provider: openai, model: gpt-test, base_url: "${fake.url}/v1", api_key: k }\n`)
  const conc = values.concurrency.split(',').map(Number)
  const wanted = values.servers.split(',')
  const common = { MODELS_FILE: join(modelsDir, 'models.yaml'), POOL_SIZE: '2', SANDBOX_MEMORY_BUDGET_MB: '1000000', LOG_LEVEL: values['log-level'] }
  const nodeArgs = values['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${resolve(values['cpu-prof'])}`] : []
  const servers: Server[] = []
  if (wanted.includes('baseline')) servers.push(new Server('baseline', common, baselineTree(values['baseline-rev']), nodeArgs))
  if (wanted.includes('attach')) servers.push(new Server('attach', { ...common, SANDBOX_AGENT_CHANNEL: 'attach' }, undefined, nodeArgs))
  if (wanted.includes('socket')) servers.push(new Server('socket', { ...common, SANDBOX_AGENT_CHANNEL: 'socket' }, undefined, nodeArgs))

  const results: Array<{ server: string, name: string, round: number, loads: Load[], sse: number[], chatSeq: number[], chatPar: number[], chatCalls: number, rss: number }> = []
  const rounds = Number(values.rounds)
  const runs = Array.from({ length: rounds }, (_, round) => (round % 2 ? [...servers].reverse() : servers).map(server => ({ server, round: round + 1 }))).flat()
  for (const { server, round } of runs) {
    process.stderr.write(`[bench:fastpath] ${server.name}${rounds > 1 ? ` (round ${round})` : ''}\n`)
    await server.start()
    await server.waitWarm()
    const ids = await server.sandboxes(Math.max(...conc))
    await eachLimited(ids, 10, async (id) => { for (let i = 0; i < 40; i++) await server.execute(id, 'print(0)') }) // warm-up (JIT, kernels)
    await server.waitWarm() // the burst of creates grew the pool: let its refill finish before measuring
    const loads: Load[] = []
    for (const c of conc) {
      loads.push(await load(server, ids, c, c === 1 ? Math.ceil(N / 5) : N, c === 10))
      process.stderr.write(`[bench:fastpath]   c=${c}: ${loads.at(-1)!.perS.toFixed(0)}/s p50 ${ms(loads.at(-1)!.p50)} p99 ${ms(loads.at(-1)!.p99)}\n`)
    }
    const sse = await sseDelays(server, ids[0])
    const turns = Number(values.turns)
    const chatSeq = await chatTurns(server, 1, turns)
    const callsBefore = await redisCalls()
    const chatPar = await chatTurns(server, 10, turns * 3)
    const chatCalls = (await redisCalls() - callsBefore) / (turns * 3)
    results.push({ server: server.name, name: rounds > 1 ? `${server.name} #${round}` : server.name, round, loads, sse, chatSeq, chatPar, chatCalls, rss: server.rssMb() })
    await server.clear()
    await server.stop()
  }
  await fake.stop()

  const docker = new Docker()
  const out: string[] = ['## Executions of print(i), each client on its own sandbox', '']
  out.push('| server | clients | executions | executions/s | p50 ms | p99 ms | errors |', '|---|---|---|---|---|---|---|')
  for (const r of results) for (const l of r.loads) out.push(`| ${r.name} | ${l.c} | ${l.n} | ${l.perS.toFixed(0)} | ${ms(l.p50)} | ${ms(l.p99)} | ${l.errors} |`)
  const names = [...new Set(results.flatMap(r => [...(r.loads.find(l => l.cpu)?.cpu?.keys() ?? [])]))].sort()
  out.push('', '## CPU per execution by process (ms, during the 10-client run)', '')
  out.push(`| process | ${results.map(r => r.name).join(' | ')} |`, `|---|${results.map(() => '---').join('|')}|`)
  for (const name of [...names.filter(n => !n.startsWith('load')), 'total', ...names.filter(n => n.startsWith('load'))]) {
    out.push(`| ${name} | ${results.map(r => {
      const cpu = r.loads.find(l => l.cpu)!.cpu!
      const service = [...cpu].filter(([k]) => !k.startsWith('load generator')).reduce((a, [, v]) => a + v, 0)
      return (name === 'total' ? service : cpu.get(name) ?? 0).toFixed(3)
    }).join(' | ')} |`)
  }
  out.push(`| Redis commands per execution | ${results.map(r => r.loads.find(l => l.cpu)!.redisCalls!.toFixed(2)).join(' | ')} |`)
  out.push('', '## Streaming and chat', '')
  out.push('| server | print -> SSE p50 ms | p99 ms | chat turn p50 ms (1 session) | p99 | chat turn p50 ms (10 sessions) | p99 | Redis commands per chat turn | server RSS MiB |', '|---|---|---|---|---|---|---|---|---|')
  for (const r of results) out.push(`| ${r.name} | ${ms(pct(r.sse, 50))} | ${ms(pct(r.sse, 99))} | ${ms(pct(r.chatSeq, 50))} | ${ms(pct(r.chatSeq, 99))} | ${ms(pct(r.chatPar, 50))} | ${ms(pct(r.chatPar, 99))} | ${r.chatCalls.toFixed(0)} | ${r.rss.toFixed(0)} |`)
  const c10 = (x: typeof results[number]) => x.loads.find(l => l.c === 10)?.perS ?? NaN
  const base = servers[0].name
  for (const other of servers.slice(1)) {
    const ratios = Array.from({ length: rounds }, (_, i) => {
      const of = (name: string) => results.find(r => r.round === i + 1 && r.server === name)!
      return c10(of(other.name)) / c10(of(base))
    })
    const each = rounds > 1 ? ` (rounds: ${ratios.map(x => x.toFixed(2)).join(', ')}; median)` : ''
    out.push('', `${other.name}: ${pct(ratios, 50).toFixed(2)}x the executions/s of ${base} at 10 clients${each}.`)
  }
  out.push('', `Docker ${(await docker.version()).Version}; chat turns exclude each session's first (which also makes its sandbox).`)
  process.stdout.write(out.join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
