// The admin routes the monitor reads: the audit trail (who did what, scoped per key, bounded, no secrets, JSON lines
// export), the last hour's samples (admin keys; every replica's added up through Redis) and sandboxes with their live
// resources from one poller per host. Real Redis, real Docker.
import t from 'tap'
import { Redis } from 'ioredis'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

t.test('the audit trail, the charts\' samples and the live sandboxes', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1', AUDIT_MAX_ENTRIES: '100', SECRETS_KEY: 'k'.repeat(44) })
  const app = await build(t, config)
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))

  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.alice), payload: {} })).json().id as string
  const secretCode = `token = "sk-live-${'x'.repeat(40)}"\nprint("done")`
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: auth(KEYS.alice), payload: { code: secretCode } })).statusCode, 200)
  const secret = await app.inject({ method: 'POST', url: '/v1/secrets', headers: auth(KEYS.alice), payload: { name: 'API_TOKEN', value: 'super-secret-value-123' } })
  const bobs = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(KEYS.bob), payload: {} })).json().id as string
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: { ...auth(KEYS.alice), 'x-forwarded-for': '203.0.113.9' } })
  await new Promise(resolve => setTimeout(resolve, 100))

  const mine = (await app.inject({ method: 'GET', url: `/v1/admin/audit?target=${id}`, headers: auth(KEYS.alice) })).json() as { data: Array<{ key: string, action: string, ip: string, detail: Record<string, unknown> }> }
  t.same(mine.data.map(e => e.action), ['sandbox.delete', 'execute', 'sandbox.create'], 'create, execute, delete, newest first')
  t.ok(mine.data.every(e => e.key === 'alice' && e.ip), 'by the key\'s name, with an address')
  const exec = mine.data.find(e => e.action === 'execute')!
  t.match(exec.detail, { language: 'python', protocol: 'rest', status: 'ok' })
  t.ok(String(exec.detail.code).length <= 61, 'the code is kept as a short prefix only')
  t.equal(exec.detail.code, 'token = "…" print("…")', 'string literals blanked: a credential typed into code stays out')
  const all = JSON.stringify((await app.inject({ method: 'GET', url: '/v1/admin/audit?limit=1000', headers: auth(KEYS.admin) })).json())
  t.notMatch(all, /super-secret-value|sk-live-x{40}|alice-secret|bob-secret|admin-secret/, 'no secret, no key, no whole code anywhere in the trail')
  if (secret.statusCode < 300) t.match(all, /"action":"secret.set"/, 'a secret\'s setting is recorded (its name only)')
  t.equal((await app.inject({ method: 'GET', url: `/v1/admin/audit?target=${bobs}`, headers: auth(KEYS.alice) })).json().data.length, 0, 'a user key never sees another key\'s entries')
  t.ok(((await app.inject({ method: 'GET', url: '/v1/admin/audit?key=bob', headers: auth(KEYS.alice) })).json().data as Array<{ key: string }>).every(e => e.key === 'alice'), 'not even by asking for them: a user key\'s filter is its own name')
  t.ok((await app.inject({ method: 'GET', url: '/v1/admin/audit?key=bob', headers: auth(KEYS.admin) })).json().data.length >= 1, 'an admin key sees every key\'s')
  const page1 = (await app.inject({ method: 'GET', url: '/v1/admin/audit?limit=2', headers: auth(KEYS.admin) })).json() as { data: Array<{ id: string }>, next: string }
  const page2 = (await app.inject({ method: 'GET', url: `/v1/admin/audit?limit=2&before=${page1.next}`, headers: auth(KEYS.admin) })).json() as { data: Array<{ id: string }> }
  t.ok(page2.data.length && page2.data.every(e => e.id < page1.data[1]!.id), 'pages go back in time')
  const jsonl = await app.inject({ method: 'GET', url: `/v1/admin/audit.jsonl?target=${id}`, headers: auth(KEYS.alice) })
  t.match(jsonl.headers['content-type'], /application\/x-ndjson/)
  t.same(jsonl.body.trim().split('\n').map(l => (JSON.parse(l) as { action: string }).action), ['sandbox.create', 'execute', 'sandbox.delete'], 'the export, oldest first')
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/audit?since=yesterday', headers: auth(KEYS.admin) })).statusCode, 400)
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/audit?limit=100000', headers: auth(KEYS.admin) })).statusCode, 400)
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/audit?before=99999999999999999999-0', headers: auth(KEYS.admin) })).statusCode, 400, 'a stream id Redis could not parse is the client\'s 400, not a 500')
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/audit?before=999999999999999-0', headers: auth(KEYS.admin) })).statusCode, 200)

  // Bounded: past AUDIT_MAX_ENTRIES (100 here) the oldest go.
  for (let i = 0; i < 400; i++) app.audit.record('test.flood', `t${i}`)
  await new Promise(resolve => setTimeout(resolve, 300))
  const redis = new Redis(REDIS_URL, { keyPrefix: config.REDIS_PREFIX })
  t.teardown(() => redis.quit())
  const length = await redis.xlen('audit')
  t.ok(length <= 300, `the stream stays near its bound (${length} entries for 100 allowed, trimmed in blocks)`)

  // Samples: admin keys only; two replicas' rings add up by time (a sample asked for here and the 10 s timer's in the
  // same window are one).
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${bobs}/execute`, headers: auth(KEYS.bob), payload: { code: '1' } })
  const sample = await app.timeseries.sample()
  const t0 = sample.t
  await redis.multi().rpush('timeseries:other-replica', JSON.stringify({ ...sample, requests: 1000, executions: { mcp: 7 }, warm: 3 })).sadd('timeseries:replicas', 'other-replica').exec()
  t.equal((await app.inject({ method: 'GET', url: '/v1/admin/timeseries', headers: auth(KEYS.alice) })).statusCode, 403, 'charts are the operator\'s')
  const series = (await app.inject({ method: 'GET', url: '/v1/admin/timeseries?minutes=5', headers: auth(KEYS.admin) })).json() as { replicas: number, samples: Array<{ t: number, requests: number, executions: Record<string, number>, warm: number }> }
  t.equal(series.replicas, 2)
  const merged = series.samples.find(s => s.t === t0)!
  t.equal(merged.requests, sample.requests + 1000, 'requests of both replicas')
  t.match(merged.executions, { rest: Number, mcp: 7 }, 'executions by protocol, both replicas')
  t.equal(merged.warm, sample.warm + 3, 'warm containers are each replica\'s own: summed')

  // Live stats: one poller per host, however many readers.
  const reads = await Promise.all(Array.from({ length: 5 }, () => app.inject({ method: 'GET', url: '/v1/admin/sandboxes', headers: auth(KEYS.admin) })))
  const listed = reads[0]!.json() as { pollers: number, data: Array<{ id: string, key: string, state: string }> }
  t.ok(listed.pollers <= app.sandboxes.hosts.length, `pollers: ${listed.pollers} for ${app.sandboxes.hosts.length} host(s), five readers`)
  t.ok(listed.data.some(s => s.id === bobs && s.key === 'bob' && s.state === 'ready'))
  let memory: number | null = null
  for (let i = 0; i < 60 && memory === null; i++) {
    await new Promise(resolve => setTimeout(resolve, 500))
    memory = ((await app.inject({ method: 'GET', url: '/v1/admin/sandboxes', headers: auth(KEYS.bob) })).json() as { data: Array<{ id: string, memory_bytes: number | null }> }).data.find(s => s.id === bobs)?.memory_bytes ?? null
  }
  t.ok(memory && memory > 1024 * 1024, `the engine's reading of bob's sandbox: ${memory} bytes`)
  const bobsView = (await app.inject({ method: 'GET', url: '/v1/admin/sandboxes', headers: auth(KEYS.bob) })).json() as { data: Array<{ key: string }> }
  t.same([...new Set(bobsView.data.map(s => s.key))], ['bob'], 'a user key sees its own sandboxes only')
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${bobs}`, headers: auth(KEYS.bob) })
})
