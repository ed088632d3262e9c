import t from 'tap'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { parseModelsFile, ModelRegistry } from '../../../services/llm/registry.js'
import { ConfigError } from '../../../services/config.js'
import { FakeLlm } from '../../fake-llm.js'
import { build, testConfig, fakeLlmConfig, auth, KEYS, writeModelsFile, FAKE_ENV, REDIS_URL, flushPrefix, waitFor } from '../../helper.js'

const parse = (yaml: string, env: Record<string, string> = {}) => parseModelsFile(yaml, 'models.yaml', env)

t.test('the models file is validated; each error names the entry', async (t) => {
  t.match(parse('default: a\nmodels:\n  - { name: a, provider: openai, model: gpt-4o, api_key: "${KEY}" }', { KEY: 'sk-1' }).models[0], { name: 'a', api_key: 'sk-1' }, '${VAR} reads the environment')
  const bad: Array<[string, RegExp]> = [
    ['models:\n  - { name: a, provider: cohere, model: m, api_key: k }', /^models\.yaml: models\[0\] \(a\) provider: must be one of openai, anthropic/],
    ['models:\n  - { name: a, provider: anthropic, model: m }', /^models\.yaml: models\[0\] \(a\): api_key is missing/],
    ['models:\n  - { name: a, provider: openai, model: m, api_key: "${NOPE}" }', /^models\.yaml: models\[0\] \(a\): \$\{NOPE\} is not set/],
    ['models:\n  - { name: a, provider: openai, model: m, base_url: "not a url" }', /^models\.yaml: models\[0\] \(a\) base_url: must match pattern/],
    ['models:\n  - { name: a, provider: openai, model: m, api_key: k, fallback: [b] }', /fallback "b" is not a configured model/],
    ['default: z\nmodels:\n  - { name: a, provider: openai, model: m, api_key: k }', /default "z" is not a configured model/],
    ['models: [', /not valid YAML/]
  ]
  for (const [yaml, message] of bad) t.throws(() => parse(yaml), message)
  t.throws(() => parse(bad[0][0]), ConfigError)
  t.match(parse('models:\n  - { name: local, provider: openai, model: llama3.1, base_url: "http://127.0.0.1:11434/v1" }').models[0], { name: 'local' }, 'a local OpenAI-compatible server needs no key')
})

t.test('a bad models file stops start-up with a message naming the entry', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'models-'))
  const file = join(dir, 'models.yaml')
  writeFileSync(file, 'models:\n  - { name: broken, provider: openai, model: m }')
  await t.rejects(build(t, testConfig({ MODELS_FILE: file })), /models\[0\] \(broken\): api_key is missing/)
})

t.test('GET /v1/models, and reloading the file through the admin settings route and SIGHUP without a restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'models-'))
  const file = join(dir, 'models.yaml')
  writeFileSync(file, 'models:\n  - { name: first, provider: openai, model: m, api_key: "${SECRET_KEY}" }')
  const app = await build(t, testConfig({ MODELS_FILE: file }), { env: { SECRET_KEY: 'sk-very-secret' } })
  const list = await app.inject({ method: 'GET', url: '/v1/models', headers: auth(KEYS.alice) })
  t.same(list.json(), { object: 'list', data: [{ id: 'first', object: 'model', created: 0, owned_by: 'openai' }] })
  t.notMatch(list.body, 'sk-very-secret', 'keys never appear in responses')

  writeFileSync(file, 'models:\n  - { name: first, provider: openai, model: m, api_key: k }\n  - { name: second, provider: anthropic, model: c, api_key: k }')
  t.equal((await app.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.alice), payload: { reload_models: true } })).statusCode, 403, 'admins only')
  const reloaded = await app.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { reload_models: true } })
  t.same(reloaded.json().models, ['first', 'second'])

  writeFileSync(file, 'models:\n  - { name: third, provider: nobody, model: c, api_key: k }')
  const refused = await app.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { reload_models: true } })
  t.equal(refused.statusCode, 400)
  t.match(refused.json().error.message, /models\[0\] \(third\) provider/)
  t.same((await app.inject({ method: 'GET', url: '/v1/settings', headers: auth(KEYS.admin) })).json().models, ['first', 'second'], 'a bad file keeps the previous models')

  writeFileSync(file, 'models:\n  - { name: fourth, provider: openai, model: m, api_key: k }')
  process.kill(process.pid, 'SIGHUP')
  await waitFor('SIGHUP reloaded the models file', () => app.models.list()[0]?.name === 'fourth', { every: 20 })
  t.same(app.models.list().map(m => m.name), ['fourth'], 'SIGHUP reloads')
})

t.test('fallback is logged and skips models already tried', async (t) => {
  const fake = await new FakeLlm().start()
  t.teardown(() => fake.stop())
  const registry = new ModelRegistry(writeModelsFile(fake.url), FAKE_ENV)
  registry.load()
  fake.script('flaky-test', { status: 503 })
  fake.script('claude-test', { text: 'ok' })
  const events = []
  for await (const e of registry.stream('flaky', { messages: [{ role: 'user', content: 'hi' }], tools: [], temperature: 0, maxTokens: 10, signal: new AbortController().signal })) events.push(e)
  t.match(events[0], { type: 'fallback', from: 'flaky', to: 'claude', reason: /HTTP 503/ })
  t.ok(events.some(e => e.type === 'text'))
  t.match(fake.received.map(r => r.authorization), [/sk-|k/, /sk-ant-fake-key/], 'each model is called with its own key')
})

t.test('a session keeps its history after the app is closed and rebuilt on the same Redis', async (t) => {
  const fake = await new FakeLlm().start()
  t.teardown(() => fake.stop())
  const config = await fakeLlmConfig(fake.url, { POOL_SIZE: '0' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const first = await build(t, config, { env: FAKE_ENV })
  fake.script('gpt-test', { code: { language: 'python', code: 'print("persisted")' } }, { text: 'Persisted.' })
  const turn = (await first.inject({ method: 'POST', url: '/v1/chat', headers: auth(KEYS.alice), payload: { messages: [{ role: 'user', content: 'remember' }] } })).json()
  await first.close()
  const second = await build(t, config, { env: FAKE_ENV })
  const stored = (await second.inject({ method: 'GET', url: `/v1/sessions/${turn.session_id}/messages`, headers: auth(KEYS.alice) })).json().data
  t.same(stored.map((m: { role: string, type: string, content: string }) => [m.role, m.type, m.content]), [
    ['user', 'message', 'remember'], ['assistant', 'code', 'print("persisted")'], ['computer', 'console', 'persisted\n'], ['assistant', 'message', 'Persisted.']
  ])
  let history: unknown
  fake.script('gpt-test', (body) => { history = body.messages; return { text: 'Still here.' } })
  const next = await second.inject({ method: 'POST', url: '/v1/chat', headers: auth(KEYS.alice), payload: { session_id: turn.session_id, messages: [{ role: 'user', content: 'and now?' }] } })
  t.equal(next.statusCode, 200)
  t.match(history, [{ role: 'system' }, { role: 'user', content: 'remember' }, { role: 'assistant', tool_calls: [{ function: { name: 'execute' } }] }, { role: 'tool', content: 'persisted\n' }, { role: 'assistant', content: 'Persisted.' }, { role: 'user', content: 'and now?' }], 'the model gets the whole history back')
})
