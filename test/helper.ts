import { randomBytes } from 'node:crypto'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer, connect } from 'node:net'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import { Redis } from 'ioredis'
import Docker from 'dockerode'
import { buildApp } from '../app.js'
import { loadConfig, type Config } from '../services/config.js'
import { sandboxImageTag } from '../services/sandbox/image.js'
import { waitReady } from '../services/redis.js'

type Test = { after (fn: () => unknown): void }

// Every event from a sandbox's agent is checked against the typed protocol (schemas/agent.ts) in the tests.
process.env.AGENT_PROTOCOL_CHECK ??= '1'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
export const KEYS = { admin: 'admin-secret', alice: 'alice-secret', bob: 'bob-secret' }
export const auth = (key: string) => ({ authorization: `Bearer ${key}` })

export function testConfig (overrides: Record<string, string | undefined> = {}): Config {
  const tag = randomBytes(4).toString('hex')
  return loadConfig({
    API_KEYS: `admin:admin:${KEYS.admin},alice:user:${KEYS.alice},bob:user:${KEYS.bob}`,
    REDIS_URL,
    REDIS_PREFIX: `test:${tag}:`,
    LOG_LEVEL: 'silent',
    RATE_LIMIT_PER_MINUTE: '100000',
    SESSION_RATE_LIMIT_PER_MINUTE: '100000',
    SANDBOX_ENABLED: 'false',
    POOL_SIZE: '0',
    SANDBOX_NAMESPACE: `test-${tag}`,
    ...overrides
  })
}

/** Builds the whole app against the real Redis (failing loudly when it is not there) and closes it after the test. */
export async function build (t: Test, config: Config = testConfig(), opts: { logger?: FastifyServerOptions['logger'], waitWarm?: boolean, env?: Record<string, string> } = {}): Promise<FastifyInstance> {
  const app = await buildApp({ config, sandbox: { waitWarm: opts.waitWarm ?? true }, env: { ...process.env, ...opts.env } }, opts.logger ?? false)
  t.after(() => app.close())
  await app.ready()
  if (app.redis) {
    await waitReady(app.redis, 5000).catch(() => {
      throw new Error(`these tests need a Redis server at ${config.REDIS_URL} (start one: redis-server --daemonize yes)`)
    })
  }
  return app
}

/** Deletes every key under a test's Redis prefix. */
export async function flushPrefix (url: string, prefix: string): Promise<void> {
  const redis = new Redis(url)
  try {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
      cursor = next
      if (keys.length) await redis.del(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}

/** Config for tests that run code: Docker and the sandbox image must be present, or the test fails here. */
export async function sandboxConfig (overrides: Record<string, string | undefined> = {}): Promise<Config> {
  const docker = new Docker()
  await docker.ping().catch((err: Error) => { throw new Error(`these tests need a running Docker daemon: ${err.message}`) })
  const image = sandboxImageTag(overrides.SANDBOX_IMAGE_PROFILE === 'slim' ? 'slim' : 'full')
  await docker.getImage(image).inspect().catch(() => { throw new Error(`these tests need the sandbox image ${image}: run npm run image`) })
  // TEST_AGENT_CHANNEL=attach runs a suite over docker attach instead of the agents' sockets (the *-attach tests).
  const channel = process.env.TEST_AGENT_CHANNEL ? { SANDBOX_AGENT_CHANNEL: process.env.TEST_AGENT_CHANNEL } : {}
  // TEST_SANDBOX_RUNTIME=runsc runs a suite under gVisor (the *-runsc tests); the runtime must be registered with Docker.
  const runtime = process.env.TEST_SANDBOX_RUNTIME
  if (runtime) {
    const { Runtimes } = await docker.info() as { Runtimes?: Record<string, unknown> }
    if (!Runtimes?.[runtime]) throw new Error(`these tests need the ${runtime} runtime registered with Docker: run SANDBOX_RUNSC=1 bash scripts/setup.sh`)
  }
  // Under runsc the server reads from the engine that runsc has --host-uds (setup.sh registers it so) and uses the
  // socket channel: TEST_AGENT_CHANNEL=attach runs a runsc suite the way a server without it works.
  return testConfig({ SANDBOX_ENABLED: 'true', POOL_SIZE: '1', SANDBOX_KEEP_ON_CLOSE: 'false', EXECUTION_TIMEOUT_MS: '20000', ...channel, ...(runtime ? { SANDBOX_RUNTIME: runtime } : {}), ...overrides })
}

/** Containers Docker still has in a namespace (running or not). */
export async function containersIn (namespace: string): Promise<number> {
  const list = await new Docker().listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })
  return list.length
}

export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')))
    })
  })
}

/** A redis-server of the test's own (so it can be stopped), with AOF fsync'd on every write. */
export class RedisProcess {
  private child: ChildProcess | null = null
  readonly dir = mkdtempSync(join(tmpdir(), 'redis-test-'))
  constructor (readonly port: number) {}
  get url (): string { return `redis://127.0.0.1:${this.port}` }

  async start (): Promise<void> {
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--dir', this.dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', ''], { stdio: 'ignore' })
    this.child = child
    let spawnError: Error | null = null
    child.once('error', (err) => { spawnError = err })
    for (let attempt = 0; attempt < 100; attempt++) {
      if (spawnError) throw new Error(`redis-server could not start (is it installed?): ${(spawnError as Error).message}`)
      if (await canConnect(this.port)) return
      await sleep(50)
    }
    throw new Error(`redis-server did not start on port ${this.port}`)
  }

  async kill (): Promise<void> {
    const child = this.child
    if (!child || child.exitCode !== null) return
    await new Promise<void>(resolve => { child.once('exit', () => resolve()); child.kill('SIGKILL') })
    this.child = null
  }
}

function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.end(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/**
 * The node arguments that start the CLI (cli.ts) in a child process. Under tap the child gets the test's own loaders
 * (TypeScript, coverage), so its coverage maps onto the sources the same way: coverage recorded through a second
 * loader such as tsx maps every file to one statement, and tap's merge then keeps whichever map it reads first.
 * Outside tap, tsx.
 */
export function cliArgs (...args: string[]): string[] {
  const loaders = process.execArgv.filter(a => a.startsWith('--import='))
  return [...(loaders.length ? loaders : ['--import', 'tsx']), 'cli.ts', ...args]
}

export const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

/**
 * Waits for a state rather than for a time: polls `check` until it returns something truthy and returns that, or
 * throws naming `what` after `ms` (30 s by default: long enough for a loaded 2-core machine; the wait itself ends as
 * soon as the state is there, so a generous deadline costs nothing when things are fast).
 */
export async function waitFor<T> (what: string, check: () => T | Promise<T>, { ms = 30_000, every = 50 } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value as NonNullable<T>
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting until ${what}`)
    await sleep(every)
  }
}

/** A models.yaml pointing at a fake LLM server; keys come from the environment through ${VAR}. */
export function writeModelsFile (fakeUrl: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'models-'))
  const file = join(dir, 'models.yaml')
  writeFileSync(file, [
    'default: gpt',
    'models:',
    `  - { name: gpt, provider: openai, model: gpt-test, base_url: "${fakeUrl}/v1", api_key: "\${FAKE_OPENAI_KEY}" }`,
    `  - { name: claude, provider: anthropic, model: claude-test, base_url: "${fakeUrl}", api_key: "\${FAKE_ANTHROPIC_KEY}", vision: true }`,
    `  - { name: flaky, provider: openai, model: flaky-test, base_url: "${fakeUrl}/v1", api_key: k, fallback: [claude] }`,
    `  - { name: slow, provider: openai, model: slow-test, base_url: "${fakeUrl}/v1", api_key: k, timeout_ms: 500 }`
  ].join('\n'))
  return file
}
export const FAKE_ENV = { FAKE_OPENAI_KEY: 'sk-fake-openai-key', FAKE_ANTHROPIC_KEY: 'sk-ant-fake-key' }

export interface SseEvent { id?: string, event: string, data: any }

/** Reads SSE events from a fetch response until `stop` says so (or the stream ends). */
export async function readSse (response: Response, stop: (e: SseEvent, all: SseEvent[]) => boolean = () => false): Promise<SseEvent[]> {
  const reader = response.body!.getReader()
  const decoder = new TextDecoder()
  const events: SseEvent[] = []
  let buffer = ''
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return events
      buffer += decoder.decode(value, { stream: true })
      let cut: number
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut)
        buffer = buffer.slice(cut + 2)
        if (block.startsWith(':')) continue
        const event: SseEvent = { event: 'message', data: null }
        for (const line of block.split('\n')) {
          const colon = line.indexOf(':')
          const field = line.slice(0, colon)
          const value = line.slice(colon + 1).replace(/^ /, '')
          if (field === 'id') event.id = value
          else if (field === 'event') event.event = value
          else if (field === 'data') event.data = value === '[DONE]' ? value : JSON.parse(value)
        }
        events.push(event)
        if (stop(event, events)) return events
      }
    }
  } finally {
    await reader.cancel().catch(() => {})
  }
}

/** Creating sandboxes and running code through the API, as alice unless told otherwise; a non-2xx answer throws. */
export function sandboxCalls (app: () => FastifyInstance, headers: Record<string, string> = auth(KEYS.alice)) {
  return {
    async newSandbox (body: object = {}): Promise<string> {
      const res = await app().inject({ method: 'POST', url: '/v1/sandboxes', headers, payload: body })
      if (res.statusCode !== 201) throw new Error(`sandbox creation failed: ${res.body}`)
      return res.json().id
    },
    async run (id: string, code: string, extra: object = {}): Promise<any> {
      const res = await app().inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers, payload: { code, ...extra } })
      if (res.statusCode !== 200) throw new Error(`execute failed: ${res.statusCode} ${res.body}`)
      return res.json()
    }
  }
}

/** Sandbox config whose models are the fake LLM's (see writeModelsFile). */
export async function fakeLlmConfig (fakeUrl: string, overrides: Record<string, string | undefined> = {}): Promise<Config> {
  return await sandboxConfig({ MODELS_FILE: writeModelsFile(fakeUrl), ...overrides })
}

/** The whole app on that config, with the fake's keys in its environment; not closed for you (share it across a file's tests). */
export async function fakeLlmApp (config: Config, opts: { waitWarm?: boolean, logger?: FastifyServerOptions['logger'] } = {}): Promise<FastifyInstance> {
  return await buildApp({ config, sandbox: { waitWarm: opts.waitWarm ?? true }, env: { ...process.env, ...FAKE_ENV } }, opts.logger ?? false)
}

/** A WebSocket echo server in Python for inside a sandbox (no library needed): `echo: <text>`, and `offered?` answers with the subprotocols offered. */
export function wsEchoServer (port: number): string {
  return 'import asyncio, base64, hashlib\n' +
    'async def serve(r, w):\n' +
    '    head = (await r.readuntil(b"\\r\\n\\r\\n")).decode()\n' +
    '    key = [l.split(": ")[1] for l in head.split("\\r\\n") if l.lower().startswith("sec-websocket-key")][0]\n' +
    '    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()\n' +
    '    offered = ([l.split(": ")[1] for l in head.split("\\r\\n") if l.lower().startswith("sec-websocket-protocol")] + [""])[0]\n' +
    '    chosen = "Sec-WebSocket-Protocol: echo.v1\\r\\n" if "echo.v1" in offered else ""\n' +
    '    w.write(("HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n" + chosen + "Sec-WebSocket-Accept: " + accept + "\\r\\n\\r\\n").encode())\n' +
    '    while True:\n' +
    '        b1, b2 = await r.readexactly(2)\n' +
    '        n = b2 & 127\n' +
    '        if n == 126: n = int.from_bytes(await r.readexactly(2), "big")\n' +
    '        mask = await r.readexactly(4)\n' +
    '        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await r.readexactly(n)))\n' +
    '        if b1 & 15 == 8: break\n' +
    '        out = ("offered: " + offered).encode() if data == b"offered?" else b"echo: " + data\n' +
    '        w.write(bytes([0x81, len(out)]) + out)\n' +
    '        await w.drain()\n' +
    '    w.close()\n' +
    'async def main():\n' +
    '    s = await asyncio.start_server(serve, "127.0.0.1", ' + String(port) + ')\n' +
    '    await s.serve_forever()\n' +
    'asyncio.run(main())\n'
}
