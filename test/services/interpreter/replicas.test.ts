// Several server processes on one Redis (and one Docker host): any of them serves any request.
import t from 'tap'
import Docker from 'dockerode'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../../fake-llm.js'
import { auth, KEYS, readSse, sleep, REDIS_URL, flushPrefix, fakeLlmConfig, fakeLlmApp, type SseEvent, waitFor } from '../../helper.js'
import { containerSpec } from '../../../services/sandbox/container.js'
import type { Config } from '../../../services/config.js'

const alice = auth(KEYS.alice)
const admin = auth(KEYS.admin)
const fake = new FakeLlm()
let config: Config
let a: FastifyInstance
let b: FastifyInstance
let bBase: string

t.before(async () => {
  await fake.start()
  config = await fakeLlmConfig(fake.url, { POOL_SIZE: '1', RUN_LOCK_TTL_MS: '1500', CONFIRM_TIMEOUT_MS: '20000', SANDBOX_REAP_INTERVAL_MS: '300' })
  a = await fakeLlmApp(config)
  b = await fakeLlmApp(config)
  bBase = await b.listen({ host: '127.0.0.1', port: 0 })
})

const newSession = async () => (await a.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json().id as string
const chatOn = (app: FastifyInstance, payload: object) => app.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload })
/** Follows a session's events through process b until `stop`. */
const followOnB = async (session: string, stop: (e: SseEvent) => boolean) =>
  readSse(await fetch(`${bBase}/v1/sessions/${session}/events`, { headers: alice }), stop)
const confirmOn = (app: FastifyInstance, session: string, codeId: string, approve = true) =>
  app.inject({ method: 'POST', url: `/v1/sessions/${session}/confirm`, headers: alice, payload: { code_id: codeId, approve } })

t.test('a run on one process is confirmed and interrupted through another', async (t) => {
  const session = await newSession()
  fake.script('gpt-test', { code: { language: 'python', code: 'print("approved elsewhere")' } }, { text: 'Done.' })
  const turn = chatOn(a, { session_id: session, auto_run: false, messages: [{ role: 'user', content: 'run it' }] })
  const [confirmation] = (await followOnB(session, e => e.data?.type === 'confirmation')).slice(-1)
  const wrong = await confirmOn(b, session, 'call_other')
  t.equal(wrong.statusCode, 409)
  t.match(wrong.json().error, { code: 'confirmation_mismatch', type: 'conflict_error', message: /waiting for approval is call_/ }, 'the running process\'s answer, relayed')
  t.equal((await confirmOn(b, session, confirmation.data.content.id)).statusCode, 200)
  const approved = (await turn).json()
  t.match(approved.messages.find((m: any) => m.type === 'console'), { content: 'approved elsewhere\n' }, 'the approved block ran on a')

  fake.script('gpt-test', { code: { language: 'python', code: 'import time\nprint("working", flush=True)\ntime.sleep(30)' } })
  const long = chatOn(a, { session_id: session, messages: [{ role: 'user', content: 'take your time' }] })
  await followOnB(session, e => e.data?.type === 'console' && e.data.content === 'working\n')
  const interrupted = await b.inject({ method: 'POST', url: `/v1/sessions/${session}/interrupt`, headers: alice })
  t.same(interrupted.json(), { interrupted: true })
  t.equal((await long).json().finish_reason, 'interrupted', 'the turn on a stopped')

  t.same((await b.inject({ method: 'POST', url: `/v1/sessions/${session}/interrupt`, headers: alice })).json(), { interrupted: false }, 'nothing runs any more')
  const none = await confirmOn(b, session, 'call_x')
  t.equal(none.json().error.code, 'no_pending_confirmation')
  const other = await b.inject({ method: 'POST', url: `/v1/sessions/${session}/interrupt`, headers: auth(KEYS.bob) })
  t.equal(other.statusCode, 404, 'another key still cannot touch the session')
})

t.test('the session lock lives as long as its run, and a crashed process frees the session', async (t) => {
  const session = await newSession()
  fake.script('gpt-test', { code: { language: 'python', code: 'import time\ntime.sleep(3)\nprint("slept")' } }, { text: 'Rested.' })
  const turn = chatOn(a, { session_id: session, messages: [{ role: 'user', content: 'sleep a while' }] })
  await followOnB(session, e => e.data?.type === 'code' && e.data.end === true)
  await sleep(2000) // longer than RUN_LOCK_TTL_MS: only the renewals keep the lock
  const meanwhile = await chatOn(b, { session_id: session, messages: [{ role: 'user', content: 'me too' }] })
  t.equal(meanwhile.json().error?.code, 'run_in_progress', 'a second run on another process still gets 409')
  t.equal((await turn).json().finish_reason, 'stop')

  // A process that died mid-run leaves its lock behind (for its RUN_LOCK_TTL_MS) and answers nobody.
  t.ok(await a.store.lock(`session:${session}`, 'run_of_a_dead_process', 5000))
  const unreachable = await b.inject({ method: 'POST', url: `/v1/sessions/${session}/interrupt`, headers: alice })
  t.equal(unreachable.statusCode, 503)
  t.equal(unreachable.json().error.code, 'run_unreachable')
  await waitFor('the dead run\'s lock expires', async () => (await b.store.lockHolder(`session:${session}`)) === null)
  fake.script('gpt-test', { text: 'Free again.' })
  t.equal((await chatOn(b, { session_id: session, messages: [{ role: 'user', content: 'hello?' }] })).statusCode, 200, 'the session is usable again')
})

t.test('one process starting or reaping leaves another live process\'s containers alone; a dead process\'s go', async (t) => {
  const docker = new Docker()
  const ofA = async () => (await a.sandboxes.pool.containers.list()).filter(c => c.instance === a.sandboxes.pool.instance).map(c => c.id)
  await waitFor('a has a warm container', async () => a.sandboxes.pool.stats.warm > 0)
  const before = await ofA() // its warm container and its sessions' sandboxes
  const c = await fakeLlmApp(config)
  await sleep(1000) // a few reaper rounds of b and c
  for (const id of before) t.ok(await docker.getContainer(id).inspect(), `a's container ${id.slice(0, 12)} is still there`)
  const sandbox = (await a.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json()
  const run = await a.inject({ method: 'POST', url: `/v1/sandboxes/${sandbox.id}/execute`, headers: alice, payload: { code: 'print("still warm")' } })
  t.equal(run.json().stdout, 'still warm\n', 'a sandbox from a\'s warm pool works')
  await c.close()

  const dead = await docker.createContainer(containerSpec(a.sandboxes.pool.limits, config.SANDBOX_NAMESPACE, 'a-process-that-died'))
  await waitFor('the reaper removes the dead process\'s container', async () => docker.getContainer(dead.id).inspect().then(() => false, () => true))
  t.pass('removed')
})

t.test('a settings change on one process applies on every process and outlives a restart', async (t) => {
  const patch = await a.inject({ method: 'PATCH', url: '/v1/settings', headers: admin, payload: { rate_limit_per_minute: 555, auto_run: false, default_model: 'claude' } })
  t.equal(patch.statusCode, 200)
  await waitFor('b has the change', async () => (await b.inject({ method: 'GET', url: '/v1/settings', headers: admin })).json().rate_limit_per_minute === 555)
  t.match((await b.inject({ method: 'GET', url: '/v1/settings', headers: admin })).json(), { auto_run: false, default_model: 'claude' })
  t.equal((await b.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).headers['x-ratelimit-limit'], '555', 'in force on b')

  const bad = await b.inject({ method: 'PATCH', url: '/v1/settings', headers: admin, payload: { rate_limit_per_minute: 0 } })
  t.equal(bad.statusCode, 400)
  t.match(bad.json().error.message, /rate_limit_per_minute/)

  const restarted = await fakeLlmApp(config, { waitWarm: false })
  t.match((await restarted.inject({ method: 'GET', url: '/v1/settings', headers: admin })).json(), { rate_limit_per_minute: 555, auto_run: false, default_model: 'claude' }, 'a new process starts with the change')
  await restarted.close()

  t.equal((await b.inject({ method: 'PATCH', url: '/v1/settings', headers: admin, payload: { reset: true } })).statusCode, 200)
  await waitFor('a is back to the configuration', async () => (await a.inject({ method: 'GET', url: '/v1/settings', headers: admin })).json().rate_limit_per_minute === config.RATE_LIMIT_PER_MINUTE)
  t.match((await a.inject({ method: 'GET', url: '/v1/settings', headers: admin })).json(), { auto_run: config.AUTO_RUN, default_model: 'gpt' })
})

t.test('close', async () => {
  await a.close()
  await b.close()
  await fake.stop()
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
})
