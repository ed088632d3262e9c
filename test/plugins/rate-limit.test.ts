import t from 'tap'
import { Redis } from 'ioredis'
import { LeasedRedisStore } from '../../services/rate-limit-store.js'
import { build, testConfig, auth, KEYS, REDIS_URL, flushPrefix, RedisProcess, freePort } from '../helper.js'

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

t.test('a burst split between two replicas: together they never admit more than the limit', async (t) => {
  const config = testConfig({ RATE_LIMIT_PER_MINUTE: '40' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const one = await build(t, config)
  const two = await build(t, config)
  const burst = await Promise.all(Array.from({ length: 120 }, (_, i) => (i % 2 ? one : two).inject({ method: 'GET', url: '/v1/sessions', headers: alice })))
  const admitted = burst.filter(r => r.statusCode === 200).length
  t.ok(admitted <= 40, `${admitted} admitted, the limit is 40`)
  // A replica reserves at most an eighth of what is left ahead of its requests: the other may be refused a few early.
  t.ok(admitted >= 34, `${admitted} admitted: reservations held by one replica cost the other only a few requests`)
  t.same(new Set(burst.map(r => r.statusCode)), new Set([200, 429]), 'every request is answered, none fails')
  for (const app of [one, two]) t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).statusCode, 429)
})

t.test('at a high rate a replica asks Redis once per batch, and still counts every request', async (t) => {
  const redis = new RedisProcess(await freePort()) // its own server: its command counts are this test's alone
  await redis.start()
  t.teardown(() => redis.kill())
  const app = await build(t, testConfig({ REDIS_URL: redis.url, RATE_LIMIT_PER_MINUTE: '100000' }))
  const scripts = async () => [...(await app.redis!.info('commandstats')).matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0)
  const before = await scripts()
  const remaining: number[] = []
  for (let i = 0; i < 300; i++) {
    const res = await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })
    t.equal(res.statusCode, 200)
    remaining.push(Number(res.headers['x-ratelimit-remaining']))
  }
  t.same(remaining, Array.from({ length: 300 }, (_, i) => 100000 - 1 - i), 'the remaining count goes down by one per request')
  const calls = await scripts() - before
  t.ok(calls < 100, `${calls} reservations for 300 requests`)
  const counted = Number(await app.redis!.get('ratelimit:key:alice'))
  t.ok(counted >= 300, `Redis holds ${counted}: every admitted request was reserved there first`)
})

t.test('a replica forgets one-off keys, and a forgotten key still counts on from Redis', async (t) => {
  const prefix = `test:${Date.now()}:store:`
  const redis = new Redis(REDIS_URL)
  t.teardown(async () => { await flushPrefix(REDIS_URL, prefix); redis.disconnect() })
  const store = new LeasedRedisStore(redis, prefix, 100)
  const incr = (key: string, max = 1000) => new Promise<{ current: number, ttl: number }>((resolve, reject) =>
    store.incr(key, (err, res) => err ? reject(err) : resolve(res!), 60_000, max))
  t.equal((await incr('kept')).current, 1)
  for (let i = 0; i < 150; i++) await incr(`one-off-${i}`)
  t.ok(store.size <= 101, `${store.size} keys remembered after 151 (the rest held nothing unspent)`)
  t.equal((await incr('kept')).current, 2, 'a forgotten key goes on from its count in Redis')
  t.equal((await incr('one-off-0', 1)).current, 2, 'and is refused past its limit')
})
