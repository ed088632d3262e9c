import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { auth, KEYS, FAKE_ENV, readSse, type SseEvent, fakeLlmConfig, fakeLlmApp, flushPrefix, REDIS_URL } from '../helper.js'
import type { Config } from '../../services/config.js'

const alice = auth(KEYS.alice)
const json = { ...alice, 'content-type': 'application/json' }
const fake = new FakeLlm()
let app: FastifyInstance
let config: Config
let base: string

t.before(async () => {
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '2', CONFIRM_TIMEOUT_MS: '20000' })
  app = await fakeLlmApp(config)
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})

const chat = (payload: object) => app.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload })
const newSession = async () => (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json().id as string
const messagesOf = async (id: string) => (await app.inject({ method: 'GET', url: `/v1/sessions/${id}/messages`, headers: alice })).json().data
const lastToolResult = (body: Record<string, unknown>) => {
  const messages = body.messages as Array<{ role: string, content: unknown }>
  return messages[messages.length - 1]
}
/** Follows a session's events over real HTTP until `stop`. */
const follow = async (sessionId: string, stop: (e: SseEvent) => boolean, lastEventId?: string) =>
  readSse(await fetch(`${base}/v1/sessions/${sessionId}/events`, { headers: { ...alice, ...(lastEventId ? { 'last-event-id': lastEventId } : {}) } }), stop)

for (const [name, model] of [['openai', 'gpt'], ['anthropic', 'claude']] as const) {
  t.test(`a turn with ${name}: the model runs python, reads the output and answers`, async (t) => {
    let seen: unknown
    fake.script(`${model}-test`,
      { text: 'Let me compute that.', code: { language: 'python', code: 'x = 6 * 7\nprint(x)' } },
      (body) => { seen = lastToolResult(body); return { text: 'The answer is 42.' } })
    const res = await chat({ messages: [{ role: 'user', content: 'What is 6 times 7?' }], config: { llm: { model } } })
    t.equal(res.statusCode, 200, res.body)
    const turn = res.json()
    t.match(turn, { object: 'chat.turn', session_id: /^ses_/, finish_reason: 'stop', usage: { total_tokens: Number } })
    t.ok(turn.usage.total_tokens > 0, 'usage recorded')
    t.match(turn.messages, [
      { role: 'assistant', type: 'message', content: 'Let me compute that.' },
      { role: 'assistant', type: 'code', format: 'python', content: 'x = 6 * 7\nprint(x)' },
      { role: 'computer', type: 'console', format: 'output', content: '42\n' },
      { role: 'assistant', type: 'message', content: 'The answer is 42.' }
    ])
    t.equal(res.headers['x-session-id'], turn.session_id)
    if (name === 'openai') t.match(seen, { role: 'tool', content: '42\n' }, 'the model was given the output')
    else t.match(seen, { role: 'user', content: [{ type: 'tool_result', content: [{ type: 'text', text: '42\n' }] }] }, 'the model was given the output')
    const stored = await messagesOf(turn.session_id)
    t.equal(stored.length, 5, 'user message and the four of the turn are stored')
    t.match(stored[0], { role: 'user', content: 'What is 6 times 7?', created_at: String })
    const session = (await app.inject({ method: 'GET', url: `/v1/sessions/${turn.session_id}`, headers: alice })).json()
    t.ok(session.usage.total_tokens > 0, 'usage recorded on the session')
    t.match(session.sandbox_id, /^sbx_/, 'the session got a sandbox on first use')
  })
}

t.test('the execute tool offers every language of the image, and the model can compile and run Rust', async (t) => {
  fake.script('gpt-test',
    { code: { language: 'rust', code: 'fn main() { println!("{}", 6 * 7); }' } },
    { text: 'Rust says 42.' })
  const before = fake.received.length
  const res = await chat({ messages: [{ role: 'user', content: 'compute 6*7 in rust' }], config: { llm: { model: 'gpt' } } })
  t.equal(res.statusCode, 200, res.body)
  const sent = fake.received[before].body as { tools: Array<{ function: { name: string, parameters: { properties: { language: { enum: string[] } } } } }> }
  t.same(sent.tools[0].function.parameters.properties.language.enum, ['python', 'javascript', 'shell', 'typescript', 'c', 'cpp', 'java', 'php', 'rust', 'go', 'd', 'fortran', 'r'], 'the tool the model sees lists the 13 languages')
  t.match(res.json().messages, [
    { role: 'assistant', type: 'code', format: 'rust' },
    { role: 'computer', type: 'console', format: 'output', content: '42\n' },
    { role: 'assistant', type: 'message', content: 'Rust says 42.' }
  ])
})

t.test('a plot reaches the client as an image chunk, is stored, and a vision model sees it', async (t) => {
  let toolResult: any
  fake.script('claude-test',
    { code: { language: 'python', code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()' } },
    (body) => { toolResult = lastToolResult(body); return { text: 'Here is your plot.' } })
  const response = await fetch(`${base}/v1/chat`, { method: 'POST', headers: json, body: JSON.stringify({ stream: true, messages: [{ role: 'user', content: 'plot' }], config: { llm: { model: 'claude' } } }) })
  const events = await readSse(response, e => e.event === 'done')
  const image = events.find(e => e.event === 'message' && e.data.type === 'image')
  t.match(image?.data, { role: 'computer', type: 'image', format: 'base64.png', content: /^iVBOR/ })
  t.ok(events.every(e => e.event === 'done' || e.id), 'every event has an id')
  const done = events[events.length - 1]
  t.match(done.data, { session_id: /^ses_/, finish_reason: 'stop', usage: { total_tokens: Number } })
  const stored = await messagesOf(done.data.session_id)
  t.ok(stored.some((m: any) => m.type === 'image' && m.format === 'base64.png'), 'the image is stored')
  t.ok(toolResult.content[0].content.some((b: any) => b.type === 'image' && b.source.media_type === 'image/png'), 'the vision model got the image')
})

t.test('fallback: after an upstream 500 the next model answers, and the switch shows in the events', async (t) => {
  fake.script('flaky-test', { status: 500 })
  fake.script('claude-test', { text: 'Fallback here.' })
  const response = await fetch(`${base}/v1/chat`, { method: 'POST', headers: json, body: JSON.stringify({ stream: true, messages: [{ role: 'user', content: 'hi' }], config: { llm: { model: 'flaky' } } }) })
  const events = await readSse(response, e => e.event === 'done')
  t.match(events.find(e => e.event === 'fallback')?.data, { from: 'flaky', to: 'claude', reason: /HTTP 500/ })
  t.equal(events.filter(e => e.event === 'message' && e.data.type === 'message').map(e => e.data.content ?? '').join(''), 'Fallback here.')
})

t.test('an upstream 401 and an upstream timeout give clear errors and leave the history consistent', async (t) => {
  fake.script('gpt-test', { status: 401 })
  const session = await newSession()
  const denied = await chat({ session_id: session, messages: [{ role: 'user', content: 'hello' }] })
  t.equal(denied.statusCode, 502)
  t.same(denied.json(), { error: { message: 'the provider of model "gpt" rejected its API key', type: 'upstream_error', code: 'upstream_auth_error' } })
  t.notMatch(denied.body, FAKE_ENV.FAKE_OPENAI_KEY, 'the provider key is not in the response')
  fake.script('slow-test', { hang: true })
  const slow = await chat({ session_id: session, messages: [{ role: 'user', content: 'again' }], config: { llm: { model: 'slow' } } })
  t.equal(slow.statusCode, 504)
  t.equal(slow.json().error.code, 'upstream_timeout')
  t.same((await messagesOf(session)).map((m: any) => `${m.role}:${m.content}`), ['user:hello', 'user:again'], 'only the user messages, nothing half-written')
  fake.script('gpt-test', { text: 'Back.' })
  t.equal((await chat({ session_id: session, messages: [{ role: 'user', content: 'ok?' }] })).statusCode, 200, 'the session is not left locked')
})

t.test('approval: a wrong id gets 409, approve runs exactly that block, decline tells the model', async (t) => {
  const session = await newSession()
  fake.script('gpt-test', { code: { language: 'python', code: 'print("approved run")' } }, { text: 'Done.' })
  const turn = chat({ session_id: session, auto_run: false, messages: [{ role: 'user', content: 'run it' }] })
  const [confirmation] = (await follow(session, e => e.data?.type === 'confirmation')).slice(-1)
  t.match(confirmation.data, { role: 'computer', type: 'confirmation', content: { type: 'code', format: 'python', content: 'print("approved run")' } })
  const codeId = confirmation.data.content.id
  const wrong = await app.inject({ method: 'POST', url: `/v1/sessions/${session}/confirm`, headers: alice, payload: { code_id: 'call_other', approve: true } })
  t.equal(wrong.statusCode, 409)
  t.equal(wrong.json().error.code, 'confirmation_mismatch')
  const busy = await chat({ session_id: session, messages: [{ role: 'user', content: 'meanwhile' }] })
  t.equal(busy.statusCode, 409, 'a second concurrent run gets 409')
  t.equal(busy.json().error.code, 'run_in_progress')
  t.equal((await app.inject({ method: 'POST', url: `/v1/sessions/${session}/confirm`, headers: alice, payload: { code_id: codeId, approve: true } })).statusCode, 200)
  const approved = (await turn).json()
  t.match(approved.messages.find((m: any) => m.type === 'console'), { content: 'approved run\n' })

  let told: any
  fake.script('gpt-test', { code: { language: 'shell', code: 'rm -rf ~' } }, (body) => { told = lastToolResult(body); return { text: 'Understood.' } })
  const second = chat({ session_id: session, auto_run: false, messages: [{ role: 'user', content: 'clean up' }] })
  const seen = await follow(session, e => e.data?.type === 'confirmation' && e.data.content.content === 'rm -rf ~')
  const id = seen[seen.length - 1].data.content.id
  t.equal((await app.inject({ method: 'POST', url: `/v1/sessions/${session}/confirm`, headers: alice, payload: { code_id: id, approve: false } })).statusCode, 200)
  const declined = (await second).json()
  t.match(declined.messages.find((m: any) => m.type === 'console'), { content: 'The user declined to run this code.' })
  t.match(told, { role: 'tool', content: 'The user declined to run this code.' })
  t.equal((await app.inject({ method: 'POST', url: `/v1/sessions/${session}/confirm`, headers: alice, payload: { code_id: id, approve: true } })).statusCode, 409, 'nothing waits any more')
})

t.test('interrupt mid-execution stops the code and the turn', async (t) => {
  const session = await newSession()
  fake.script('gpt-test', { code: { language: 'python', code: 'import time\nprint("working", flush=True)\ntime.sleep(30)' } })
  const turn = chat({ session_id: session, messages: [{ role: 'user', content: 'take your time' }] })
  await follow(session, e => e.data?.type === 'console' && e.data.content === 'working\n')
  const res = await app.inject({ method: 'POST', url: `/v1/sessions/${session}/interrupt`, headers: alice })
  t.same(res.json(), { interrupted: true })
  const result = (await turn).json()
  t.equal(result.finish_reason, 'interrupted')
  t.match(result.messages.find((m: any) => m.type === 'console').content, /KeyboardInterrupt/)
  t.same(fake.received.filter(r => r.body.messages && JSON.stringify(r.body.messages).includes('take your time')).length, 1, 'the model was not called again')
})

t.test('SSE resume after a disconnect: every event exactly once, in order', async (t) => {
  fake.script('gpt-test', { text: 'Counting: one two three four five six seven eight nine ten.', code: { language: 'python', code: 'for i in range(5):\n    print(i, flush=True)' }, delayMs: 15 }, { text: 'All done, that was fun to count through.', delayMs: 15 })
  const session = await newSession()
  const response = await fetch(`${base}/v1/chat`, { method: 'POST', headers: json, body: JSON.stringify({ stream: true, session_id: session, messages: [{ role: 'user', content: 'count' }] }) })
  const before = await readSse(response, (_e, all) => all.length >= 6)
  t.notOk(before.some(e => e.event === 'done'), 'the client left mid-turn')
  const resumed = await follow(session, e => e.event === 'done', before[before.length - 1].id)
  const whole = await follow(session, e => e.event === 'done')
  const runEvents = whole.slice(whole.findIndex(e => e.event === 'run_start' && e.data.run_id === resumed[resumed.length - 1].data.run_id) + 1)
  t.same([...before, ...resumed].map(e => e.id), runEvents.map(e => e.id), 'the ids match an uninterrupted read')
  t.same([...before, ...resumed].map(e => e.data), runEvents.map(e => e.data), 'and so do the events')
  t.equal(new Set([...before, ...resumed].map(e => e.id)).size, before.length + resumed.length, 'no duplicates')
})

t.test('the official openai SDK as a client of /v1/chat/completions, streaming and not; X-Session-Id keeps state', async (t) => {
  const { default: OpenAI } = await import('openai')
  const client = new OpenAI({ apiKey: KEYS.alice, baseURL: `${base}/v1`, maxRetries: 0 })
  fake.script('gpt-test', { code: { language: 'python', code: 'total = 40 + 2\nprint(total)' } }, { text: 'It is 42.' })
  const completion = await client.chat.completions.create({ model: 'gpt', messages: [{ role: 'user', content: 'add 40 and 2' }] })
  t.equal(completion.object, 'chat.completion')
  t.equal(completion.choices[0].finish_reason, 'stop')
  const content = completion.choices[0].message.content ?? ''
  t.match(content, /```python\ntotal = 40 \+ 2\nprint\(total\)\n```/)
  t.match(content, /```text\n42\n```/)
  t.match(content, /It is 42\.$/)
  t.ok(completion.usage!.total_tokens > 0)

  const session = await newSession()
  fake.script('gpt-test', { code: { language: 'python', code: 'kept = "across requests"' } }, { text: 'Stored.' })
  await client.chat.completions.create({ model: 'gpt', messages: [{ role: 'user', content: 'store it' }] }, { headers: { 'X-Session-Id': session } })
  fake.script('gpt-test', { code: { language: 'python', code: 'print(kept)' } }, { text: 'Found it.' })
  const stream = await client.chat.completions.create({ model: 'gpt', stream: true, messages: [{ role: 'user', content: 'show it' }] }, { headers: { 'X-Session-Id': session } })
  let streamed = ''
  let finish: string | null = null
  for await (const chunk of stream) {
    t.equal(chunk.object, 'chat.completion.chunk')
    streamed += chunk.choices[0]?.delta?.content ?? ''
    finish = chunk.choices[0]?.finish_reason ?? finish
  }
  t.match(streamed, /```text\nacross requests\n```/, 'the variable survived between requests')
  t.equal(finish, 'stop')

  await t.rejects(client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }), { status: 400, message: /Unknown model "no-such-model"; known models: gpt, claude, flaky, slow/ })
  const models = await client.models.list()
  t.same(models.data.map(m => m.id), ['gpt', 'claude', 'flaky', 'slow'])
})

t.test('an unknown model name gets a 400 that lists the known ones, and creates nothing', async (t) => {
  const res = await chat({ messages: [{ role: 'user', content: 'hi' }], config: { llm: { model: 'gpt-99' } } })
  t.equal(res.statusCode, 400)
  t.same(res.json(), { error: { message: 'Unknown model "gpt-99"; known models: gpt, claude, flaky, slow', type: 'invalid_request_error', code: 'model_not_found' } })
})

t.test('close', async () => {
  await app.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
