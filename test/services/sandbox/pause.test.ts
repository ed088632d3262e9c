// Pausing and resuming sandboxes against the real engine: under runc here (Debian's CRIU cannot dump on this kernel,
// so the host pauses with the files alone; where CRIU works, with the memory), and under gVisor in pause-runsc.test.ts
// with SANDBOX_PAUSE_MODE=memory (runsc's own checkpoint: the memory, once per container on this Docker; see
// docs/sandboxes.md, "Pausing").
import t from 'tap'
import Docker from 'dockerode'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, waitFor, fakeLlmConfig, fakeLlmApp } from '../../helper.js'
import { FakeLlm } from '../../fake-llm.js'

const alice = auth(KEYS.alice)
const bob = auth(KEYS.bob)
const docker = new Docker()
const runsc = process.env.TEST_SANDBOX_RUNTIME === 'runsc'
const pauseMode = process.env.TEST_PAUSE_MODE

const running = async (containerId: string): Promise<boolean | null> =>
  await docker.getContainer(containerId).inspect().then(i => i.State.Running, () => null)
const volumeExists = async (name: string): Promise<boolean> =>
  await docker.getVolume(name).inspect().then(() => true, () => false)

t.test('pause keeps a sandbox without its memory; its next use resumes it', async (t) => {
  const config = await sandboxConfig({ SANDBOX_KEEP_ON_CLOSE: 'true', ...(pauseMode ? { SANDBOX_PAUSE_MODE: pauseMode } : {}) })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  let app = await build(t, config)
  const run = async (id: string, code: string, headers = alice) =>
    await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers, payload: { code } })
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id as string
  t.equal((await run(id, 'import os\nx = 42\nos.chdir("/tmp")\nopen("/home/user/note.txt", "w").write("kept")')).json().error, null)
  const before = (await app.store.getSandbox(id))!

  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: bob })).statusCode, 404, 'another key cannot pause it')
  const paused = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })
  t.equal(paused.statusCode, 200)
  const mode = paused.json().pause_mode as 'memory' | 'files'
  t.match(paused.json(), { id, status: 'paused', paused_at: String })
  if (runsc && pauseMode === 'memory') t.equal(mode, 'memory', `gVisor checkpoints the sandbox (${JSON.stringify((await app.inject({ method: 'GET', url: '/v1/ready' })).json().hosts[0])})`)
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).json().hosts[0].pause_mode, mode, '/v1/ready says how this host pauses')
  t.match((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json(), { status: 'paused', pause_mode: mode })
  if (mode === 'memory') {
    t.equal(await running(before.container_id), false, 'the container is stopped at its checkpoint: no memory, no CPU')
  } else {
    t.equal(await running(before.container_id), null, 'the container is gone')
    t.ok(await volumeExists(`${config.SANDBOX_NAMESPACE}-paused-${id}`), 'its files are kept in a volume')
  }
  const again = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })
  t.equal(again.statusCode, 200, 'pausing twice changes nothing')
  t.equal(again.json().paused_at, paused.json().paused_at)
  t.equal((await app.inject({ method: 'GET', url: '/v1/ready' })).json().capacity.paused, 1, 'counted as paused, not live')

  // The next use resumes it, whatever the way in: here an execution.
  const x = await run(id, 'print(x)')
  t.equal(x.statusCode, 200)
  if (mode === 'memory') {
    t.equal(x.json().stdout, '42\n', 'the variable survived the pause')
    t.equal(x.json().state_lost, false)
    t.equal((await run(id, 'import os; print(os.getcwd())')).json().stdout, '/tmp\n', 'and the working directory')
  } else {
    t.equal(x.json().state_lost, true, 'the kernel started afresh: the run says so')
    t.match(x.json().error, { name: 'NameError' })
    t.equal((await run(id, 'print(1)')).json().state_lost, false, 'said once')
  }
  t.equal((await run(id, 'print(open("/home/user/note.txt").read())')).json().stdout, 'kept\n', 'the file in the home directory is back')
  if (mode === 'files') t.notOk(await volumeExists(`${config.SANDBOX_NAMESPACE}-paused-${id}`), 'the volume that kept the files is gone')
  const view = (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json()
  t.equal(view.status, 'ready')
  t.notOk(view.paused_at)
  const resumed = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: alice })
  t.match(resumed.json(), { status: 'ready', state_lost: false }, 'resuming a running sandbox answers it as it is')

  // A paused sandbox survives a restart of the server, and a files route resumes it too. Pausing a container restored
  // from a checkpoint keeps its memory only where the host checkpoints such a container again.
  const second = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })).json()
  const ready = (await app.inject({ method: 'GET', url: '/v1/ready' })).json().hosts[0]
  if (mode === 'memory' && second.pause_mode === 'files') t.match(ready.pause_note, /cannot be checkpointed and restored again/, '/v1/ready says why')
  await app.close()
  app = await build(t, config)
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json().status, 'paused', 'still paused after the restart')
  const file = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/note.txt`, headers: alice })
  t.equal(file.statusCode, 200)
  t.equal(file.body, 'kept', 'a download resumed it')
  if (second.pause_mode === 'memory') t.equal((await run(id, 'print(x)')).json().stdout, '42\n', 'the variable survived the pause and the restart')

  // Explicit resume: state_lost says what came back.
  const third = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })).json()
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: bob })).statusCode, 404, 'another key cannot resume it')
  const explicit = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: alice })
  t.equal(explicit.statusCode, 200)
  t.match(explicit.json(), { status: 'ready', state_lost: third.pause_mode === 'files' })

  // Removing a paused sandbox removes what kept it; a resume then is 410.
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })
  const record = (await app.store.getSandbox(id))!
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: alice })).statusCode, 204)
  t.equal(await running(record.container_id), null, 'its container is gone')
  if (record.paused?.volume) t.notOk(await volumeExists(record.paused.volume), 'its volume is gone')
  const gone = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: alice })
  t.equal(gone.statusCode, 410)
  t.equal(gone.json().error.code, 'sandbox_lost')
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: bob })).statusCode, 404, 'to another key it never existed')
})

t.test('idle sandboxes pause instead of going (on_timeout, SANDBOX_IDLE_ACTION); paused ones go after SANDBOX_PAUSED_TTL_S', async (t) => {
  const config = await sandboxConfig({ SANDBOX_REAP_INTERVAL_MS: '100', SANDBOX_PAUSED_TTL_S: '60', ...(pauseMode ? { SANDBOX_PAUSE_MODE: pauseMode } : {}) })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const bad = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { on_timeout: 'sleep' } })
  t.equal(bad.statusCode, 400)
  if (runsc) {
    const sized = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { resources: { memory_mb: 256 } } })
    t.equal(sized.statusCode, 400, 'gVisor cannot change a container\'s limits: a clear 400, not a 500')
    t.match(sized.json().error.message, /under gVisor/)
  }
  const created = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { timeout_s: 1, on_timeout: 'pause' } })
  t.match(created.json(), { on_timeout: 'pause' })
  const id = created.json().id as string
  const other = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { timeout_s: 1 } })).json()
  t.equal(other.on_timeout, 'remove', 'the server default (SANDBOX_IDLE_ACTION=remove)')
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'y = 7' } })
  await waitFor('the idle sandbox to pause', async () => (await app.store.getSandbox(id))?.paused !== undefined)
  await waitFor('the other to be removed', async () => (await app.store.getSandbox(other.id)) === null)
  const mode = (await app.store.getSandbox(id))!.paused!.mode
  const y = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'print(y)' } })).json()
  if (mode === 'memory') t.equal(y.stdout, '7\n', 'a later run picks up where the idle sandbox was')
  else t.equal(y.state_lost, true)

  // PATCH changes what it becomes; a paused sandbox past SANDBOX_PAUSED_TTL_S is removed.
  const patched = await app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers: alice, payload: { on_timeout: 'remove' } })
  t.match(patched.json(), { on_timeout: 'remove' })
  t.equal((await app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers: alice, payload: {} })).statusCode, 400, 'a change must change something')
  await app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers: alice, payload: { timeout_s: 3600 } })
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })
  const record = (await app.store.getSandbox(id))!
  record.paused!.at = new Date(Date.now() - 61_000).toISOString()
  await app.store.saveSandbox(record)
  await waitFor('the expired paused sandbox to be removed', async () => (await app.store.getSandbox(id)) === null)
  t.equal(await running(record.container_id), null, 'its container went with it')
})

t.test('a sandbox running code is not paused', async (t) => {
  const config = await sandboxConfig()
  const app = await build(t, config)
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id as string
  const slow = app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'import time; time.sleep(1.5); print("done")' } })
  await waitFor('the run to start', async () => (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json().status === 'busy', { every: 20 })
  const busy = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })
  t.equal(busy.statusCode, 409)
  t.equal(busy.json().error.code, 'sandbox_busy')
  t.equal((await slow).json().stdout, 'done\n', 'the run went on')
})

t.test('a session whose sandbox paused while idle goes on with its next turn (SANDBOX_IDLE_ACTION=pause)', async (t) => {
  const fake = new FakeLlm()
  await fake.start()
  t.teardown(() => fake.stop())
  const config = await fakeLlmConfig(fake.url, { SANDBOX_IDLE_ACTION: 'pause', SANDBOX_TIMEOUT_S: '1', SANDBOX_REAP_INTERVAL_MS: '100', ...(pauseMode ? { SANDBOX_PAUSE_MODE: pauseMode } : {}) })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await fakeLlmApp(config)
  t.teardown(() => app.close())
  const session = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json().id as string
  const turn = (content: string) => app.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload: { session_id: session, messages: [{ role: 'user', content }], config: { llm: { model: 'gpt' } } } })
  fake.script('gpt-test', { code: { language: 'python', code: 'x = 42' } }, { text: 'Stored.' })
  t.equal((await turn('store 42')).statusCode, 200)
  const sandboxId = (await app.store.getSession(session))!.sandbox_id!
  await waitFor('the idle session sandbox to pause', async () => (await app.store.getSandbox(sandboxId))?.paused !== undefined)
  const mode = (await app.store.getSandbox(sandboxId))!.paused!.mode
  let told = ''
  fake.script('gpt-test', { code: { language: 'python', code: 'print(x)' } }, (body) => {
    const messages = body.messages as Array<{ content: unknown }>
    told = JSON.stringify(messages[messages.length - 1].content)
    return { text: 'Done.' }
  })
  t.equal((await turn('print it')).statusCode, 200)
  t.equal((await app.store.getSession(session))!.sandbox_id, sandboxId, 'the same sandbox, resumed')
  if (mode === 'memory') t.match(told, /42/, 'the variable was there for the next turn')
  else t.match(told, /variables are gone/, 'the model is told the kernel started afresh')
})
