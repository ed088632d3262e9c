import t from 'tap'
import { Writable } from 'node:stream'
import { build, testConfig, auth, KEYS } from '../helper.js'
import { serve } from '../../server.js'

t.test('requests without a key, with a wrong key, and public routes', async (t) => {
  const app = await build(t)
  const missing = await app.inject({ method: 'GET', url: '/v1/sessions' })
  t.equal(missing.statusCode, 401)
  t.same(missing.json(), { error: { message: 'Missing API key: send Authorization: Bearer <key>', type: 'auth_error', code: 'missing_api_key' } })
  t.equal(missing.headers['www-authenticate'], 'Bearer')

  const wrong = await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth('not-a-key') })
  t.equal(wrong.statusCode, 401)
  t.equal(wrong.json().error.code, 'invalid_api_key')

  const malformed = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: KEYS.alice } })
  t.equal(malformed.statusCode, 401, 'a key without the Bearer scheme is refused')

  t.equal((await app.inject({ method: 'GET', url: '/v1/health' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/docs/json' })).statusCode, 200)
})

t.test('a rotated key: old and new secrets of one name both work and own the same sessions', async (t) => {
  const app = await build(t, testConfig({ API_KEYS: 'app:user:old-secret,app:user:new-secret' }))
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth('old-secret'), payload: { title: 'before rotation' } })
  t.equal(created.statusCode, 201)
  const read = await app.inject({ method: 'GET', url: `/v1/sessions/${created.json().id}`, headers: auth('new-secret') })
  t.equal(read.statusCode, 200)
  t.equal(read.json().title, 'before rotation')
})

t.test('another key never sees, changes or deletes a session: 404 on every route', async (t) => {
  const app = await build(t)
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.alice), payload: { title: 'private', metadata: { project: 'x' } } })).json()
  const asBob = [
    { method: 'GET' as const, url: `/v1/sessions/${session.id}` },
    { method: 'PATCH' as const, url: `/v1/sessions/${session.id}`, payload: { title: 'stolen' } },
    { method: 'GET' as const, url: `/v1/sessions/${session.id}/messages` },
    { method: 'DELETE' as const, url: `/v1/sessions/${session.id}` }
  ]
  for (const req of asBob) {
    const res = await app.inject({ ...req, headers: auth(KEYS.bob) })
    t.equal(res.statusCode, 404, `${req.method} ${req.url}`)
    t.same(res.json(), { error: { message: 'Session not found', type: 'session_error', code: 'session_not_found' } })
  }
  const bobsList = await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.bob) })
  t.same(bobsList.json().data, [], "bob's list does not show alice's session")
  const still = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: auth(KEYS.alice) })
  t.equal(still.json().title, 'private', 'unchanged')
  const asAdmin = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: auth(KEYS.admin) })
  t.equal(asAdmin.statusCode, 200, 'admin keys see every session')
})

t.test('the server refuses a non-loopback address when no key is configured', async (t) => {
  const config = testConfig({ API_KEYS: undefined, HOST: '0.0.0.0', PORT: '0' })
  config.apiKeys = []
  await t.rejects(serve(config), /refusing to listen on 0\.0\.0\.0 with no API key configured/)
})

t.test('log lines of authenticated requests never contain the key', async (t) => {
  const lines: string[] = []
  const stream = new Writable({ write (chunk, _enc, cb) { lines.push(String(chunk)); cb() } })
  const config = testConfig({ LOG_LEVEL: 'trace' })
  const app = await build(t, config, { logger: { stream } })
  const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: { ...auth(KEYS.alice), 'x-api-key': KEYS.alice }, payload: { title: 'logged' } })
  t.equal(res.statusCode, 201)
  await app.inject({ method: 'GET', url: '/v1/sessions/ses_missing', headers: auth(KEYS.alice) })
  await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth('wrong-key-value') })
  const text = lines.join('')
  t.match(text, /"url":"\/v1\/sessions","route":"\/v1\/sessions","status":201,"ms":[0-9.]+,"msg":"request completed"/, 'each request was logged once it finished')
  t.notMatch(text, KEYS.alice, 'the valid key is not in the logs')
  t.notMatch(text, 'wrong-key-value', 'a rejected key is not in the logs')
  t.match(text, /"reqId":"[0-9a-f-]{36}"/, 'log lines carry request ids')
})
