import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { KEYS, REDIS_URL, flushPrefix, fakeLlmConfig, fakeLlmApp } from '../helper.js'
import { InterpreterClient, ApiError } from '../../client/index.js'
import type { Config } from '../../services/config.js'

const fake = new FakeLlm()
let app: FastifyInstance
let config: Config
let client: InterpreterClient

t.before(async () => {
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '1' })
  app = await fakeLlmApp(config)
  client = new InterpreterClient({ url: await app.listen({ host: '127.0.0.1', port: 0 }), apiKey: KEYS.alice, retryDelayMs: 50, timeoutMs: 20000 })
})

t.test('typed REST methods: sessions, chat, sandboxes, execute, files; errors as ApiError', async (t) => {
  const session = await client.sessions.create({ title: 'from the client' })
  t.equal((await client.sessions.get(session.id)).title, 'from the client')
  t.same(await client.models(), ['gpt', 'claude', 'flaky', 'slow'])
  fake.script('gpt-test', { text: 'Hello from the model.' })
  const turn = await client.chat('hi', { sessionId: session.id })
  t.equal(turn.messages[0].content, 'Hello from the model.')
  t.equal((await client.sessions.messages(session.id)).length, 2)

  const sandbox = await client.sandboxes.create()
  t.equal((await client.sandboxes.execute(sandbox.id, 'print(sum(range(10)))')).stdout, '45\n')
  await client.sandboxes.files.upload(sandbox.id, 'notes/a.txt', 'client upload')
  t.same((await client.sandboxes.files.list(sandbox.id, 'notes')).map(f => f.name), ['a.txt'])
  t.equal(String(await client.sandboxes.files.download(sandbox.id, 'notes/a.txt')), 'client upload')
  await client.sandboxes.delete(sandbox.id)
  const error = await client.sandboxes.get(sandbox.id).catch((err: unknown) => err)
  t.ok(error instanceof ApiError)
  t.match(error, { status: 404, code: 'sandbox_not_found' })
  const refused = await new InterpreterClient({ url: client.url, apiKey: 'wrong', maxRetries: 0 }).sessions.list().catch((err: unknown) => err)
  t.match(refused, { status: 401, code: 'invalid_api_key' })
})

t.test('the WebSocket client reconnects after the server closes its socket mid-run, and resumes without loss or repetition', async (t) => {
  const socket = await client.connect()
  t.teardown(() => socket.close())
  fake.script('gpt-test',
    { text: 'Counting now, slowly and carefully.', code: { language: 'python', code: 'import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.1)' }, delayMs: 10 },
    { text: 'Counted to five.', delayMs: 10 })
  const { run_id: runId } = await socket.chat('count')
  const events = []
  let cut = false
  for await (const event of socket.events()) {
    events.push(event)
    if (!cut && event.data?.type === 'console' && event.data.content === '1\n') {
      cut = true
      for (const peer of app.websocketServer.clients) peer.terminate() // the server drops every socket mid-run
    }
    if (event.event === 'done' && event.data.run_id === runId) break
  }
  t.ok(cut, 'the connection was cut mid-run')
  const truth = []
  const stop = new AbortController()
  for await (const logged of app.events.follow(socket.sessionId, undefined, stop.signal)) {
    truth.push(logged.id)
    if (logged.event.type === 'run_end') break
  }
  stop.abort()
  t.same(events.map(e => e.id), truth, 'exactly the events of the log, once each, in order')
  t.match(events.filter(e => e.data?.type === 'console').map(e => e.data.content ?? '').join(''), '0\n1\n2\n3\n4\n5\n')
})

t.test('close', async () => {
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
