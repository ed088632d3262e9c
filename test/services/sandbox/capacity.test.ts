import t from 'tap'
import WebSocket from 'ws'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, containersIn, sleep } from '../../helper.js'
import { buildApp } from '../../../app.js'

const alice = auth(KEYS.alice)
const create = (app: Awaited<ReturnType<typeof build>>, payload: object = {}, headers = alice) =>
  app.inject({ method: 'POST', url: '/v1/sandboxes', headers, payload })

/** Polls `check` until it holds (the pool works in the background); fails the test after `ms`. */
async function until (what: string, check: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`)
    await sleep(100)
  }
}

t.test('a burst far beyond capacity gets only 201s and documented 503s with Retry-After; a retry after Retry-After succeeds', async (t) => {
  // A budget far above the burst, so that only the start queue refuses.
  const config = await sandboxConfig({ POOL_SIZE: '0', POOL_MAX: '0', SANDBOX_START_CONCURRENCY: '1', SANDBOX_QUEUE_TIMEOUT_MS: '3000', MAX_SANDBOXES_PER_KEY: '500', SANDBOX_MEMORY_BUDGET_MB: '1000000' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const answers = await Promise.all(Array.from({ length: 40 }, () => create(app)))
  const statuses = answers.map(a => a.statusCode)
  t.same([...new Set(statuses)].sort(), [201, 503], 'nothing but 201 and 503')
  const refused = answers.filter(a => a.statusCode === 503)
  t.ok(refused.length >= 30, `most of the burst is refused at once (${refused.length} of 40)`)
  for (const a of refused) {
    const body = a.json()
    t.equal(body.error.code, 'capacity_exhausted')
    t.equal(body.error.type, 'unavailable_error')
    t.ok(Number.isInteger(body.error.retry_after) && body.error.retry_after >= 1, 'retry_after in the body')
    t.equal(a.headers['retry-after'], String(body.error.retry_after), 'and as Retry-After')
  }
  const ids = answers.filter(a => a.statusCode === 201).map(a => a.json().id)
  for (const id of ids) {
    const run = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'print(1)' } })
    t.equal(run.json().stdout, '1\n', 'every sandbox that was given runs code')
  }
  const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })).body
  const counted = (reason: string) => Number(new RegExp(`sandbox_capacity_rejections_total\\{reason="${reason}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0)
  t.ok(counted('queue_full') > 0, 'refused at once when the queue could not serve in time')
  t.equal(counted('queue_full') + counted('queue_timeout'), refused.length, 'each refusal is counted')
  t.match(metrics, /sandbox_start_duration_seconds_count \d+/)

  await sleep(refused.at(-1)!.json().error.retry_after * 1000)
  const retried = await create(app)
  t.equal(retried.statusCode, 201, 'a request retried after Retry-After is served')
})

t.test('a queued client that disconnects leaves the queue and no container behind', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '0', POOL_MAX: '0', SANDBOX_START_CONCURRENCY: '2', MAX_SANDBOXES_PER_KEY: '50' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const base = await app.listen({ host: '127.0.0.1', port: 0 })
  const post = (signal?: AbortSignal) => fetch(`${base}/v1/sandboxes`, { method: 'POST', headers: { ...alice, 'content-type': 'application/json' }, body: '{}', signal })
  const kept = post()
  const leavers = Array.from({ length: 3 }, () => new AbortController())
  const gone = leavers.map(c => post(c.signal).catch(() => 'aborted'))
  await until('the requests are queued', () => app.sandboxes.pool.stats.queued >= 3)
  for (const c of leavers) c.abort()
  t.same(await Promise.all(gone), ['aborted', 'aborted', 'aborted'])
  t.equal((await kept).status, 201, 'the client that stayed gets its sandbox')
  await until('the queue is empty', () => app.sandboxes.pool.stats.queued === 0 && app.sandboxes.pool.stats.creating === 0)
  await until('only the kept sandbox has a container', async () => await containersIn(config.SANDBOX_NAMESPACE) === 1)
  t.equal((await app.store.listSandboxes('alice')).length, 1, 'one sandbox recorded')
  t.equal(app.sandboxes.capacity.creating, 0, 'no reservation is left behind')
})

t.test('the host memory budget and MAX_SANDBOXES refuse with 503 and let the next request in after a delete', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1', MAX_SANDBOXES: '3', SANDBOX_MEMORY_BUDGET_MB: '2048', SANDBOX_MEMORY_MB: '512' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push((await create(app)).json().id)
  const full = await create(app, {}, auth(KEYS.bob))
  t.equal(full.statusCode, 503, 'the host holds at most MAX_SANDBOXES, whichever key asks')
  t.match(full.json().error, { code: 'capacity_exhausted', message: /most sandboxes \(3\)/ })
  t.ok(Number(full.headers['retry-after']) >= 1)

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${ids.pop()}`, headers: alice })).statusCode, 204)
  const tooBig = await create(app, { resources: { memory_mb: 1536 } })
  t.equal(tooBig.statusCode, 503, '1024 MB live + 1536 MB is over the 2048 MB budget')
  t.match(tooBig.json().error, { code: 'capacity_exhausted', message: /memory budget is used \(1024 of 2048 MB; this one needs 1536 MB\)/ })
  const fits = await create(app, { resources: { memory_mb: 1024 } })
  t.equal(fits.statusCode, 201, 'a sandbox that fits the budget is served')

  const ready = (await app.inject({ method: 'GET', url: '/v1/ready' })).json()
  t.match(ready.capacity, { live: 3, max: 3, memory_used_mb: 2048, memory_budget_mb: 2048, creating: 0 })
  const stats = (await app.inject({ method: 'GET', url: '/v1/stats', headers: auth(KEYS.admin) })).json()
  t.match(stats.capacity, { live: 3, memory_used_mb: 2048 })
  const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })).body
  t.match(metrics, /sandbox_capacity_rejections_total\{reason="max_sandboxes"\} 1/)
  t.match(metrics, /sandbox_capacity_rejections_total\{reason="memory_budget"\} 1/)
  t.match(metrics, /sandbox_memory_budget_used_bytes 2147483648/)
  t.match(metrics, /sandboxes_live 3/)
})

t.test('the warm pool grows under a burst and shrinks back when demand stops', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1', POOL_MAX: '4', POOL_IDLE_SHRINK_MS: '2000', MAX_SANDBOXES_PER_KEY: '50' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const pool = async () => (await app.inject({ method: 'GET', url: '/v1/ready' })).json().pool
  t.match(await pool(), { warm: 1, size: 1, target: 1, max: 4 })
  const ids = (await Promise.all(Array.from({ length: 6 }, () => create(app)))).map(r => r.json().id)
  t.equal(ids.filter(Boolean).length, 6)
  t.match(await pool(), { target: 4 }, 'six acquisitions in a moment raise the target to POOL_MAX')
  await until('four spares are warm', async () => (await pool()).warm === 4)
  const warmAt = Date.now()
  await until('the pool is back at its floor', async () => (await pool()).warm === 1)
  t.ok(Date.now() - warmAt >= 1000, 'it shrank only after a quiet spell')
  t.match(await pool(), { target: 1 })
  await until('the removed spares have no containers', async () => await containersIn(config.SANDBOX_NAMESPACE) === 6 + 1)
})

t.test('SANDBOX_PRELOAD: a fresh sandbox has the modules imported already', async (t) => {
  const code = "import sys; print(all(m in sys.modules for m in ('numpy', 'matplotlib', 'matplotlib.pyplot')))"
  const plain = await build(t, await sandboxConfig())
  const id = (await create(plain)).json().id
  t.equal((await plain.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })).json().stdout, 'False\n', 'without it, nothing is imported')

  const preloaded = await build(t, await sandboxConfig({ SANDBOX_PRELOAD: 'numpy,matplotlib.pyplot' }))
  const fresh = (await create(preloaded)).json().id
  const run = await preloaded.inject({ method: 'POST', url: `/v1/sandboxes/${fresh}/execute`, headers: alice, payload: { code } })
  t.equal(run.json().stdout, 'True\n', 'with it, import matplotlib finds the module in sys.modules')
  const plot = await preloaded.inject({ method: 'POST', url: `/v1/sandboxes/${fresh}/execute`, headers: alice, payload: { code: 'import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()' } })
  t.ok(plot.json().results[0].data['image/png'], 'and plots as before')
})

t.test('a chat or WebSocket run that cannot get a sandbox ends with capacity_exhausted and retry_after; the session is kept', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '0', SANDBOX_MEMORY_BUDGET_MB: '256', SANDBOX_MEMORY_MB: '512' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const url = (await app.listen({ host: '127.0.0.1', port: 0 })).replace('http', 'ws') + '/v1/ws'
  const ws = new WebSocket(url, ['interpreter.v1'], { headers: alice })
  const frames: any[] = []
  ws.on('message', (data) => frames.push(JSON.parse(String(data))))
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  t.teardown(() => ws.close())
  ws.send(JSON.stringify({ type: 'hello' }))
  await until('hello', () => frames.some(f => f.type === 'hello'))
  const sessionId = frames.find(f => f.type === 'hello').session_id
  ws.send(JSON.stringify({ type: 'execute', language: 'python', code: 'print(1)' }))
  await until('the run ends', () => frames.some(f => f.type === 'event' && f.event === 'done'))
  const error = frames.find(f => f.type === 'event' && f.event === 'error')
  t.match(error.data.error, { code: 'capacity_exhausted', type: 'unavailable_error', message: /memory budget/ })
  t.ok(error.data.error.retry_after >= 1, 'with retry_after')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${sessionId}`, headers: alice })).statusCode, 200, 'the session is kept')
})

t.test('start-up after a burst: health answers at once, /v1/ready shows the recovery, the sandboxes come back', async (t) => {
  const config = await sandboxConfig({ SANDBOX_KEEP_ON_CLOSE: 'true', POOL_SIZE: '0', MAX_SANDBOXES_PER_KEY: '50' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const first = await buildApp({ config }, false)
  await first.ready()
  const ids = (await Promise.all(Array.from({ length: 12 }, () => create(first)))).map(r => r.json().id)
  for (const [i, id] of ids.entries()) {
    await first.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: `mark = ${i}` } })
  }
  await first.close()

  const second = await build(t, { ...config, SANDBOX_KEEP_ON_CLOSE: false }, { waitWarm: false })
  t.equal((await second.inject({ method: 'GET', url: '/v1/health' })).statusCode, 200, 'health answers without waiting for the recovery')
  const early = (await second.inject({ method: 'GET', url: '/v1/ready' })).json()
  t.match(early.recovery, { state: /pending|running|done/, total: 12 })
  await second.sandboxes.recovered()
  const done = (await second.inject({ method: 'GET', url: '/v1/ready' })).json()
  t.match(done.recovery, { state: 'done', total: 12, adopted: 12, removed: 0 })
  for (const [i, id] of ids.entries()) {
    const res = await second.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'mark' } })
    t.same(res.json().results[0]?.data, { 'text/plain': String(i) }, `sandbox ${i} kept its state`)
  }
})
