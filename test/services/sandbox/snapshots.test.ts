// Snapshots and forks against the real engine: a sandbox's workspace kept in a volume of its host.
import t from 'tap'
import Docker from 'dockerode'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'

const alice = auth(KEYS.alice)
const bob = auth(KEYS.bob)
const docker = new Docker()
const volumesIn = async (namespace: string, purpose: string): Promise<string[]> =>
  ((await docker.listVolumes({ filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })).Volumes ?? [])
    .map(v => v.Name).filter(name => name.startsWith(`${namespace}-${purpose}-`))

t.test('a snapshot outlives its sandbox; a sandbox started from it has its files; only its key sees it', async (t) => {
  const config = await sandboxConfig({ MAX_SANDBOXES_PER_KEY: '5', SANDBOX_MAX_SNAPSHOTS_PER_KEY: '2' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const run = async (id: string, code: string) => (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })).json()
  const source = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { language: 'python' } })).json().id as string
  await run(source, 'import os\nx = 42\nos.makedirs("/home/user/data", exist_ok=True)\nopen("/home/user/data/note.txt", "w").write("from the snapshot")')

  const taken = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: alice, payload: { name: 'base-1' } })
  t.equal(taken.statusCode, 201)
  t.match(taken.json(), { object: 'snapshot', name: 'base-1', language: 'python', source_sandbox: source, keeps: 'files' })
  t.ok(taken.json().size_bytes > 0)
  const again = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: alice, payload: { name: 'base-1' } })
  t.equal(again.statusCode, 409)
  t.equal(again.json().error.code, 'snapshot_exists')
  for (const name of ['Base', '-x', 'a/b', 'x'.repeat(64), '']) {
    t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: alice, payload: { name } })).statusCode, 400, `name ${JSON.stringify(name)} is refused`)
  }
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: bob, payload: { name: 'mine' } })).statusCode, 404, "another key cannot snapshot alice's sandbox")
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: alice, payload: { name: 'second' } })).statusCode, 201)
  const third = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/snapshots`, headers: alice, payload: { name: 'third' } })
  t.equal(third.statusCode, 429, 'SANDBOX_MAX_SNAPSHOTS_PER_KEY')
  t.equal(third.json().error.code, 'snapshot_limit_reached')

  t.same((await app.inject({ method: 'GET', url: '/v1/snapshots', headers: alice })).json().data.map((s: { name: string }) => s.name).sort(), ['base-1', 'second'])
  t.same((await app.inject({ method: 'GET', url: '/v1/snapshots', headers: bob })).json().data, [], "bob sees none of alice's")
  t.equal((await app.inject({ method: 'GET', url: '/v1/snapshots/base-1', headers: bob })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: '/v1/snapshots/base-1', headers: alice })).json().name, 'base-1')

  // The sandbox goes; the snapshot stays, and a new sandbox starts from it.
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${source}`, headers: alice })).statusCode, 204)
  const started = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { snapshot: 'base-1' } })
  t.equal(started.statusCode, 201)
  const copy = started.json().id as string
  t.equal(started.json().language, 'python', "the snapshot's language")
  t.equal((await run(copy, 'print(open("/home/user/data/note.txt").read())')).stdout, 'from the snapshot\n', 'the file is back')
  t.match((await run(copy, 'print(x)')).error, { name: 'NameError' }, 'a snapshot keeps files, not variables')
  t.equal((await run(copy, 'import os; print(os.stat("/home/user/data/note.txt").st_uid)')).stdout, '1000\n', 'owned by the sandbox user')
  const bobs = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: bob, payload: { snapshot: 'base-1' } })
  t.equal(bobs.statusCode, 404, "another key cannot start from alice's snapshot")
  t.equal(bobs.json().error.code, 'snapshot_not_found')
  t.equal((await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { snapshot: 'nope' } })).statusCode, 404)

  // Deleting it removes its files; sandboxes started from it keep theirs.
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/snapshots/base-1', headers: bob })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/snapshots/base-1', headers: alice })).statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/snapshots/base-1', headers: alice })).statusCode, 404)
  t.equal((await volumesIn(config.SANDBOX_NAMESPACE, 'snapshot')).length, 1, 'only the other snapshot keeps a volume')
  t.equal((await run(copy, 'print(open("/home/user/data/note.txt").read())')).stdout, 'from the snapshot\n')
  t.equal((await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { snapshot: 'base-1' } })).statusCode, 404)
})

t.test('fork: count sandboxes from one copy, each its own; over the limits, each says why', async (t) => {
  const config = await sandboxConfig({ MAX_SANDBOXES_PER_KEY: '4', SANDBOX_MAX_FORK: '3' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const run = async (id: string, code: string) => (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })).json()
  const source = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { timeout_s: 600, metadata: { job: 'forks' } } })).json().id as string
  await run(source, 'open("/home/user/n.txt", "w").write("42")')

  const over = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/fork`, headers: alice, payload: { count: 4 } })
  t.equal(over.statusCode, 400, 'over SANDBOX_MAX_FORK')
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/fork`, headers: alice, payload: { count: 0 } })).statusCode, 400)
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/fork`, headers: bob, payload: { count: 1 } })).statusCode, 404)

  const forked = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/fork`, headers: alice, payload: { count: 3 } })
  t.equal(forked.statusCode, 200)
  const data = forked.json().data as Array<{ sandbox?: { id: string, timeout_s: number, metadata: Record<string, string> }, error?: { code: string } }>
  t.equal(data.length, 3)
  t.ok(data.every(d => d.sandbox), 'three sandboxes')
  const ids = data.map(d => d.sandbox!.id)
  t.equal(new Set(ids).size, 3)
  t.match(data[0].sandbox, { timeout_s: 600, metadata: { job: 'forks' } }, "the source's settings")
  for (const [i, id] of ids.entries()) {
    t.equal((await run(id, 'print(open("/home/user/n.txt").read())')).stdout, '42\n', `fork ${i} has the file`)
    await run(id, `open("/home/user/n.txt", "w").write("${i}")`)
  }
  for (const [i, id] of ids.entries()) t.equal((await run(id, 'print(open("/home/user/n.txt").read())')).stdout, `${i}\n`, `fork ${i} went its own way`)
  t.equal((await run(source, 'print(open("/home/user/n.txt").read())')).stdout, '42\n', 'the source is untouched')
  t.same(await volumesIn(config.SANDBOX_NAMESPACE, 'fork'), [], "the fork's copy is removed once its sandboxes have it")

  // The key has 4 of its 4: a further fork answers an error per sandbox, and nothing is left behind.
  const full = await app.inject({ method: 'POST', url: `/v1/sandboxes/${source}/fork`, headers: alice, payload: { count: 2 } })
  t.equal(full.statusCode, 200)
  t.same(full.json().data.map((d: { error?: { code: string } }) => d.error?.code), ['sandbox_limit_reached', 'sandbox_limit_reached'])
  t.equal((await app.inject({ method: 'GET', url: '/v1/sandboxes', headers: alice })).json().data.length, 4)
})
