import t from 'tap'
import { build, testConfig, auth, KEYS, RedisProcess, freePort, waitFor } from '../helper.js'

const alice = auth(KEYS.alice)

t.test('Redis stopped mid-test: 503 at once; service resumes by itself when Redis is back, with no session lost', async (t) => {
  const redis = new RedisProcess(await freePort())
  await redis.start()
  t.teardown(() => redis.kill())
  const app = await build(t, testConfig({ REDIS_URL: redis.url }))
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'acknowledged' } })).json()
  t.ok(session.id)

  await redis.kill()
  const down = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: alice })
  t.equal(down.statusCode, 503)
  t.same(down.json(), { error: { message: 'The session store (Redis) is unavailable; try again shortly', type: 'unavailable_error', code: 'redis_unavailable' } })
  const create = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'during outage' } })
  t.equal(create.statusCode, 503, 'writes fail cleanly too')
  const before = (await app.inject({ method: 'GET', url: '/v1/settings', headers: auth(KEYS.admin) })).json().rate_limit_per_minute
  const change = await app.inject({ method: 'PATCH', url: '/v1/settings', headers: auth(KEYS.admin), payload: { rate_limit_per_minute: before + 1 } })
  t.equal(change.statusCode, 503, 'a settings change that cannot be shared is refused')
  t.equal((await app.inject({ method: 'GET', url: '/v1/settings', headers: auth(KEYS.admin) })).json().rate_limit_per_minute, before, 'and undone here')
  const ready = await app.inject({ method: 'GET', url: '/v1/ready' })
  t.equal(ready.statusCode, 503)
  t.match(ready.json(), { status: 'unavailable', checks: { store: /down/ } })
  t.equal((await app.inject({ method: 'GET', url: '/v1/health' })).statusCode, 200, 'liveness does not depend on Redis')

  await redis.start()
  const back = await waitFor('requests reach Redis again', async () => {
    const res = await app.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: alice })
    return res.statusCode !== 503 ? res : undefined
  }, { every: 100 })
  t.equal(back.statusCode, 200, 'requests succeed again without a restart')
  t.equal(back.json().title, 'acknowledged', 'the session written before the crash survived (AOF)')
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).statusCode, 200)
  const metrics = await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })
  t.match(metrics.body, /redis_errors_total [1-9]/, 'the outage shows in the metrics')
})
