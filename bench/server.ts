// A server process for the benchmarks, started as a user starts it (`interpreter-server serve`), from this checkout or
// another one (the baseline), plus the small helpers the benchmarks share.
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, openSync } from 'node:fs'
import { createServer, connect, type Socket } from 'node:net'
import { Agent, request } from 'node:http'
import { performance } from 'node:perf_hooks'

export const KEY = 'bench-server-secret'
export const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }
export const sleep = (n: number) => new Promise(resolve => setTimeout(resolve, n))

export const pct = (xs: number[], p: number) => {
  if (!xs.length) return NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p / 100 * s.length) - 1))]
}
export const ms = (x: number) => Number.isFinite(x) ? x < 10 ? x.toFixed(2) : x.toFixed(0) : '-'

export function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port')))
    })
  })
}

export async function eachLimited<T> (items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => { while (next < items.length) await fn(items[next++]) }))
}

/** Python that prints time.time() `lines` times, 20 ms apart. */
export const printTimes = (lines: number) => `import time\nfor i in range(${lines}):\n    print(repr(time.time()))\n    time.sleep(0.02)`

/** Reads an execution's SSE stream: for each printed timestamp, the milliseconds until it arrived here. */
export async function stdoutDelays (res: Response): Promise<number[]> {
  const delays: number[] = []
  const decoder = new TextDecoder()
  let buffer = ''
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    const now = performance.timeOrigin + performance.now()
    buffer += decoder.decode(chunk, { stream: true })
    let cut: number
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut)
      buffer = buffer.slice(cut + 2)
      if (!block.includes('event: stdout')) continue
      const data = JSON.parse(block.slice(block.indexOf('data: ') + 6)) as { text: string }
      for (const line of data.text.trim().split('\n')) delays.push(now - Number(line) * 1000)
    }
  }
  return delays
}

export interface Execution { stdout: string, results: Array<{ data: Record<string, string> }>, error: unknown }

/** One server process with the given settings; `cwd` is the checkout it runs from. */
export class Server {
  child!: ChildProcess
  base = ''
  readonly namespace: string
  private readonly agent = new Agent({ keepAlive: true, maxSockets: 512 })

  constructor (readonly name: string, readonly env: Record<string, string>, readonly cwd = process.cwd(), readonly nodeArgs: string[] = []) {
    this.namespace = `bench-${process.pid}-${name}`
  }

  get log (): string { return `/tmp/bench-${this.name}.log` }

  /** Starts it and resolves when /v1/health answers, with the milliseconds that took. */
  async start (): Promise<number> {
    const port = await freePort()
    const t0 = performance.now()
    this.child = spawn(process.execPath, [...this.nodeArgs, '--import', 'tsx', 'cli.ts', 'serve'], {
      cwd: this.cwd,
      env: {
        ...process.env,
        API_KEYS: `bench:admin:${KEY}`,
        REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
        REDIS_PREFIX: `bench:${process.pid}:${this.name}:`,
        SANDBOX_NAMESPACE: this.namespace,
        LOG_LEVEL: 'warn',
        PORT: String(port),
        HOST: '127.0.0.1',
        RATE_LIMIT_PER_MINUTE: '100000000',
        SESSION_RATE_LIMIT_PER_MINUTE: '100000000',
        MAX_SANDBOXES_PER_KEY: '100000',
        SANDBOX_KEEP_ON_CLOSE: 'false',
        ...this.env
      },
      stdio: ['ignore', openSync(this.log, 'w'), openSync(this.log, 'a')]
    })
    this.base = `http://127.0.0.1:${port}`
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`${this.name} exited: ${readFileSync(this.log, 'utf8')}`)
      if (await fetch(`${this.base}/v1/health`).then(r => r.ok, () => false)) return performance.now() - t0
      await sleep(50)
    }
  }

  async waitWarm (): Promise<void> {
    for (;;) {
      const ready = await (await fetch(`${this.base}/v1/ready`)).json() as { pool?: { warm: number, size: number, target?: number, creating: number } }
      if (ready.pool && ready.pool.warm >= Math.max(ready.pool.size, ready.pool.target ?? 0) && ready.pool.creating === 0) return
      await sleep(100)
    }
  }

  rssMb (): number {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'))![1]) / 1024
  }

  async stop (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    this.agent.destroy()
    const exited = new Promise(resolve => this.child.once('exit', resolve))
    this.child.kill('SIGTERM')
    await exited
  }

  post (path: string, body: object): Promise<Response> {
    return fetch(`${this.base}${path}`, { method: 'POST', headers, body: JSON.stringify(body) })
  }

  /** POST /execute over node:http with keep-alive: a much lighter client than fetch, so the load generator takes less of the CPU it shares with the server. */
  execute (id: string, code: string): Promise<Execution> {
    const body = JSON.stringify({ code })
    const url = new URL(`${this.base}/v1/sandboxes/${id}/execute`)
    return new Promise((resolve, reject) => {
      const req = request({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent: this.agent, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => { text += chunk })
        res.on('end', () => res.statusCode === 200 ? resolve(JSON.parse(text) as Execution) : reject(new Error(`execute: ${res.statusCode} ${text}`)))
      })
      req.on('error', reject)
      req.end(body)
    })
  }

  /** A keep-alive connection of its own (the lightest client: see Connection), for a load generator's client. */
  async connection (): Promise<Connection> {
    const url = new URL(this.base)
    const socket = connect(Number(url.port), url.hostname)
    socket.setNoDelay(true)
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject))
    return new Connection(socket, url.host)
  }

  /** Creates `n` sandboxes, retrying on 503 after its Retry-After. */
  async sandboxes (n: number): Promise<string[]> {
    const ids: string[] = []
    while (ids.length < n) {
      const batch = await Promise.all(Array.from({ length: Math.min(10, n - ids.length) }, () => this.post('/v1/sandboxes', {})))
      for (const res of batch) {
        if (res.status === 201) ids.push((await res.json() as { id: string }).id)
        else await sleep(Number(res.headers.get('retry-after') ?? 1) * 1000)
      }
    }
    return ids
  }

  /** Deletes every sandbox of the key, a few at a time. */
  async clear (): Promise<void> {
    const { data } = await (await fetch(`${this.base}/v1/sandboxes`, { headers })).json() as { data: Array<{ id: string }> }
    const auth = { authorization: headers.authorization } // no content-type: a DELETE has no body
    await eachLimited(data, 8, async ({ id }) => {
      const res = await fetch(`${this.base}/v1/sandboxes/${id}`, { method: 'DELETE', headers: auth })
      if (res.status !== 204 && res.status !== 404) throw new Error(`delete: ${res.status} ${await res.text()}`)
    })
  }
}

/**
 * One keep-alive HTTP/1.1 connection that sends an execute and reads its JSON answer, one at a time, with nothing
 * between the socket and the bytes: the load generator shares the machine's cores with the server, and node:http's
 * client costs about as much CPU per request as the server's own handling does. Like wrk, it knows only what it needs:
 * a status line, a Content-Length and a body.
 */
export class Connection {
  private buffer: Buffer = Buffer.alloc(0)
  private waiting: { resolve: (e: Execution) => void, reject: (err: Error) => void } | null = null

  constructor (private readonly socket: Socket, private readonly host: string) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
      this.parse()
    })
    socket.on('error', (err) => this.waiting?.reject(err))
    socket.on('close', () => this.waiting?.reject(new Error('connection closed')))
  }

  execute (id: string, code: string): Promise<Execution> {
    const body = JSON.stringify({ code })
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject }
      this.socket.write(`POST /v1/sandboxes/${id}/execute HTTP/1.1\r\nhost: ${this.host}\r\nauthorization: ${headers.authorization}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
    })
  }

  close (): void { this.socket.destroy() }

  private parse (): void {
    const end = this.buffer.indexOf('\r\n\r\n')
    if (end < 0) return
    const head = this.buffer.toString('latin1', 0, end)
    const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? NaN)
    const waiting = this.waiting
    if (!waiting) return
    if (!Number.isFinite(length)) {
      this.waiting = null
      waiting.reject(new Error(`no content-length: ${head}`))
      return
    }
    if (this.buffer.length < end + 4 + length) return
    const text = this.buffer.toString('utf8', end + 4, end + 4 + length)
    this.buffer = this.buffer.subarray(end + 4 + length)
    this.waiting = null
    const status = Number(head.slice(9, 12))
    if (status === 200) waiting.resolve(JSON.parse(text) as Execution)
    else waiting.reject(new Error(`execute: ${status} ${text}`))
  }
}
