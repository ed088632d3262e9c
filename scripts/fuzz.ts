// npm run fuzz [-- --seed N --per-op N]: a seeded, bounded fuzzer over the whole API, on loopback only. It starts the
// real server (tsx cli.ts serve) against the local Redis and Docker, then sends every OpenAPI operation valid and
// mutated requests, and malformed frames to the WebSocket, a terminal, Jupyter channels, MCP and multipart upload. It counts
// crashes, hangs, 500s and statuses the OpenAPI document does not list, checks health throughout, and prints a table
// and the server's RSS at start and end. Exit code 1 when anything was found.
import { spawn } from 'node:child_process'
import { mkdtempSync, openSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { makeCa } from '../services/sandbox/tls-intercept.js'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'

const { values } = parseArgs({ options: { seed: { type: 'string', default: '1' }, 'per-op': { type: 'string', default: '25' }, port: { type: 'string', default: '18990' } } })
const SEED = Number(values.seed)
const PER_OP = Number(values['per-op'])
const PORT = Number(values.port)
const BASE = `http://127.0.0.1:${PORT}`
const KEY = 'fuzz-user-secret'
const ADMIN = 'fuzz-admin-secret'
const HANG_MS = 30_000

/** mulberry32: the same seed gives the same run. */
let state = SEED >>> 0
const random = () => {
  state = (state + 0x6D2B79F5) >>> 0
  let x = state
  x = Math.imul(x ^ (x >>> 15), x | 1)
  x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
  return ((x ^ (x >>> 14)) >>> 0) / 4294967296
}
const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]

interface Tally { requests: number, s5xx: number, undocumented: number, hangs: number, examples: string[], statuses: Map<number, number> }
const phases = new Map<string, Tally>()
const tally = (phase: string): Tally => {
  if (!phases.has(phase)) phases.set(phase, { requests: 0, s5xx: 0, undocumented: 0, hangs: 0, examples: [], statuses: new Map() })
  return phases.get(phase)!
}
const note = (t: Tally, what: string) => { if (t.examples.length < 5) t.examples.push(what) }
const seen = (t: Tally, status: number) => t.statuses.set(status, (t.statuses.get(status) ?? 0) + 1)

// --- the server under test ---------------------------------------------------------------------------------------
// With secrets and the deployment CA on, so that /v1/secrets and network transforms are fuzzed for real.
const CA_DIR = join(mkdtempSync(join(tmpdir(), 'fuzz-ca-')), 'ca')
await makeCa(CA_DIR)
const server = spawn(process.execPath, ['--import', 'tsx', 'cli.ts', 'serve', '--host', '127.0.0.1', '--port', String(PORT)], {
  env: {
    ...process.env,
    API_KEYS: `fuzzadmin:admin:${ADMIN},fuzz:user:${KEY}`,
    REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    REDIS_PREFIX: `fuzz:${SEED}:${Date.now()}:`,
    SANDBOX_NAMESPACE: `fuzz-${SEED}`,
    LOG_LEVEL: 'warn',
    POOL_SIZE: '1',
    RATE_LIMIT_PER_MINUTE: '100000',
    SESSION_RATE_LIMIT_PER_MINUTE: '100000',
    MAX_SANDBOXES_PER_KEY: '4',
    EXECUTION_TIMEOUT_MS: '5000',
    MAX_EXECUTION_TIMEOUT_MS: '10000',
    SANDBOX_KEEP_ON_CLOSE: 'false',
    SECRETS_KEY: 'f'.repeat(64),
    EGRESS_CA_DIR: CA_DIR
  },
  stdio: ['ignore', process.env.FUZZ_LOG ? openSync(process.env.FUZZ_LOG, 'w') : 'ignore', 'pipe'] // FUZZ_LOG=file keeps the server's log
})
let crashed: string | null = null
let stderr = ''
server.stderr!.on('data', (chunk: Buffer) => { stderr = (stderr + String(chunk)).slice(-4000) })
let stopping = false
server.on('exit', (code, signal) => { if (!stopping) crashed = `the server exited (${code ?? signal})` })
const rss = () => { try { return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024 } catch { return 0 } }

async function call (method: string, path: string, init: { body?: string | Buffer, headers?: Record<string, string> } = {}): Promise<{ status: number, text: string } | 'hang' | 'error'> {
  try {
    const res = await fetch(`${BASE}${path}`, { method, body: typeof init.body === 'string' || init.body === undefined ? init.body : new Uint8Array(init.body), headers: { authorization: `Bearer ${KEY}`, ...init.headers }, signal: AbortSignal.timeout(HANG_MS) })
    const text = res.headers.get('content-type')?.startsWith('text/event-stream') ? '' : await res.text()
    if (res.headers.get('content-type')?.startsWith('text/event-stream')) await res.body?.cancel()
    return { status: res.status, text }
  } catch (err) {
    return (err as Error).name === 'TimeoutError' ? 'hang' : 'error'
  }
}

/** Statuses an operation answered that its OpenAPI entry does not list, by status and operation. */
const undocumented = new Map<string, number>()
let healthFailures = 0
const healthy = async () => {
  const res = await call('GET', '/v1/health')
  if (typeof res === 'string' || res.status !== 200) healthFailures++
}

// --- values -----------------------------------------------------------------------------------------------------
const ODD_IDS = ['', '..', '%2e%2e', '%ff', 'a'.repeat(101), 'a'.repeat(5000), '1e21', '-1', '0', 'null', '%00', 'sbx_' + 'A'.repeat(16), '.', '../etc/passwd', '%2F']
const ODD_VALUES: unknown[] = [null, true, -1, 0, 1e21, -1e21, 1e-9, 0.001, 16, 2 ** 53, 'x', '', 'x'.repeat(70_000), [], {}, [[[[[]]]]], { toString: 'x' }, { __proto__: { a: 1 } }]
const text = (v: unknown): string => v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v)
const deep = (n: number): unknown => n === 0 ? 1 : { a: deep(n - 1) }

type Schema = { type?: string | string[], properties?: Record<string, Schema>, required?: string[], enum?: unknown[], items?: Schema, anyOf?: Schema[], oneOf?: Schema[], const?: unknown, minimum?: number, maximum?: number, default?: unknown }

/** A value the schema accepts, roughly (enough to get past validation into the handler). */
function valid (s: Schema | undefined, depth = 0): unknown {
  if (!s || depth > 6) return 'x'
  if (s.const !== undefined) return s.const
  if (s.enum) return pick(s.enum)
  if (s.anyOf || s.oneOf) return valid(pick((s.anyOf ?? s.oneOf)!), depth + 1)
  const type = Array.isArray(s.type) ? s.type[0] : s.type
  switch (type) {
    case 'object': return Object.fromEntries(Object.entries(s.properties ?? {}).filter(([k]) => s.required?.includes(k) || random() < 0.5).map(([k, v]) => [k, valid(v, depth + 1)]))
    case 'array': return random() < 0.5 ? [] : [valid(s.items, depth + 1)]
    case 'integer': return s.minimum ?? 1
    case 'number': return s.minimum ?? 1
    case 'boolean': return random() < 0.5
    case 'string': return pick(['print(1)', 'python', 'x', 'a.txt'])
    default: return 'x'
  }
}

/** The valid value, changed: a wrong type, a huge number, a deep or huge value, an unknown field. */
function mutate (value: unknown): unknown {
  if (random() < 0.15) return pick(ODD_VALUES)
  if (random() < 0.05) return deep(pick([50, 500]))
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const copy: Record<string, unknown> = { ...value as Record<string, unknown> }
    const keys = Object.keys(copy)
    if (keys.length && random() < 0.7) { const k = pick(keys); copy[k] = mutate(copy[k]) }
    if (random() < 0.2) copy[pick(['unknown', '__proto__', 'constructor', 'x'.repeat(100)])] = pick(ODD_VALUES)
    return copy
  }
  return pick(ODD_VALUES)
}

// --- phases -----------------------------------------------------------------------------------------------------
async function restPhase (doc: any, ids: Record<string, string>) {
  const t = tally('REST (OpenAPI)')
  for (const [path, item] of Object.entries<any>(doc.paths)) {
    for (const [method, op] of Object.entries<any>(item)) {
      if (!['get', 'post', 'put', 'patch', 'delete'].includes(method)) continue
      const documented = new Set(Object.keys(op.responses ?? {}).map(String))
      const schema = op.requestBody?.content?.['application/json']?.schema as Schema | undefined
      // Deleting the shared sandbox, session or kernel would turn every later request into a 404: those get odd ids.
      const destroys = method === 'delete' && /\}$/.test(path) && !path.includes('{*}')
      for (let i = 0; i < PER_OP; i++) {
        const odd = destroys || random() < 0.3
        let url = path.replace(/\{([^}]+)\}/g, (_m: string, name: string) => {
          if (name === '*') return odd ? pick(ODD_IDS) : pick(['', '.', 'a.txt', 'dir', 'dir/', 'fifo', 'x/../y'])
          return odd ? pick(ODD_IDS) : (ids[name] ?? ids.id)
        })
        const query = (op.parameters ?? []).filter((p: any) => p.in === 'query')
        // Values are kept under 4 KiB: a longer URL is node:http's 431 before any route runs.
        const q = query.filter(() => random() < 0.6).map((p: any) => `${encodeURIComponent(p.name)}=${encodeURIComponent(text(random() < 0.5 ? valid(p.schema) : pick(ODD_VALUES)).slice(0, 4096))}`)
        if (q.length) url += `?${q.join('&')}`
        const body = schema ? JSON.stringify(random() < 0.4 ? valid(schema) : mutate(valid(schema))) : undefined
        const raw = method === 'put' ? 'file content' : body
        const res = await call(method.toUpperCase(), url, raw === undefined ? {} : { body: raw, headers: { 'content-type': method === 'put' ? 'application/octet-stream' : 'application/json' } })
        t.requests++
        if (res === 'hang') { t.hangs++; note(t, `hang: ${method.toUpperCase()} ${url.slice(0, 120)}`); continue }
        if (res === 'error') { if (crashed) return; continue }
        seen(t, res.status)
        // 503 is overload, said; a documented 501 is a feature this server says it does not offer (E2B's metrics, ...).
        if (res.status >= 500 && res.status !== 503 && !(res.status === 501 && documented.has('501'))) { t.s5xx++; note(t, `${res.status}: ${method.toUpperCase()} ${url.slice(0, 120)} ${res.text.slice(0, 200)}`) }
        if (!documented.has(String(res.status)) && !documented.has('default')) {
          t.undocumented++
          const key = `${res.status} ${method.toUpperCase()} ${path}`
          undocumented.set(key, (undocumented.get(key) ?? 0) + 1)
          note(t, `undocumented ${res.status}: ${method.toUpperCase()} ${path} (${url.slice(0, 80)}) ${res.text.slice(0, 160)}`)
        }
      }
      await healthy()
    }
  }
}

async function socketPhase (name: string, url: string, frames: () => Array<string | Buffer>, protocols: string[] = []) {
  const t = tally(name)
  for (let round = 0; round < 20; round++) {
    const ws = new WebSocket(url, protocols, { headers: { authorization: `Bearer ${KEY}` } })
    const opened = await new Promise<boolean>(resolve => {
      ws.once('open', () => resolve(true))
      ws.once('error', () => resolve(false))
      ws.once('unexpected-response', (_req, res) => { seen(t, res.statusCode ?? 0); resolve(false) })
    })
    if (!opened) { t.requests++; continue }
    seen(t, 101)
    let got = 0
    ws.on('message', () => { got++ })
    for (const frame of frames()) { ws.send(frame); t.requests++ }
    await new Promise(resolve => setTimeout(resolve, 300))
    ws.send(JSON.stringify({ type: 'ping' }))
    await new Promise(resolve => setTimeout(resolve, 200))
    if (got === 0 && name === 'WebSocket /v1/ws') { t.hangs++; note(t, 'a socket answered nothing to a ping') }
    ws.terminate()
    await healthy()
  }
}

const wsFrames = () => Array.from({ length: 10 }, () => pick<string | Buffer>([
  'not json', '{}', '[]', 'null', JSON.stringify({ type: 'hello' }), JSON.stringify({ type: 'hello', session_id: pick(ODD_IDS) }),
  JSON.stringify({ type: 'execute', language: 'python', code: 'print(1)' }), JSON.stringify({ type: 'execute', language: 'cobol', code: 1 }),
  JSON.stringify({ type: 'resume', after: '99999999999999999999-0' }), JSON.stringify({ type: 'resume', after: '0-0' }),
  JSON.stringify({ type: 'chat', content: 'hi', model: 'nope' }), JSON.stringify({ type: 'confirm', code_id: 'x', approve: true }),
  JSON.stringify({ type: 'interrupt' }), JSON.stringify(deep(200)), Buffer.from([0, 1, 2, 255])
]))

const terminalFrames = () => Array.from({ length: 10 }, () => pick<string | Buffer>([
  Buffer.from('echo fuzz\n'), Buffer.from([0, 3, 4, 27, 91, 255, 254]), 'not json', '{}', 'null', JSON.stringify(deep(200)),
  JSON.stringify({ type: 'resize', cols: pick(ODD_VALUES), rows: pick(ODD_VALUES) }), JSON.stringify({ type: 'resize', cols: 1e9, rows: -1 }),
  JSON.stringify({ type: 'input', data: pick(ODD_VALUES) }), JSON.stringify({ type: 'input', data: 'x', eof: true }),
  JSON.stringify({ type: 'signal', signal: pick(['SIGKILL', 'SIGNOPE', 9, null]) }), JSON.stringify({ type: pick(['ping', 'nope', 7]) })
]))

const openTerminalFrames = () => Array.from({ length: 10 }, () => pick<string | Buffer>([
  JSON.stringify({ type: 'auth', token: KEY }), JSON.stringify({ type: 'auth', token: pick(ODD_VALUES) }), JSON.stringify({ type: 'auth' }),
  JSON.stringify({ type: 'resize', cols: pick(ODD_VALUES), rows: pick(ODD_VALUES) }), JSON.stringify({ type: 'resize', cols: 2 ** 31, rows: -5 }),
  JSON.stringify({ type: 'input', data: pick(ODD_VALUES) }), 'not json', '{}', Buffer.from('echo hi\n'), Buffer.alloc(70_000, 0x41), Buffer.from([0xff, 0xfe, 0x03])
]))
const jupyterFrames = () => Array.from({ length: 10 }, () => {
  const header = { msg_id: String(random()), msg_type: pick(['execute_request', 'kernel_info_request', 'complete_request', 'inspect_request', 'shutdown_request', 'comm_open', 'history_request', 'nonsense', 1]), session: 's', username: 'u', date: '', version: '5.3' }
  // shutdown_request always restarts: a real shutdown would end the kernel every later round needs.
  return pick<string | Buffer>([
    JSON.stringify({ header, parent_header: {}, metadata: {}, content: { code: pick(['1', 'print(2)', 5, null]), restart: true }, channel: pick(['shell', 'control', 'iopub', 'x']) }),
    JSON.stringify({ header: null }), 'garbage', Buffer.from([1, 0, 0, 0]), JSON.stringify({ header: { ...header, msg_type: 'kernel_info_request' }, content: null })
  ])
})

async function mcpPhase () {
  const t = tally('MCP /mcp')
  const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const init = { method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'fuzz', version: '1' } } }
  const opened = await fetch(`${BASE}/mcp`, { method: 'POST', headers: { ...headers, authorization: `Bearer ${KEY}` }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, ...init }) })
  const session = opened.headers.get('mcp-session-id') ?? ''
  await opened.text()
  for (let i = 0; i < 150; i++) {
    const body = pick<unknown>([
      { ...init }, { id: 1, ...init }, { jsonrpc: '2.0', ...init }, 'not json', [], [{ jsonrpc: '2.0', id: 1, method: 'tools/list' }],
      { jsonrpc: '2.0', id: i, method: 'tools/call', params: { name: pick(['execute_code', 'read_file', 'write_file', 'list_files', 'nope']), arguments: mutate({ code: 'print(1)', path: '.', content: 'x' }) } },
      { jsonrpc: '2.0', id: i, method: 'tools/call', params: pick(ODD_VALUES) }, { jsonrpc: '2.0', id: i, method: pick(['resources/list', 'prompts/list', 'x', 'ping', 'tasks/list']) },
      // Tasks: a task tool with and without task augmentation, and task ids that are not, or not yet, anything.
      { jsonrpc: '2.0', id: i, method: 'tools/call', params: { name: 'execute_code_task', arguments: mutate({ code: 'print(1)' }), ...(random() < 0.5 ? { task: mutate({ ttl: 1000 }) } : {}) } },
      { jsonrpc: '2.0', id: i, method: pick(['tasks/get', 'tasks/result', 'tasks/cancel']), params: mutate({ taskId: pick(['run_nope', 'x', '', 'run_' + 'a'.repeat(5000)]) }) }
    ])
    const res = await call('POST', '/mcp', { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { ...headers, ...(random() < 0.8 && session ? { 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' } : {}) } })
    t.requests++
    if (typeof res !== 'string') seen(t, res.status)
    if (res === 'hang') { t.hangs++; note(t, `hang: ${JSON.stringify(body).slice(0, 100)}`) } else if (res !== 'error' && res.status >= 500) { t.s5xx++; note(t, `${res.status}: ${JSON.stringify(body).slice(0, 100)}`) } else if (res !== 'error' && /"code":-32603/.test(res.text)) { t.undocumented++; note(t, `internal error (-32603): ${JSON.stringify(body).slice(0, 100)} ${res.text.slice(0, 160)}`) }
  }
  await healthy()
}

async function multipartPhase () {
  const t = tally('multipart upload')
  const variants: Array<[string, string]> = [
    ['multipart/form-data', '--x\r\ncontent-disposition: form-data; name="file"; filename="a"\r\n\r\nhi\r\n--x--\r\n'],
    ['multipart/form-data; boundary=', 'anything'],
    ['multipart/form-data; boundary=x', ''],
    ['multipart/form-data; boundary=y', '--x\r\ncontent-disposition: form-data; name="file"; filename="a"\r\n\r\nhi\r\n--x--\r\n'],
    ['multipart/form-data; boundary=x', '--x\r\ncontent-disposition: form-data; name="file"; filename="a"\r\n\r\nhi'],
    ['multipart/form-data; boundary=x', '--x\r\ncontent-disposition: form-data; name="entity_id"\r\n\r\nabc\r\n--x--\r\n'],
    ['multipart/form-data; boundary=x', '--x\r\ncontent-disposition: form-data; name="file"; filename="../../etc/passwd"\r\n\r\nhi\r\n--x--\r\n'],
    ['application/json', '{}']
  ]
  for (let i = 0; i < 40; i++) {
    const [type, body] = pick(variants)
    // The admin key: the REST phase may have used the user key's whole sandbox allowance.
    const res = await call('POST', '/librechat/v1/upload', { body, headers: { 'content-type': type, 'x-api-key': ADMIN, authorization: `Bearer ${ADMIN}` } })
    t.requests++
    if (typeof res !== 'string') seen(t, res.status)
    if (res === 'hang') { t.hangs++; note(t, `hang: ${type}`) } else if (res !== 'error' && res.status >= 500 && res.status !== 503) { t.s5xx++; note(t, `${res.status}: ${type} ${res.text.slice(0, 120)}`) }
  }
  await healthy()
}

/** E2B's data plane with a real sandbox's headers: mutated Connect messages (unary and enveloped), /files, the interpreter. */
async function e2bPhase () {
  const t = tally('E2B data plane')
  const made = await call('POST', '/e2b/v2/sandboxes', { body: '{}', headers: { 'content-type': 'application/json', 'x-api-key': ADMIN } })
  if (typeof made === 'string' || made.status !== 201) { t.s5xx++; note(t, `could not create an E2B sandbox: ${typeof made === 'string' ? made : made.text.slice(0, 200)}`); return }
  const created = JSON.parse(made.text) as { sandboxID: string, envdAccessToken: string }
  const headers = (port: string) => ({ 'e2b-sandbox-id': created.sandboxID, 'e2b-sandbox-port': port, 'x-access-token': created.envdAccessToken })
  const frame = (body: string) => { const json = Buffer.from(body); const head = Buffer.alloc(5); head.writeUInt32BE(random() < 0.1 ? 2 ** 31 : json.length, 1); return Buffer.concat([head, json]) }
  const unary = ['process.Process/List', 'process.Process/SendInput', 'process.Process/SendSignal', 'process.Process/CloseStdin', 'process.Process/Update',
    'filesystem.Filesystem/Stat', 'filesystem.Filesystem/MakeDir', 'filesystem.Filesystem/Move', 'filesystem.Filesystem/ListDir', 'filesystem.Filesystem/Remove',
    'filesystem.Filesystem/CreateWatcher', 'filesystem.Filesystem/GetWatcherEvents', 'filesystem.Filesystem/RemoveWatcher', 'process.Process/Nope', 'x/y']
  const streams = ['process.Process/Start', 'process.Process/Connect', 'filesystem.Filesystem/WatchDir']
  const message = () => mutate(pick<unknown>([
    { path: pick(['/home/user', 'a.txt', '/etc', '../x', 'dir', 'fifo']), depth: pick([1, 2, 1e9, -1]) },
    { source: 'a.txt', destination: pick(['b.txt', '/tmp/x', '../../y']) },
    { process: { selector: { pid: pick([1, 99999, 2 ** 40, -1]) } }, input: { stdin: 'aGk=' }, signal: pick(['SIGNAL_SIGKILL', 9, 'x']) },
    { process: { cmd: pick(['/bin/echo', '', 'true']), args: pick([['hi'], 'x', [1]]), envs: pick([{ A: 'b' }, { 'A B': 'c' }, []]) }, pty: pick([undefined, { size: { cols: 1e9, rows: -1 } }]), stdin: pick([true, 'x']) },
    { watcherId: pick(['x', '', 7]) }
  ]))
  for (let i = 0; i < 200; i++) {
    const streamed = random() < 0.35
    const path = streamed ? pick(streams) : pick(unary)
    const body = JSON.stringify(message()) ?? 'null'
    const res = await call('POST', `/e2b/sandbox/${path}`, {
      body: streamed ? (random() < 0.1 ? Buffer.from('xy') : frame(body)) : (random() < 0.1 ? '{not json' : body),
      headers: { ...headers('49983'), 'content-type': streamed ? 'application/connect+json' : 'application/json', ...(streamed ? { 'connect-timeout-ms': '300' } : {}) }
    })
    t.requests++
    if (res === 'hang') { t.hangs++; note(t, `hang: ${path} ${body.slice(0, 100)}`); continue }
    if (res === 'error') { if (crashed) return; continue }
    seen(t, res.status)
    if (res.status >= 500 && ![501, 502, 503].includes(res.status)) { t.s5xx++; note(t, `${res.status}: ${path} ${body.slice(0, 100)} ${res.text.slice(0, 160)}`) }
    if (/"code":"internal"/.test(res.text)) { t.undocumented++; note(t, `internal: ${path} ${body.slice(0, 100)} ${res.text.slice(0, 160)}`) }
  }
  for (let i = 0; i < 60; i++) {
    const [method, path, port, body] = pick<[string, string, string, string | undefined]>([
      ['GET', `/files?path=${encodeURIComponent(pick(['/home/user', '/home/user/fifo', '/etc/passwd', 'a.txt', '%00', '']))}&username=${pick(['user', 'root', ''])}`, '49983', undefined],
      ['POST', `/files?path=${encodeURIComponent(pick(['/home/user/up.txt', '/home/user', '']))}`, '49983', 'data'],
      ['POST', '/execute', '49999', JSON.stringify(mutate({ code: '1+1', language: 'python' }))],
      ['POST', '/execute', '49999', JSON.stringify({ code: '1', context_id: pick(ODD_IDS) })],
      ['POST', '/contexts', '49999', JSON.stringify(mutate({ language: 'js', cwd: '/home/user' }))],
      ['POST', `/contexts/${encodeURIComponent(pick(ODD_IDS))}/restart`, '49999', undefined],
      ['DELETE', `/contexts/${encodeURIComponent(pick(ODD_IDS))}`, '49999', undefined],
      ['GET', '/health', pick(['49983', '1', '70000', 'x']), undefined]
    ])
    const res = await call(method, `/e2b/sandbox${path}`, { ...(body === undefined ? {} : { body }), headers: { ...headers(port), 'content-type': path.startsWith('/files') ? 'application/octet-stream' : 'application/json' } })
    t.requests++
    if (res === 'hang') { t.hangs++; note(t, `hang: ${method} ${path}`); continue }
    if (res === 'error') { if (crashed) return; continue }
    seen(t, res.status)
    if (res.status >= 500 && ![501, 502, 503].includes(res.status)) { t.s5xx++; note(t, `${res.status}: ${method} ${path} ${res.text.slice(0, 160)}`) }
  }
  await call('DELETE', `/e2b/sandboxes/${created.sandboxID}`, { headers: { 'x-api-key': ADMIN } })
  await healthy()
}

// --- the run ----------------------------------------------------------------------------------------------------
async function main (): Promise<number> {
  for (let i = 0; i < 300; i++) {
    if (crashed) break
    const res = await call('GET', '/v1/health')
    if (typeof res !== 'string' && res.status === 200) break
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  if (crashed) throw new Error(`${crashed}\n${stderr}`)
  const startRss = rss()
  const doc = JSON.parse(((await call('GET', '/docs/json')) as { text: string }).text)
  const session = JSON.parse(((await call('POST', '/v1/sessions', { body: '{}', headers: { 'content-type': 'application/json' } })) as { text: string }).text).id
  const sandbox = JSON.parse(((await call('POST', '/v1/sandboxes', { body: '{}', headers: { 'content-type': 'application/json' } })) as { text: string }).text).id
  await call('POST', `/v1/sandboxes/${sandbox}/execute`, { body: JSON.stringify({ code: 'import os\nos.makedirs("dir", exist_ok=True)\nos.mkfifo("fifo")\nopen("a.txt","w").write("a")' }), headers: { 'content-type': 'application/json' } })
  const kernel = JSON.parse(((await call('POST', '/jupyter/api/kernels', { body: '{}', headers: { 'content-type': 'application/json' } })) as { text: string }).text).id
  const ids: Record<string, string> = { id: sandbox, session_id: session, kernel_id: kernel }
  const started = Date.now()
  // First, with the admin key's sandbox allowance (the phases after spend it).
  await e2bPhase()
  await restPhase(doc, { ...ids, id: sandbox })
  await restPhase({ paths: Object.fromEntries(Object.entries(doc.paths).filter(([p]) => p.startsWith('/v1/sessions'))) }, { ...ids, id: session })
  if (!crashed) await socketPhase('WebSocket /v1/ws', `${BASE.replace('http', 'ws')}/v1/ws`, wsFrames, ['interpreter.v1'])
  if (!crashed) await socketPhase('Terminal /pty', `${BASE.replace('http', 'ws')}/v1/sandboxes/${sandbox}/pty`, terminalFrames)
  if (!crashed) await socketPhase('Jupyter channels', `${BASE.replace('http', 'ws')}/jupyter/api/kernels/${kernel}/channels`, jupyterFrames)
  if (!crashed) {
    // Open Terminal's terminal: made over HTTP for a user and chat, then attached with odd frames (the first may be its auth frame).
    const scope = { 'x-user-id': 'fuzz-user' }
    const made = await call('POST', '/terminal/api/terminals', { headers: scope })
    const id = typeof made === 'string' ? '1' : (JSON.parse(made.text) as { id?: string }).id ?? '1'
    await socketPhase('Open Terminal socket', `${BASE.replace('http', 'ws')}/terminal/api/terminals/${id}?user_id=fuzz-user`, openTerminalFrames)
  }
  if (!crashed) await mcpPhase()
  if (!crashed) await multipartPhase()
  const endRss = rss()
  await call('DELETE', `/v1/sandboxes/${sandbox}`)
  await call('DELETE', `/jupyter/api/kernels/${kernel}`)
  await stopServer()

  const rows = [...phases.entries()]
  const total = rows.reduce((n, [, r]) => n + r.requests, 0)
  console.log(`fuzz seed ${SEED}: ${total} requests and frames in ${Math.round((Date.now() - started) / 1000)} s`)
  console.log('| phase | requests | 5xx (not 503) | undocumented status | hangs |')
  console.log('| --- | --- | --- | --- | --- |')
  for (const [name, r] of rows) console.log(`| ${name} | ${r.requests} | ${r.s5xx} | ${r.undocumented} | ${r.hangs} |`)
  console.log(`process crashes: ${crashed ? 1 : 0}${crashed ? ` (${crashed})` : ''}; health failures: ${healthFailures}; server RSS ${startRss.toFixed(0)} MB -> ${endRss.toFixed(0)} MB`)
  if (crashed) console.log(`  the server's last words: ${(stderr.match(/^.*(Error|error).*$/m)?.[0] ?? stderr.slice(-300)).trim().slice(0, 300)}`)
  for (const [name, r] of rows) if (r.statuses.size) console.log(`  statuses, ${name}: ${[...r.statuses].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${s}x${n}`).join(' ')}`)
  for (const [key, n] of undocumented) console.log(`  undocumented: ${key} (${n}x)`)
  for (const [name, r] of rows) for (const e of r.examples) console.log(`  ${name}: ${e.slice(0, 300)}`)
  const bad = Boolean(crashed) || healthFailures > 0 || rows.some(([, r]) => r.s5xx || r.undocumented || r.hangs)
  return bad ? 1 : 0
}

/**
 * Stops the server and waits for it: its shutdown removes its sandboxes (SANDBOX_KEEP_ON_CLOSE=false), which it cannot
 * finish once this process is gone (its stderr is our pipe). Killed outright after 30 s.
 */
async function stopServer (): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return
  const exited = new Promise(resolve => server.once('exit', resolve))
  stopping = true
  server.kill('SIGTERM')
  const timer = setTimeout(() => server.kill('SIGKILL'), 30_000)
  await exited
  clearTimeout(timer)
}

main().then(async code => { await stopServer(); process.exit(code) }, async (err: Error) => { console.error(err.message); await stopServer(); process.exit(2) })
