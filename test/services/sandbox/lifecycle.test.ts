import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import Docker from 'dockerode'
import { unlinkSync } from 'node:fs'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, containersIn, waitFor } from '../../helper.js'
import { buildApp } from '../../../app.js'
import { containerSpec } from '../../../services/sandbox/container.js'

const alice = auth(KEYS.alice)
const bob = auth(KEYS.bob)

t.test('sandboxes belong to their key; limits on count and code size; resources and env apply', async (t) => {
  const config = await sandboxConfig({ MAX_SANDBOXES_PER_KEY: '2', MAX_CODE_SIZE: '1000' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const created = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { env: { GREETING: 'hola' }, resources: { memory_mb: 256 }, metadata: { purpose: 'test' } } })
  t.equal(created.statusCode, 201)
  const sandbox = created.json()
  t.match(sandbox, { object: 'sandbox', language: 'python', status: 'ready', resources: { memory_mb: 256 }, metadata: { purpose: 'test' } })

  const env = await app.inject({ method: 'POST', url: `/v1/sandboxes/${sandbox.id}/execute`, headers: alice, payload: { code: 'import os; os.environ["GREETING"]' } })
  t.same(env.json().results[0].data, { 'text/plain': "'hola'" }, 'env given at creation reaches user code')
  const record = await app.store.getSandbox(sandbox.id)
  const info = await new Docker().getContainer(record!.container_id).inspect()
  t.equal(info.HostConfig.Memory, 256 * 1024 * 1024, 'memory limit applied')
  t.equal(info.HostConfig.MemorySwap, 256 * 1024 * 1024, 'no swap beyond it')

  for (const [method, url] of [['GET', `/v1/sandboxes/${sandbox.id}`], ['POST', `/v1/sandboxes/${sandbox.id}/execute`], ['GET', `/v1/sandboxes/${sandbox.id}/files`], ['DELETE', `/v1/sandboxes/${sandbox.id}`]] as const) {
    const res = await app.inject({ method, url, headers: bob, ...(method === 'POST' ? { payload: { code: 'print(1)' } } : {}) })
    t.equal(res.statusCode, 404, `bob: ${method} ${url}`)
    t.equal(res.json().error.code, 'sandbox_not_found')
  }
  t.same((await app.inject({ method: 'GET', url: '/v1/sandboxes', headers: bob })).json().data, [])
  t.equal((await app.inject({ method: 'GET', url: '/v1/sandboxes', headers: alice })).json().data.length, 1)

  const big = await app.inject({ method: 'POST', url: `/v1/sandboxes/${sandbox.id}/execute`, headers: alice, payload: { code: `x = "${'a'.repeat(2000)}"` } })
  t.equal(big.statusCode, 413)
  t.equal(big.json().error.code, 'code_too_large')

  t.equal((await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).statusCode, 201)
  const third = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })
  t.equal(third.statusCode, 429)
  t.equal(third.json().error.code, 'sandbox_limit_reached')
  t.equal((await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: bob, payload: {} })).statusCode, 201, 'the limit is per key')

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${sandbox.id}`, headers: alice })).statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${sandbox.id}`, headers: alice })).statusCode, 404)
  await t.rejects(new Docker().getContainer(record!.container_id).inspect(), 'its container is gone')
})

t.test('files: upload, list, download (binary, several chunks), delete', async (t) => {
  const app = await build(t, await sandboxConfig())
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  const content = randomBytes(700 * 1024)
  const up = await app.inject({ method: 'PUT', url: `/v1/sandboxes/${id}/files/data/blob.bin`, headers: { ...alice, 'content-type': 'application/octet-stream' }, payload: content })
  t.equal(up.statusCode, 201)
  t.same(up.json(), { path: 'data/blob.bin', size: content.length })
  const json = await app.inject({ method: 'PUT', url: `/v1/sandboxes/${id}/files/config.json`, headers: { ...alice, 'content-type': 'application/json' }, payload: '{"raw": true' })
  t.equal(json.statusCode, 201, 'a JSON file is stored as sent, not parsed')
  const list = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files?path=data`, headers: alice })
  t.match(list.json(), { object: 'list', path: 'data', data: [{ name: 'blob.bin', path: 'data/blob.bin', type: 'file', size: content.length }] })
  const seen = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'import hashlib; print(hashlib.sha256(open("data/blob.bin", "rb").read()).hexdigest()); print(open("config.json").read())' } })
  t.equal(seen.json().stdout, `${createHash('sha256').update(content).digest('hex')}\n{"raw": true\n`, 'user code sees the uploaded bytes')
  const down = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/data/blob.bin`, headers: alice })
  t.equal(down.statusCode, 200)
  t.equal(down.headers['content-length'], String(content.length))
  t.ok(down.rawPayload.equals(content), 'downloaded bytes are identical')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files/nope.txt`, headers: alice })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}/files/data`, headers: alice })).statusCode, 204)
  t.same((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/files?path=`, headers: alice })).json().data.map((e: { name: string }) => e.name).filter((n: string) => !n.startsWith('.')), ['config.json'])
})

t.test('interrupt stops a running execution and keeps state; a concurrent execution gets 409', async (t) => {
  const app = await build(t, await sandboxConfig())
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  const running = app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'import time\nprogress = "started"\ntime.sleep(30)' } })
  await waitFor('the sandbox is busy with the run', async () => (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json().status === 'busy', { every: 20 })
  const second = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'print(1)' } })
  t.equal(second.statusCode, 409)
  t.equal(second.json().error.code, 'sandbox_busy')
  const interrupted = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/interrupt`, headers: alice })
  t.same(interrupted.json(), { interrupted: true })
  const result = (await running).json()
  t.equal(result.error.name, 'KeyboardInterrupt')
  const after = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'progress' } })
  t.same(after.json().results[0].data, { 'text/plain': "'started'" })
})

t.test('an idle sandbox is removed after its timeout', async (t) => {
  const config = await sandboxConfig({ SANDBOX_REAP_INTERVAL_MS: '100', POOL_SIZE: '0' })
  const app = await build(t, config)
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { timeout_s: 1 } })).json().id
  const record = await app.store.getSandbox(id)
  await waitFor('the idle sandbox is gone', async () => (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).statusCode === 404, { every: 100 })
  t.pass('the idle sandbox is gone')
  await t.rejects(new Docker().getContainer(record!.container_id).inspect(), 'with its container')
})

t.test('a live sandbox\'s idle timeout can be extended or shortened, counted from now', async (t) => {
  const config = await sandboxConfig({ SANDBOX_REAP_INTERVAL_MS: '100', POOL_SIZE: '0', SANDBOX_MAX_TIMEOUT_S: '3600' })
  const app = await build(t, config)
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { timeout_s: 60 } })).json().id
  const patch = (payload: unknown, headers = alice) => app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers, payload: payload as object })
  const longer = await patch({ timeout_s: 3600 })
  t.equal(longer.statusCode, 200)
  t.equal(longer.json().timeout_s, 3600)
  t.ok(Date.parse(longer.json().expires_at) - Date.now() > 3500_000, 'the expiry moved an hour away')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).json().timeout_s, 3600, 'and it is kept')
  for (const [payload, code] of [[{ timeout_s: 3601 }, 'validation_error'], [{ timeout_s: 0 }, 'validation_error'], [{ timeout_s: 1e300 }, 'validation_error'], [{ timeout_s: 60, owner: 'bob' }, 'validation_error'], [{}, 'validation_error']] as const) {
    const res = await patch(payload)
    t.equal(res.statusCode, 400, JSON.stringify(payload))
    t.equal(res.json().error.code, code)
  }
  t.equal((await patch({ timeout_s: 60 }, auth(KEYS.bob))).statusCode, 404, 'another key\'s sandbox does not exist for it')
  t.equal((await patch({ timeout_s: 1 })).statusCode, 200, 'shortened to a second')
  await waitFor('the sandbox is removed a second after', async () => (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: alice })).statusCode === 404, { every: 100 })
  t.equal((await patch({ timeout_s: 60 })).statusCode, 404, 'a removed sandbox cannot be extended')
})

t.test('re-adoption: a restarted server finds its sandboxes with their state; orphans are removed', async (t) => {
  const config = await sandboxConfig({ SANDBOX_KEEP_ON_CLOSE: 'true', POOL_SIZE: '0' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const first = await buildApp({ config }, false)
  await first.ready()
  const id = (await first.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  await first.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'survivor = "still here"' } })
  const noSocket = (await first.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  await first.inject({ method: 'POST', url: `/v1/sandboxes/${noSocket}/execute`, headers: alice, payload: { code: 'survivor = "over attach"' } })
  const socketChannel = first.sandboxes.pool.stats.agent_channel === 'socket'
  const noSocketContainer = (await first.store.getSandbox(noSocket))!.container_id
  await first.close()
  if (socketChannel) {
    const info = await new Docker().getContainer(noSocketContainer).inspect()
    unlinkSync(`${info.Config.Labels['dev.interpreter-server.agent-dir']}/agent.sock`) // as if the socket were lost
  }
  const docker = new Docker()
  const orphan = await docker.createContainer(containerSpec({ image: first.sandboxes.pool.limits.image, cpus: 1, memoryMb: 128, pids: 50, workspaceMb: 8, tmpMb: 8, killGraceMs: 100 }, config.SANDBOX_NAMESPACE))
  t.equal(await containersIn(config.SANDBOX_NAMESPACE), 3, 'the kept sandboxes and an orphan')

  const second = await build(t, { ...config, SANDBOX_KEEP_ON_CLOSE: false })
  const res = await second.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'survivor' } })
  t.equal(res.statusCode, 200)
  t.same(res.json().results[0].data, { 'text/plain': "'still here'" }, 'the variable survived the restart')
  const attached = await second.inject({ method: 'POST', url: `/v1/sandboxes/${noSocket}/execute`, headers: alice, payload: { code: 'survivor' } })
  t.same(attached.json().results[0].data, { 'text/plain': "'over attach'" }, 'a sandbox whose socket is gone is re-adopted over docker attach')
  if (socketChannel) {
    const channel = async (sid: string) => (await second.sandboxes.handle((await second.store.getSandbox(sid))!)).agent.channel
    t.equal(await channel(id), 'socket', 're-adopted over its socket')
    t.equal(await channel(noSocket), 'attach', 'or, without one, over docker attach')
  }
  await t.rejects(orphan.inspect(), 'the orphan was removed')
})

t.test('containers are hardened as documented', async (t) => {
  const app = await build(t, await sandboxConfig())
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  const record = await app.store.getSandbox(id)
  const host = (await new Docker().getContainer(record!.container_id).inspect()).HostConfig
  t.match(host, {
    NetworkMode: 'none',
    ReadonlyRootfs: true,
    CapDrop: ['ALL'],
    CapAdd: ['SETUID', 'SETGID', 'KILL'],
    SecurityOpt: ['no-new-privileges'],
    Init: true,
    PidsLimit: 100,
    Memory: 512 * 1024 * 1024,
    MemorySwap: 512 * 1024 * 1024,
    NanoCpus: 1e9,
    ShmSize: 16 * 1024 * 1024,
    LogConfig: { Type: 'json-file', Config: { 'max-size': '1m' } }
  })
  t.match(host.Tmpfs, { '/home/user': /size=256m/, '/tmp': /size=64m/ })
  const binds = host.Binds ?? []
  if (app.sandboxes.pool.stats.agent_channel === 'socket') {
    t.equal(binds.length, 1, 'one host mount: the agent socket directory')
    t.match(binds[0], new RegExp(`^/run/interpreter-server/agents/${app.config.SANDBOX_NAMESPACE}/local/sbx-[^:]+:/run/agent:rw$`), 'in the deployment\'s own directory on this host')
  } else {
    t.same(binds, [], 'no host mounts')
  }
  t.notOk(binds.some(b => b.includes('docker.sock')), 'never the Docker socket')
  t.match(host.Ulimits, [{ Name: 'nofile' }, { Name: 'fsize' }])
})

t.test('a missing image or Docker daemon is reported clearly by /v1/ready and sandbox creation', async (t) => {
  const noImage = await build(t, await sandboxConfig({ SANDBOX_IMAGE: 'interpreter-sandbox:does-not-exist', POOL_SIZE: '1' }))
  const ready = await noImage.inject({ method: 'GET', url: '/v1/ready' })
  t.equal(ready.statusCode, 503)
  t.match(ready.json().checks, { docker: 'ok', image: /missing: interpreter-sandbox:does-not-exist/ })
  const create = await noImage.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })
  t.equal(create.statusCode, 503)
  t.match(create.json().error, { code: 'docker_unavailable', message: /sandbox image interpreter-sandbox:does-not-exist is missing/ })

  const noDocker = await build(t, await sandboxConfig({ DOCKER_SOCKET: '/nonexistent/docker.sock' }))
  const down = await noDocker.inject({ method: 'GET', url: '/v1/ready' })
  t.equal(down.statusCode, 503)
  t.match(down.json().checks.docker, /^down/)
  const refused = await noDocker.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().error.code, 'docker_unavailable')
})
