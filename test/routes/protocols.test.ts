import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { FakeLlm } from '../fake-llm.js'
import Docker from 'dockerode'
import { auth, KEYS, fakeLlmConfig, fakeLlmApp, flushPrefix, REDIS_URL, waitFor, containersIn } from '../helper.js'
import type { Config } from '../../services/config.js'

// One front door: every protocol's executions go through SandboxService.execute, which counts each once under the
// protocol that asked (sandbox_executions_total{protocol}). Before, only REST and Jupyter counted theirs.
const alice = auth(KEYS.alice)
const fake = new FakeLlm()
let app: FastifyInstance
let config: Config
let base: string

t.before(async () => {
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '1' })
  app = await fakeLlmApp(config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})
t.teardown(async () => {
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})

const containerExists = (id: string) => new Docker().getContainer(id).inspect().then(() => true, () => false)

/** sandbox_executions_total summed by protocol, as /metrics shows it. */
async function byProtocol (): Promise<Record<string, number>> {
  const text = (await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })).body
  const counts: Record<string, number> = {}
  for (const [, labels, value] of text.matchAll(/^sandbox_executions_total\{([^}]*)\} (\d+)$/gm)) {
    const protocol = /protocol="([^"]+)"/.exec(labels)![1]
    counts[protocol] = (counts[protocol] ?? 0) + Number(value)
  }
  return counts
}

const code = 'print(6 * 7)'
const ways: Record<string, () => Promise<unknown>> = {
  async rest () {
    const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
    const res = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })
    return res.json().stdout
  },
  async chat () {
    fake.script('gpt-test', { code: { language: 'python', code } }, { text: 'It is 42.' })
    const res = await app.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload: { messages: [{ role: 'user', content: 'six times seven?' }], config: { llm: { model: 'gpt' } } } })
    return JSON.stringify(res.json().messages)
  },
  async openai () {
    fake.script('gpt-test', { code: { language: 'python', code } }, { text: 'It is 42.' })
    const res = await app.inject({ method: 'POST', url: '/v1/chat/completions', headers: alice, payload: { model: 'gpt', messages: [{ role: 'user', content: 'six times seven?' }] } })
    return res.json().choices[0].message.content
  },
  async websocket () {
    const ws = new WebSocket(`${base.replace('http', 'ws')}/v1/ws`, ['interpreter.v1'], { headers: alice })
    const frames: any[] = []
    ws.on('message', (data) => frames.push(JSON.parse(String(data))))
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    ws.send(JSON.stringify({ type: 'hello' }))
    await waitFor('hello', () => frames.some(f => f.type === 'hello'))
    ws.send(JSON.stringify({ type: 'execute', language: 'python', code }))
    await waitFor('the execution is done', () => frames.some(f => f.event === 'done'))
    ws.close()
    return frames.filter(f => f.event === 'message').map(f => f.data.content).join('')
  },
  async librechat () {
    const res = await app.inject({ method: 'POST', url: '/librechat/v1/exec', headers: { 'x-api-key': KEYS.alice }, payload: { lang: 'py', code } })
    return res.json().stdout
  },
  async mcp () {
    const client = new Client({ name: 'protocols-test', version: '1' })
    await client.connect(new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { requestInit: { headers: alice } }))
    try {
      const result = await client.callTool({ name: 'execute_code', arguments: { code } })
      return JSON.stringify(result.content)
    } finally {
      await client.close()
    }
  },
  async jupyter () {
    const id = (await app.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: 'python3' } })).json().id
    const ws = new WebSocket(`${base.replace('http', 'ws')}/jupyter/api/kernels/${id}/channels?token=${KEYS.alice}`)
    let printed = ''
    let replied = false
    ws.on('message', (data) => {
      const m = JSON.parse(String(data))
      if (m.msg_type === 'stream') printed += m.content.text
      if (m.msg_type === 'execute_reply') replied = true
    })
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
    ws.send(JSON.stringify({ header: { msg_id: randomUUID(), msg_type: 'execute_request', username: 'u', session: 's', date: '', version: '5.3' }, parent_header: {}, metadata: {}, content: { code, silent: false }, channel: 'shell' }))
    await waitFor('the execute_reply', () => replied)
    ws.close()
    await app.inject({ method: 'DELETE', url: `/jupyter/api/kernels/${id}`, headers: alice })
    return printed
  }
}

t.test('one execution through each protocol moves sandbox_executions_total for that protocol by one, and no other', async (t) => {
  for (const [protocol, run] of Object.entries(ways)) {
    const before = await byProtocol()
    t.match(String(await run()), /42/, `${protocol}: the code ran`)
    const after = await byProtocol()
    const moved = Object.fromEntries(Object.keys(after).filter(p => after[p] !== (before[p] ?? 0)).map(p => [p, after[p] - (before[p] ?? 0)]))
    t.same(moved, { [protocol]: 1 }, `${protocol}: counted once, under its own name`)
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })).body
  t.match(metrics, /sandbox_executions_total\{language="python",status="ok",protocol="librechat"\} 1/, 'LibreChat\'s run is counted under the language asked for, not its shell wrapper')
})

/** An app of its own with `overrides` (memory mode: REDIS_URL ''), closed after the test. */
async function appOf (t: { teardown: (fn: () => unknown) => void }, overrides: Record<string, string>) {
  const own = await fakeLlmConfig(fake.url, { POOL_SIZE: '0', ...overrides })
  const made = await fakeLlmApp(own, { waitWarm: false })
  const url = await made.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => {
    await made.close()
    if (own.REDIS_URL) await flushPrefix(REDIS_URL, own.REDIS_PREFIX)
  })
  return { app: made, url, namespace: own.SANDBOX_NAMESPACE }
}

t.test('SANDBOX_ENABLED=false: every protocol gets its own refusal, and no container is made', async (t) => {
  const { app: off, url, namespace } = await appOf(t, { SANDBOX_ENABLED: 'false' })
  fake.script('gpt-test', { code: { language: 'python', code } }, { text: 'done' })
  const chat = await off.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload: { messages: [{ role: 'user', content: 'run it' }], config: { llm: { model: 'gpt' } } } })
  t.match(JSON.stringify(chat.json()), /sandboxes_disabled/, 'chat: the run ends with sandboxes_disabled')
  fake.reset().script('gpt-test', { code: { language: 'python', code } }, { text: 'done' })
  const openai = await off.inject({ method: 'POST', url: '/v1/chat/completions', headers: alice, payload: { model: 'gpt', messages: [{ role: 'user', content: 'run it' }] } })
  t.match(openai.body, /sandboxes_disabled|disabled/, 'OpenAI-compatible: said in its answer')
  const librechat = await off.inject({ method: 'POST', url: '/librechat/v1/exec', headers: { 'x-api-key': KEYS.alice }, payload: { lang: 'py', code } })
  t.match({ status: librechat.statusCode, body: librechat.json() }, { status: 503, body: { code: 'sandboxes_disabled' } }, 'LibreChat: 503 in its shape')
  const jupyter = await off.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: 'python3' } })
  t.match({ status: jupyter.statusCode, body: jupyter.json() }, { status: 503, body: { reason: 'sandboxes_disabled' } }, 'Jupyter: 503 in its shape')
  const client = new Client({ name: 'protocols-test', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`${url}/mcp`), { requestInit: { headers: alice } }))
  const mcp = await client.callTool({ name: 'execute_code', arguments: { code } })
  await client.close()
  t.match(mcp, { isError: true, content: [{ text: /sandboxes_disabled/ }] }, 'MCP: a tool error')
  const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/ws`, ['interpreter.v1'], { headers: alice })
  const frames: any[] = []
  ws.on('message', (data) => frames.push(JSON.parse(String(data))))
  await new Promise(resolve => ws.once('open', resolve))
  ws.send(JSON.stringify({ type: 'hello' }))
  ws.send(JSON.stringify({ type: 'execute', language: 'python', code }))
  await waitFor('the socket was told', () => frames.some(f => JSON.stringify(f).includes('sandboxes_disabled')))
  ws.close()
  t.equal(await containersIn(namespace), 0, 'not one container was made')
  fake.reset() // the runs ended at their first execution: the models' second replies were never asked for
})

for (const mode of ['redis', 'memory'] as const) {
  t.test(`ending a session through each protocol removes its sandbox, its record and its event log (${mode})`, async (t) => {
    const { app: own, url } = await appOf(t, mode === 'memory' ? { REDIS_URL: '' } : {})
    t.equal(own.store.kind, mode)
    const gone = async (sessionId: string, containerId: string, how: string) => {
      t.equal(await own.store.getSession(sessionId), null, `${how}: the session is gone`)
      t.equal(await own.events.lastId(sessionId), null, `${how}: its event log is gone`)
      t.equal(await containerExists(containerId), false, `${how}: its sandbox's container is gone`)
    }
    const containerOf = async (sessionId: string) => {
      const session = await own.store.getSession(sessionId)
      return (await own.store.getSandbox(session!.sandbox_id!))!.container_id
    }
    // REST: a session with a sandbox and a run in its log, deleted.
    const rest = (await own.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
    await (await own.runs.executeDirect(rest, 'python', code, { via: 'rest' })).done
    const restContainer = await containerOf(rest.id)
    t.equal((await own.inject({ method: 'DELETE', url: `/v1/sessions/${rest.id}`, headers: alice })).statusCode, 204)
    await gone(rest.id, restContainer, 'REST')
    // MCP: the client ends its session (DELETE with the Mcp-Session-Id).
    const transport = new StreamableHTTPClientTransport(new URL(`${url}/mcp`), { requestInit: { headers: alice } })
    const client = new Client({ name: 'protocols-test', version: '1' })
    await client.connect(transport)
    await client.callTool({ name: 'execute_code', arguments: { code } })
    const mcpSession = transport.sessionId!
    const mcpContainer = await containerOf(mcpSession)
    await transport.terminateSession()
    await client.close()
    await gone(mcpSession, mcpContainer, 'MCP')
    // Jupyter: the kernel is shut down.
    const kernel = (await own.inject({ method: 'POST', url: '/jupyter/api/kernels', headers: alice, payload: { name: 'python3' } })).json()
    const kernelContainer = await containerOf(kernel.id)
    t.equal((await own.inject({ method: 'DELETE', url: `/jupyter/api/kernels/${kernel.id}`, headers: alice })).statusCode, 204)
    await gone(kernel.id, kernelContainer, 'Jupyter')
    // OpenAI-compatible, without X-Session-Id: the request's own session ends with it.
    const before = (await own.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data.length
    fake.script('gpt-test', { code: { language: 'python', code } }, { text: 'It is 42.' })
    const res = await own.inject({ method: 'POST', url: '/v1/chat/completions', headers: alice, payload: { model: 'gpt', messages: [{ role: 'user', content: 'six times seven?' }] } })
    t.match(res.json().choices[0].message.content, /42/)
    t.equal((await own.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data.length, before, 'OpenAI-compatible: no session is left')
    t.equal((await own.store.listSandboxes()).length, 0, 'and no sandbox')
  })
}
