// Security regressions of issue 20 that need real sandboxes: reads of what is not a file, a restart under a running
// cell, Jupyter cells and sockets under the limits, and a session's stored output kept within its budget.
import t from 'tap'
import WebSocket from 'ws'
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, waitFor } from '../helper.js'

const alice = auth(KEYS.alice)
let app: FastifyInstance
let base: string

t.before(async () => {
  const config = await sandboxConfig({ POOL_SIZE: '2', KERNEL_KILL_GRACE_MS: '500', SESSION_RATE_LIMIT_PER_MINUTE: '8', WS_MAX_SOCKETS_PER_KEY: '2', SESSION_STORED_BYTES: '65536' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  app = await build(t, config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

const healthy = async () => (await app.inject({ method: 'GET', url: '/v1/health' })).statusCode === 200

t.test('1, 4: a directory, the workspace itself or a FIFO read as a file is a 400, and the sandbox and server go on', async (t) => {
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  const made = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'import os\nos.makedirs("d/e")\nos.mkfifo("pipe")\nprint("made")' } })
  t.equal(made.json().stdout, 'made\n')
  for (const [path, code] of [['d', 'is_a_directory'], ['d/e/', 'is_a_directory'], ['', 'is_a_directory'], ['.', 'is_a_directory'], ['pipe', 'not_a_regular_file']]) {
    const res = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/${path}`, headers: alice })
    t.equal(res.statusCode, 400, `GET files/${path}`)
    t.equal(res.json().error.code, code)
  }
  t.ok(await healthy(), 'the server is up')
  const after = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'print("still here")' } })
  t.equal(after.json().stdout, 'still here\n', 'the sandbox answers: the FIFO did not wedge its agent')

  // The same file path through MCP's read_file.
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: alice } })
  const client = new Client({ name: 'hostile', version: '1' })
  await client.connect(transport)
  t.teardown(() => client.close())
  for (const path of ['.', '']) {
    const read = await client.callTool({ name: 'read_file', arguments: { path } })
    t.ok(read.isError, `MCP read_file ${JSON.stringify(path)} is a tool error`)
  }
  t.ok(await healthy(), 'the server is still up')
})

/** A Jupyter channels socket on a new kernel, with a helper that sends an execute_request and collects its reply. */
async function kernelSocket (t: { teardown: (fn: () => unknown) => void }) {
  const created = await app.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: 'python3' } })
  const id = created.json().id
  t.teardown(() => app.inject({ method: 'DELETE', url: `/jupyter/api/kernels/${id}`, headers: alice }))
  const ws = new WebSocket(`${base.replace('http', 'ws')}/jupyter/api/kernels/${id}/channels?token=${KEYS.alice}`)
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const replies = new Map<string, (content: any) => void>()
  let printed = ''
  ws.on('message', (data) => {
    const m = JSON.parse(String(data))
    if (m.msg_type === 'stream') printed += m.content.text
    if (m.msg_type.endsWith('_reply')) replies.get(m.parent_header.msg_id)?.(m.content)
  })
  const send = (type: string, content: object, channel = 'shell'): Promise<any> => {
    const msgId = randomUUID()
    const answer = new Promise(resolve => replies.set(msgId, resolve))
    ws.send(JSON.stringify({ header: { msg_id: msgId, msg_type: type, username: 'u', session: 's', date: '', version: '5.3' }, parent_header: {}, metadata: {}, content, channel }))
    return answer
  }
  const execute = (code: string) => send('execute_request', { code, silent: false, stop_on_error: false })
  t.teardown(() => ws.close())
  return { id, ws, send, execute, printed: () => printed }
}

t.test('3: restarting a kernel while a cell runs, even several times at once, leaves it working', async (t) => {
  const { id, send, execute, printed } = await kernelSocket(t)
  t.equal((await execute('x = 1')).status, 'ok')
  const long = execute('import time\nprint("sleeping", flush=True)\ntime.sleep(30)')
  await waitFor('the cell runs', () => printed().includes('sleeping'))
  const restarts = await Promise.all([
    app.inject({ method: 'POST', url: `/jupyter/api/kernels/${id}/restart`, headers: alice }),
    app.inject({ method: 'POST', url: `/jupyter/api/kernels/${id}/restart`, headers: alice }),
    send('shutdown_request', { restart: true }, 'control'),
    app.inject({ method: 'POST', url: `/jupyter/api/kernels/${id}/restart`, headers: alice })
  ])
  t.same(restarts.filter((r: any) => typeof r.statusCode === 'number').map((r: any) => r.statusCode), [200, 200, 200], 'every REST restart answered')
  t.match(await long, { status: 'error' }, 'the running cell ended')
  const next = await execute('print("alive")\n"x" in globals()')
  t.equal(next.status, 'ok', 'a later cell runs')
})

t.test('8, 9: Jupyter cells count against the session limit; channels count against the socket cap', async (t) => {
  const { execute } = await kernelSocket(t)
  const replies = await Promise.all(Array.from({ length: 12 }, () => execute('1')))
  const limited = replies.filter(r => r.status === 'error' && r.ename === 'rate_limit_exceeded')
  t.ok(limited.length >= 4, `cells past SESSION_RATE_LIMIT_PER_MINUTE were refused (${limited.length} of 12)`)
  const second = new WebSocket(`${base.replace('http', 'ws')}/v1/ws`, ['interpreter.v1'], { headers: alice })
  await new Promise((resolve, reject) => { second.once('open', resolve); second.once('error', reject) })
  t.teardown(() => second.close())
  const created = await app.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: 'python3' } })
  t.teardown(() => app.inject({ method: 'DELETE', url: `/jupyter/api/kernels/${created.json().id}`, headers: alice }))
  const refused = await new Promise<number>((resolve) => {
    const third = new WebSocket(`${base.replace('http', 'ws')}/jupyter/api/kernels/${created.json().id}/channels?token=${KEYS.alice}`)
    third.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
    third.once('open', () => { third.close(); resolve(101) })
  })
  t.equal(refused, 429, 'a third socket of the key (one channels, one /v1/ws open) is refused')
})

t.test("10: a session's stored messages and event log stay within SESSION_STORED_BYTES", async (t) => {
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.bob), payload: {} })).json()
  for (let i = 0; i < 5; i++) {
    const run = await app.runs.executeDirect(session, 'python', 'print("y" * 40000)', { via: 'rest' })
    const outcome = await run.done
    t.equal(outcome.execution?.stdout.length, 40001, `run ${i} printed its output`)
  }
  const redis = app.redis!
  const messages = await redis.lrange(`messages:${session.id}`, 0, -1)
  const messageBytes = messages.reduce((n, m) => n + Buffer.byteLength(m), 0)
  t.ok(messageBytes <= 65536, `the message list holds ${messageBytes} bytes`)
  t.ok(messages.length >= 1, 'the newest messages are kept')
  t.match(messages.at(-1), /y{1000}/, 'the newest output is among them')
  const events = await redis.xrange(`events:${session.id}`, '-', '+')
  const eventBytes = events.reduce((n, [, fields]) => n + Buffer.byteLength(fields[1]), 0)
  t.ok(eventBytes <= 65536 + 45000, `the event log holds ${eventBytes} bytes (the budget, plus at most the newest batch)`)
  const listed = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}/messages`, headers: auth(KEYS.bob) })
  t.equal(listed.statusCode, 200, 'what is kept reads as usual')
})

t.test('13: malformed multipart and a kernel name that is not a string are 400s, and leave no sandbox behind', async (t) => {
  const before = (await app.inject({ method: 'GET', url: '/v1/sandboxes', headers: alice })).json().data.length
  const part = '--x\r\ncontent-disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhi'
  for (const [type, body] of [['multipart/form-data', `${part}\r\n--x--\r\n`], ['multipart/form-data; boundary=', 'x'], ['multipart/form-data; boundary=y', `${part}\r\n--x--\r\n`], ['multipart/form-data; boundary=x', part], ['multipart/form-data; boundary=x', '--x\r\nbroken header\r\n\r\nhi\r\n--x--\r\n']]) {
    const res = await app.inject({ method: 'POST', url: '/librechat/v1/upload', headers: { 'x-api-key': KEYS.alice, 'content-type': type }, payload: body })
    t.equal(res.statusCode, 400, `${type}: ${JSON.stringify(body.slice(-12))}`)
  }
  const kernel = await app.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: { toString: 'x' } } })
  t.equal(kernel.statusCode, 400)
  t.match(kernel.json(), { reason: 'validation_error', message: /body\/name/ })
  t.equal((await app.inject({ method: 'GET', url: '/v1/sandboxes', headers: alice })).json().data.length, before, 'no sandbox was left behind')
})

t.test('13: CPU shares the host cannot give are 400s with our error body, never a 500 or a silent full CPU', async (t) => {
  for (const cpus of [0.001, 1e-9, 0]) {
    const res = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { resources: { cpus } } })
    t.equal(res.statusCode, 400, `cpus ${cpus}`)
    t.equal(res.json().error.code, 'validation_error')
  }
  const many = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { resources: { cpus: 16 } } })
  if (many.statusCode === 201) {
    t.pass('this host has 16 CPUs to give')
    await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${many.json().id}`, headers: alice })
  } else {
    t.equal(many.statusCode, 400, 'more CPUs than the host has')
    t.match(many.json().error, { code: 'validation_error', message: /cannot give 16 CPUs/ })
  }
})
