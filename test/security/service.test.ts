// Security regressions of issue 20 that need Redis but no sandbox: one request must not take the service down, flap it
// for other keys, or slip past a limit. Each test names the numbered finding it guards (11, the egress wall: its address
// arithmetic in test/unit/egress.test.ts, the proxy in test/services/sandbox/network.test.ts).
import t from 'tap'
import WebSocket from 'ws'
import { connect } from 'node:net'
import { Writable } from 'node:stream'
import { build, testConfig, auth, KEYS, REDIS_URL, flushPrefix, sleep, waitFor } from '../helper.js'
import type { RunEvent } from '../../schemas/chat.js'

const alice = auth(KEYS.alice)

/** The whole app on a test config with `overrides`, its Redis keys removed after the test. */
async function appWith (t: { teardown: (fn: () => unknown) => void, after: (fn: () => unknown) => void }, overrides: Record<string, string> = {}) {
  const config = testConfig(overrides)
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  return await build(t, config)
}

/** The same, listening on a loopback port. */
async function listeningWith (t: Parameters<typeof appWith>[0], overrides: Record<string, string> = {}) {
  const app = await appWith(t, overrides)
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  return { app, base, port: (app.server.address() as { port: number }).port }
}
const bob = auth(KEYS.bob)

t.test('2: an offset or event id Redis would reject is a 400 naming the field, and other keys never see a 503', async (t) => {
  const app = await appWith(t)
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: bob, payload: {} })).json()
  const bad = ['/v1/sessions?offset=1e21', '/v1/sessions?offset=99999999999999999999', `/v1/sessions/${session.id}/messages?offset=1e21`]
  const others = Array.from({ length: 24 }, () => app.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: bob }))
  const answers = await Promise.all(bad.map(url => app.inject({ method: 'GET', url, headers: url.includes('messages') ? bob : alice })))
  for (const [i, res] of answers.entries()) {
    t.equal(res.statusCode, 400, bad[i])
    t.match(res.json().error, { code: 'validation_error', message: /offset/ }, 'the message names the field')
  }
  const theirs = await Promise.all(others)
  t.same(theirs.map(r => r.statusCode), theirs.map(() => 200), 'every request of another key succeeded meanwhile')
  const after = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}/events?after=99999999999999999999-0`, headers: bob })
  t.equal(after.statusCode, 400, 'an event id beyond what Redis takes')
  t.match(after.json().error.message, /after/)
  t.equal(app.redis!.status, 'ready', 'the shared Redis connection was never dropped')
})

t.test('5: an MCP initialize that is not a JSON-RPC request with an id opens nothing; idle MCP sessions end', async (t) => {
  const { app, base } = await listeningWith(t, { MCP_SESSION_IDLE_S: '1' })
  const init = { method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }
  const post = (body: object, headers: Record<string, string> = {}) => fetch(`${base}/mcp`, { method: 'POST', headers: { ...alice, 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers }, body: JSON.stringify(body) })
  const count = async () => (await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data.length
  for (const body of [{ jsonrpc: '2.0', ...init }, { id: 1, ...init }, { jsonrpc: '2.0', id: null, ...init }]) {
    const res = await post(body)
    t.equal(res.status, 400, JSON.stringify(Object.keys(body)))
    t.equal((await res.json()).error.code, -32600)
  }
  t.equal(await count(), 0, 'no session, no server object was made for them')
  const opened = await post({ jsonrpc: '2.0', id: 1, ...init })
  t.equal(opened.status, 200)
  const id = opened.headers.get('mcp-session-id')!
  await opened.text()
  t.equal(await count(), 1)
  await waitFor('the idle sweep ended the MCP session', async () => await count() === 0, { every: 200 })
  const later = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { 'mcp-session-id': id, 'mcp-protocol-version': '2025-06-18' })
  t.equal(later.status, 404, 'the idle MCP session ended')
  t.equal(await count(), 0, 'and its session with it')
})

t.test('6: an SSE follower that does not read holds one buffer, and is let go after WS_SLOW_CLOSE_MS', async (t) => {
  const { app, port } = await listeningWith(t, { WS_SLOW_CLOSE_MS: '300' })
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
  const text = 'x'.repeat(64 * 1024)
  const events: RunEvent[] = Array.from({ length: 200 }, () => ({ type: 'chunk', run_id: 'r', chunk: { role: 'computer', type: 'console', format: 'output', content: text } }) as RunEvent)
  for (let i = 0; i < events.length; i += 20) await app.events.appendMany(session.id, events.slice(i, i + 20))
  const socket = connect(port, '127.0.0.1')
  socket.pause()
  socket.write(`GET /v1/sessions/${session.id}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEYS.alice}\r\n\r\n`)
  await sleep(1500)
  let received = ''
  let ended = false
  socket.on('end', () => { ended = true })
  socket.on('close', () => { ended = true })
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { received += chunk })
  socket.resume()
  // The stream's last chunk, or the connection's end.
  await waitFor('the server ended the stream', () => ended || received.endsWith('0\r\n\r\n'))
  socket.destroy()
  const got = received.split('\nevent: message\n').length - 1
  t.ok(got < 150, `the server stopped pulling the log for a client that did not read (it got ${got} of 200 events)`)
  t.ok(received.endsWith('0\r\n\r\n'), 'and ended the stream (the client can resume with Last-Event-ID)')
})

t.test('7: a request body trickled slower than REQUEST_TIMEOUT_MS is cut off with 408', async (t) => {
  const { port } = await listeningWith(t, { REQUEST_TIMEOUT_MS: '1000' })
  const socket = connect(port, '127.0.0.1')
  let answer = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { answer += chunk })
  const closed = new Promise<number>(resolve => { const at = Date.now(); socket.on('close', () => resolve(Date.now() - at)) })
  socket.write(`POST /v1/sessions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${KEYS.alice}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{`)
  const trickle = setInterval(() => { if (!socket.destroyed) socket.write(' ') }, 200)
  const ms = await Promise.race([closed, sleep(30_000).then(() => -1)])
  clearInterval(trickle)
  socket.destroy()
  t.not(ms, -1, 'the server closed the connection')
  t.match(answer, /^HTTP\/1\.1 408/, 'with 408 Request Timeout')
})

t.test('8: WebSocket messages count against the key\'s rate limit like requests do', async (t) => {
  const { app, base } = await listeningWith(t, { RATE_LIMIT_PER_MINUTE: '6' })
  const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/ws`, ['interpreter.v1'], { headers: alice })
  const frames: any[] = []
  ws.on('message', (data) => frames.push(JSON.parse(String(data))))
  await new Promise(resolve => ws.once('open', resolve))
  for (let i = 0; i < 10; i++) ws.send(JSON.stringify({ type: 'hello' }))
  await waitFor('ten answers came', () => frames.length >= 10)
  ws.close()
  const hellos = frames.filter(f => f.type === 'hello').length
  const limited = frames.filter(f => f.type === 'error' && f.error.code === 'rate_limit_exceeded')
  t.equal(hellos, 5, 'the upgrade and five hellos spent the six requests a minute: a socket\'s actions and requests share one budget')
  t.equal(limited.length, 10 - hellos, 'the other hellos were refused with the 429 error')
  t.match(limited[0], { of: 'hello', error: { type: 'rate_limit_error', retry_after: Number } })
  const sessions = (await app.inject({ method: 'GET', url: '/v1/sessions?limit=100', headers: auth(KEYS.bob) })).statusCode
  t.equal(sessions, 200, 'another key is not affected')
})

t.test('12: a key in the query string is redacted in the access log however it is spelled', async (t) => {
  let logged = ''
  const stream = new Writable({ write (chunk, _enc, done) { logged += String(chunk); done() } })
  const config = testConfig({ LOG_LEVEL: 'info' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config, { logger: { stream } })
  for (const q of ['%74oken', 'tok%65n', 'token']) {
    const res = await app.inject({ method: 'GET', url: `/jupyter/api/status?${q}=${KEYS.alice}` })
    t.equal(res.statusCode, 200, `?${q}= authenticates`)
  }
  t.notMatch(logged, KEYS.alice, 'the key is in no log line')
  t.equal(logged.match(/\[redacted\]/g)?.length, 3)
})

t.test('13: odd input the router, the settings and MCP see gets the documented 4xx', async (t) => {
  const app = await appWith(t)
  const badEscape = await app.inject({ method: 'GET', url: '/v1/sessions/%ff', headers: alice })
  t.equal(badEscape.statusCode, 400)
  t.match(badEscape.json(), { error: { code: 'bad_url', type: 'invalid_request_error' } }, 'a malformed escape gets our error body')
  const longId = await app.inject({ method: 'GET', url: `/v1/sessions/${'a'.repeat(500)}`, headers: alice })
  t.equal(longId.statusCode, 400, 'a long id is a validation error, not the router\'s 414')
  t.match(longId.json().error, { code: 'validation_error', message: /id/ })
  const unknown = await app.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { nope: { deep: 1 } } })
  t.equal(unknown.statusCode, 400, 'an unknown settings field is refused')
  t.notOk('nope' in (await app.inject({ method: 'GET', url: '/v1/settings', headers: auth(KEYS.admin) })).json(), 'and never stored')
  app.settings.update({ nope: 1 } as never)
  t.notOk('nope' in app.settings.get(), 'a stored or broadcast change cannot add a field either')

  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const headers = { ...alice, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
  const opened = await fetch(`${base}/mcp`, { method: 'POST', headers, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } }) })
  const session = { 'mcp-session-id': opened.headers.get('mcp-session-id')!, 'mcp-protocol-version': '2025-06-18' }
  await opened.text()
  for (const params of [5, null, { arguments: {} }, { name: 'execute_code', arguments: 'print(1)' }]) {
    const res = await fetch(`${base}/mcp`, { method: 'POST', headers: { ...headers, ...session }, body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/call', params }) })
    const body = await res.json() as { id: number, error: { code: number, message: string } }
    t.equal(body.error.code, -32602, `tools/call params ${JSON.stringify(params)}: invalid params`)
    t.equal(body.id, 7)
  }
})

t.test('14: the pub/sub channel names the Redis database, so deployments on one Redis do not share it', async (t) => {
  const one = testConfig({ REDIS_URL: `${REDIS_URL}/1`, REDIS_PREFIX: 'same:' })
  const two = testConfig({ REDIS_URL: `${REDIS_URL}/2`, REDIS_PREFIX: 'same:' })
  const a = await build(t, one)
  const b = await build(t, two)
  const channel = (app: typeof a) => (app.bus as unknown as { channel: string }).channel
  t.not(channel(a), channel(b))
  t.match(channel(a), /db1$/)
  const seen: unknown[] = []
  b.bus!.on('settings', (change: unknown) => seen.push(change))
  await a.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { auto_run: false } })
  // A change on b's own database, published after a's: Redis delivers in publish order, so once b has it, a's change
  // would have come first had it been on b's channel.
  const c = await build(t, testConfig({ REDIS_URL: `${REDIS_URL}/2`, REDIS_PREFIX: 'same:' }))
  await c.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { execution_timeout_ms: 12345 } })
  await waitFor('b heard its own deployment', () => seen.length > 0)
  t.match(seen, [{ execution_timeout_ms: 12345 }], "the other deployment did not apply the first one's settings")
  t.equal(b.settings.get().auto_run, true)
  await a.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { reset: true } })
  await c.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { reset: true } })
})

t.test('SANDBOX_ENABLED=false refuses a sandbox to every protocol, from the one place that makes them', async (t) => {
  const app = await appWith(t, { SANDBOX_ENABLED: 'false' })
  const direct = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })
  t.match(direct.json(), { error: { code: 'sandboxes_disabled' } })
  const librechat = await app.inject({ method: 'POST', url: '/librechat/v1/exec', headers: { 'x-api-key': KEYS.alice }, payload: { lang: 'py', code: 'print(1)' } })
  t.equal(librechat.statusCode, 503)
  t.match(librechat.json(), { code: 'sandboxes_disabled' })
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
  const run = await app.runs.executeDirect(session, 'python', 'print(1)', { via: 'rest' })
  const outcome = await run.done
  t.match(outcome.error, { code: 'sandboxes_disabled' }, 'a run (WebSocket, chat, MCP, Jupyter) ends with the same 503')
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/ws`, ['interpreter.v1'], { headers: alice })
  const frames: any[] = []
  ws.on('message', (data) => frames.push(JSON.parse(String(data))))
  await new Promise(resolve => ws.once('open', resolve))
  ws.send(JSON.stringify({ type: 'hello' }))
  ws.send(JSON.stringify({ type: 'execute', language: 'python', code: 'print(1)' }))
  await waitFor('the socket was told sandboxes are disabled', () => frames.some(f => JSON.stringify(f).includes('sandboxes_disabled')))
  ws.close()
  t.ok(frames.some(f => JSON.stringify(f).includes('sandboxes_disabled')), 'over the WebSocket too')
})
