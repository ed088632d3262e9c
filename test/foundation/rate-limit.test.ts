import t from 'tap'
import { build, testConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

const alice = auth(KEYS.alice)

t.test('per-key limit: headers on every response, then 429 with Retry-After and retry_after', async (t) => {
  const config = testConfig({ RATE_LIMIT_PER_MINUTE: '3' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  for (let i = 0; i < 3; i++) {
    const res = await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })
    t.equal(res.statusCode, 200)
    t.equal(res.headers['x-ratelimit-limit'], '3')
    t.equal(res.headers['x-ratelimit-remaining'], String(2 - i))
    t.ok(Number(res.headers['x-ratelimit-reset']) > 0)
  }
  const limited = await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })
  t.equal(limited.statusCode, 429)
  t.ok(Number(limited.headers['retry-after']) > 0)
  t.match(limited.json(), { error: { type: 'rate_limit_error', code: 'rate_limit_exceeded', retry_after: Number } })
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.bob) })).statusCode, 200, 'another key has its own budget')
})

t.test('before authentication the limit counts per address', async (t) => {
  const config = testConfig({ RATE_LIMIT_PER_MINUTE: '2' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth('guess-1') })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth('guess-2') })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth('guess-3') })).statusCode, 429, 'key guessing is throttled')
  t.equal((await app.inject({ method: 'GET', url: '/v1/health' })).statusCode, 200, 'health checks are never limited')
})

t.test('per-session limit on the routes that act on one session', async (t) => {
  const config = testConfig({ SESSION_RATE_LIMIT_PER_MINUTE: '2' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const a = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
  const b = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
  const patch = (id: string) => app.inject({ method: 'PATCH', url: `/v1/sessions/${id}`, headers: alice, payload: { title: 't' } })
  t.equal((await patch(a.id)).statusCode, 200)
  const second = await patch(a.id)
  t.equal(second.statusCode, 200)
  t.equal(second.headers['x-ratelimit-limit'], '2')
  const third = await patch(a.id)
  t.equal(third.statusCode, 429)
  t.match(third.json().error.message, /for this session/)
  t.equal((await patch(b.id)).statusCode, 200, 'another session is not affected')
})

t.test('two app instances on one Redis share the counters', async (t) => {
  const config = testConfig({ RATE_LIMIT_PER_MINUTE: '3' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const one = await build(t, config)
  const two = await build(t, config)
  t.equal((await one.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).statusCode, 200)
  t.equal((await two.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).statusCode, 200)
  const third = await one.inject({ method: 'GET', url: '/v1/sessions', headers: alice })
  t.equal(third.headers['x-ratelimit-remaining'], '0')
  t.equal((await two.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).statusCode, 429)
})
