// The warm pool and its start queue against a fake engine (test/fake-driver.ts), in milliseconds: how many containers
// start at once, who gets which, when a request is refused at once or after waiting, and what happens to a start
// nobody waits for any more. The same pool runs over Docker in test/services/sandbox/capacity.test.ts.
import t from 'tap'
import { SandboxPool, type PoolOptions } from '../../services/sandbox/pool.js'
import type { SandboxHandle } from '../../services/sandbox/sandbox.js'
import { FakeDriver } from '../fake-driver.js'

const quiet = { info () {}, warn () {}, debug () {} }
const limits = { image: 'fake', cpus: 1, memoryMb: 512, pids: 256, workspaceMb: 512, tmpMb: 64, killGraceMs: 1000 }
const tick = () => new Promise(resolve => setImmediate(resolve))
/** Lets every promise chain the pool has going settle. */
const settle = async () => { for (let i = 0; i < 20; i++) await tick() }

function poolOf (t: { teardown: (fn: () => unknown) => void }, opts: Partial<PoolOptions> = {}) {
  const driver = new FakeDriver()
  const rejected: string[] = []
  const pool = new SandboxPool(driver, { limits, size: 0, namespace: 'unit', instance: 'i1', startConcurrency: 2, queueTimeoutMs: 30_000, observe: { started () {}, failed () {}, rejected: (r) => rejected.push(r) }, ...opts }, quiet)
  t.teardown(async () => {
    driver.autoStart = true
    for (const start of driver.starts.splice(0)) start.finish()
    await pool.close()
  })
  return { driver, pool, rejected }
}

t.test('at most startConcurrency containers start at once, and waiting requests are served in the order they came', async (t) => {
  const { driver, pool } = poolOf(t)
  await pool.start()
  const served: Array<[string, string]> = []
  const ask = (who: string) => pool.acquire().then((h: SandboxHandle) => { served.push([who, h.containerId]) })
  const all = Promise.all([ask('a'), ask('b'), ask('c')])
  await settle()
  t.equal(driver.starts.length, 2, 'two starts under way, the third waits for a slot')
  t.equal(pool.stats.queued, 3)
  driver.finishNext()
  await settle()
  t.same(served, [['a', 'c1']], 'the first container to be ready goes to the first request')
  t.equal(driver.starts.length, 2, 'and its slot went to the third start')
  driver.finishNext()
  driver.finishNext()
  await all
  t.same(served.map(([who]) => who), ['a', 'b', 'c'])
  t.equal(pool.stats.queued, 0)
})

t.test('a request the queue cannot serve within SANDBOX_QUEUE_TIMEOUT_MS is refused at once, with an estimate', async (t) => {
  // One start at a time, the first start guessed at a second: a second waiting request would wait two.
  const { pool, rejected } = poolOf(t, { startConcurrency: 1, queueTimeoutMs: 1500 })
  await pool.start()
  const first = pool.acquire()
  await settle()
  await t.rejects(pool.acquire(), { statusCode: 503, code: 'capacity_exhausted', extra: { retry_after: 1 } })
  t.same(rejected, ['queue_full'])
  t.equal(pool.stats.queued, 1, 'the first request still waits')
  first.catch(() => {})
})

t.test('a request that waited the whole queue timeout gets 503; a client that went away leaves the queue', async (t) => {
  const { driver, pool, rejected } = poolOf(t, { size: 1, startConcurrency: 1, queueTimeoutMs: 50 })
  driver.autoStart = true // one quick start (a spare), so that the estimate for the next is well under the timeout
  await pool.start(true)
  await pool.resize(0)
  driver.autoStart = false
  await t.rejects(pool.acquire(), { statusCode: 503, code: 'capacity_exhausted', message: /within 50 ms/ })
  t.same(rejected, ['queue_timeout'])

  const controller = new AbortController()
  const leaving = pool.acquire(controller.signal)
  await settle()
  controller.abort(new Error('client closed'))
  await t.rejects(leaving, { message: 'client closed' })
  t.equal(pool.stats.queued, 0)
  t.equal(driver.starts.length, 1, 'one start (one slot) served both requests\' turns')
  // It finishes later; nobody wants it and the pool's floor is 0: it is removed, like the spare the resize dropped.
  driver.finishNext()
  await settle()
  t.same(driver.removed.sort(), ['c1', 'c2'], 'the container nobody took is removed')
})

t.test('a start that fails is the first waiting request\'s 503 and its container is removed', async (t) => {
  const { driver, pool } = poolOf(t, { startConcurrency: 1 })
  await pool.start()
  const waiting = pool.acquire()
  await settle()
  driver.starts.shift()!.fail(new Error('runc create failed'))
  await t.rejects(waiting, { statusCode: 503, code: 'sandbox_start_failed', message: /runc create failed/ })
  await settle()
  t.same(driver.removed, ['c1'])
})

t.test('the warm pool: filled at start, taken at once, refilled behind; it grows under a burst up to its max', async (t) => {
  const { driver, pool } = poolOf(t, { size: 1, max: 3 })
  driver.autoStart = true
  await pool.start(true)
  t.equal(pool.stats.warm, 1)
  const first = await pool.acquire()
  t.equal(first.containerId, 'c1', 'the warm container, without waiting for a start')
  await settle()
  t.equal(pool.stats.warm, 1, 'a replacement started behind it')
  await pool.acquire()
  await pool.acquire()
  await settle()
  t.equal(pool.stats.target, 3, 'three acquisitions in the window: the pool aims at three spares')
  t.equal(pool.stats.warm, 3)
})
