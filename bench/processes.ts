// Commands, terminals, watchers and the port proxy (issue 24), each beside its naive baseline in the same run:
// - a foreground `echo hi` round trip (POST /commands), against `docker exec <container> echo hi`;
// - a terminal keystroke's echo (one byte in over the PTY WebSocket until it comes back);
// - an HTTP GET of a 1 KB page through the port proxy, against the same GET made inside the sandbox (keep-alive on both
//   sides: the proxy keeps its relays to the app between requests);
// - a 100 MB download through the proxy in MB/s, against the same download inside the sandbox;
// - a file event's delay: a process inside names each new file by the time it made it; the watcher's event is timed on
//   arrival (one kernel, one clock).
// Usage: npm run bench:processes (after npm run setup). BENCH_ROUNDS sets the number of samples (default 300).
import { execFileSync } from 'node:child_process'
import { Agent, request } from 'node:http'
import { WebSocket } from 'ws'
import { Server, headers, ms, pct, sleep } from './server.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 300)
const auth = { authorization: headers.authorization }

async function call (server: Server, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${server.base}${path}`, { method, headers: body === undefined ? auth : headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}

const row = (what: string, xs: number[], baseline: string, base: number[]) =>
  `| ${what} | ${ms(pct(xs, 50))} / ${ms(pct(xs, 99))} | ${baseline} | ${ms(pct(base, 50))} / ${ms(pct(base, 99))} |`

/** A GET over node:http (keep-alive to our server), its body's length and milliseconds. */
function get (agent: Agent, url: string): Promise<{ status: number, bytes: number, ms: number }> {
  const t0 = performance.now()
  return new Promise((resolve, reject) => {
    request(url, { agent, headers: auth }, (res) => {
      let bytes = 0
      res.on('data', (chunk: Buffer) => { bytes += chunk.length })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, ms: performance.now() - t0 }))
      res.on('error', reject)
    }).on('error', reject).end()
  })
}

async function commands (server: Server, id: string): Promise<string[]> {
  const rows: string[] = []
  for (let i = 0; i < 20; i++) await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['echo', 'hi'] })
  const argv: number[] = []
  const shell: number[] = []
  for (let i = 0; i < ROUNDS; i++) {
    let t0 = performance.now()
    const r = await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['echo', 'hi'] })
    argv.push(performance.now() - t0)
    if (r.stdout !== 'hi\n') throw new Error(`echo answered ${JSON.stringify(r)}`)
    t0 = performance.now()
    await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo hi' })
    shell.push(performance.now() - t0)
  }
  // POOL_SIZE 0: the namespace's one container is this sandbox's.
  const container = execFileSync('docker', ['ps', '-q', '--filter', `label=dev.interpreter-server.namespace=${server.namespace}`]).toString().trim().split('\n')[0]
  const exec: number[] = []
  for (let i = 0; i < Math.min(ROUNDS, 50); i++) {
    const t0 = performance.now()
    execFileSync('docker', ['exec', '-u', '1000', container!, 'echo', 'hi'])
    exec.push(performance.now() - t0)
  }
  rows.push(row('foreground `echo hi` (argv), POST /commands', argv, '`docker exec` per command', exec))
  rows.push(row('foreground `echo hi` (shell string)', shell, '`docker exec` per command', exec))
  return rows
}

async function terminal (server: Server, id: string): Promise<string> {
  const ws = new WebSocket(`${server.base.replace('http', 'ws')}/v1/sandboxes/${id}/pty?cmd=${encodeURIComponent('bash --norc --noprofile')}`, { headers: auth })
  let screen = ''
  let waiting: ((s: string) => void) | null = null
  ws.on('message', (data: Buffer, binary: boolean) => {
    if (!binary) return
    screen += data.toString()
    waiting?.(screen)
  })
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject))
  const until = (test: (s: string) => boolean) => new Promise<void>((resolve) => {
    if (test(screen)) return resolve()
    waiting = (s) => { if (test(s)) { waiting = null; resolve() } }
  })
  ws.send(Buffer.from('PS1="$ "\n'))
  await until(s => s.endsWith('$ '))
  const times: number[] = []
  for (let i = 0; i < ROUNDS; i++) {
    screen = ''
    const t0 = performance.now()
    ws.send(Buffer.from('x'))
    await until(s => s.includes('x'))
    times.push(performance.now() - t0)
    screen = ''
    ws.send(Buffer.from('\x7f')) // erase it again (readline answers with a backspace)
    await until(s => s.length > 0)
  }
  ws.close()
  return row('PTY keystroke → echo', times, '-', [])
}

const APP = `
const http = require('http')
const page = 'x'.repeat(1024)
const chunk = Buffer.alloc(1 << 20, 120)
http.createServer((req, res) => {
  if (req.url === '/big') {
    res.writeHead(200, { 'content-length': String(100 * chunk.length) })
    let left = 100
    const more = () => { while (left > 0) { left--; if (!res.write(chunk)) return res.once('drain', more) } res.end() }
    return more()
  }
  res.writeHead(200, { 'content-type': 'text/html', 'content-length': '1024' })
  res.end(page)
}).listen(8080, '127.0.0.1')
`
const INSIDE = `
const http = require('http')
const n = Number(process.argv[2])
const agent = new http.Agent({ keepAlive: true })
const get = (path) => new Promise((resolve, reject) => {
  const t0 = process.hrtime.bigint()
  http.get({ host: '127.0.0.1', port: 8080, path, agent }, (res) => {
    let bytes = 0
    res.on('data', (c) => { bytes += c.length })
    res.on('end', () => resolve({ ms: Number(process.hrtime.bigint() - t0) / 1e6, bytes }))
  }).on('error', reject)
})
;(async () => {
  const small = []
  for (let i = 0; i < 20; i++) await get('/')
  for (let i = 0; i < n; i++) small.push((await get('/')).ms)
  const big = []
  for (let i = 0; i < 3; i++) { const r = await get('/big'); big.push(r.bytes / 1048576 / (r.ms / 1000)) }
  console.log(JSON.stringify({ small, big }))
})()
`

async function ports (server: Server, id: string): Promise<string[]> {
  await fetch(`${server.base}/v1/sandboxes/${id}/files/app.js`, { method: 'PUT', headers: auth, body: APP })
  await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['node', 'app.js'], background: true })
  const agent = new Agent({ keepAlive: true })
  const url = `${server.base}/v1/sandboxes/${id}/ports/8080/`
  for (let i = 0; ; i++) {
    if ((await get(agent, url)).status === 200) break
    if (i > 100) throw new Error('the app inside did not start')
    await sleep(100)
  }
  for (let i = 0; i < 20; i++) await get(agent, url)
  const proxied: number[] = []
  for (let i = 0; i < ROUNDS; i++) {
    const r = await get(agent, url)
    if (r.bytes !== 1024) throw new Error(`a 1 KB page came back as ${r.bytes} bytes`)
    proxied.push(r.ms)
  }
  await fetch(`${server.base}/v1/sandboxes/${id}/files/inside.js`, { method: 'PUT', headers: auth, body: INSIDE })
  const inside = JSON.parse((await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['node', 'inside.js', String(ROUNDS)], timeout_ms: 600_000 })).stdout) as { small: number[], big: number[] }
  const rates: number[] = []
  for (let i = 0; i < 3; i++) {
    const r = await get(agent, `${url}big`)
    if (r.bytes !== 100 * 1048576) throw new Error(`the download came back as ${r.bytes} bytes`)
    rates.push(r.bytes / 1048576 / (r.ms / 1000))
  }
  agent.destroy()
  const median = (xs: number[]) => pct(xs, 50)
  return [
    row('GET 1 KB page through the port proxy', proxied, 'the same GET inside the sandbox', inside.small),
    `| added by the proxy (p50) | ${ms(median(proxied) - median(inside.small))} | | |`,
    `| 100 MB download, MB/s (median of 3) | ${median(rates).toFixed(0)} | inside the sandbox | ${median(inside.big).toFixed(0)} |`
  ]
}

async function watching (server: Server, id: string): Promise<string> {
  await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: 'mkdir -p watched' })
  const ws = new WebSocket(`${server.base.replace('http', 'ws')}/v1/sandboxes/${id}/watch?path=watched`, { headers: auth })
  const delays: number[] = []
  const n = Math.min(ROUNDS, 200)
  const done = new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString()) as { type: string, path?: string }
      if (m.type !== 'create') return
      const made = Number(m.path!.split('/').pop())
      if (Number.isFinite(made)) delays.push(Date.now() - made * 1000)
      if (delays.length >= n) resolve()
    })
  })
  await new Promise<void>((resolve) => ws.on('message', function first (data: Buffer) {
    if ((JSON.parse(data.toString()) as { type: string }).type === 'watching') { ws.off('message', first); resolve() }
  }))
  await call(server, 'POST', `/v1/sandboxes/${id}/commands`, { cmd: ['python3', '-c', `import time\nfor i in range(${n}):\n    open('watched/%.6f' % time.time(), 'w').close()\n    time.sleep(0.02)`], background: true })
  await done
  ws.close()
  return row('file event delay (create → WebSocket event)', delays, '-', [])
}

async function main (): Promise<void> {
  const server = new Server('processes', { POOL_SIZE: '0', SANDBOX_OUTPUT_LIMIT: String(200 * 1048576) })
  await server.start()
  try {
    const [id] = await server.sandboxes(1)
    const rows = [
      ...await commands(server, id!),
      await terminal(server, id!),
      ...await ports(server, id!),
      await watching(server, id!)
    ]
    process.stdout.write([
      `| ${ROUNDS} samples | ours p50 / p99 ms | baseline | baseline p50 / p99 ms |`,
      '|---|---|---|---|',
      ...rows
    ].join('\n') + '\n')
  } finally {
    await server.clear().catch(() => {})
    await server.stop()
  }
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
