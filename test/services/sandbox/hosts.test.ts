import t from 'tap'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import Docker from 'dockerode'
import { WebSocket } from 'ws'
import type { FastifyInstance } from 'fastify'
import { build, sandboxConfig, sandboxCalls, auth, KEYS, REDIS_URL, flushPrefix, waitFor } from '../../helper.js'
import type { Config } from '../../../services/config.js'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'
import { toE2bId } from '../../../services/e2b/control.js'

// Two Docker daemons on this machine: the usual one and a second one (scripts/second-dockerd.sh, which this test
// starts when it is not running and stops again after), two server replicas sharing one Redis, sandboxes spread over both hosts.
const SECOND = '/run/is-docker2/docker.sock'
const hostsSpec = `one=unix:///var/run/docker.sock,two=unix://${SECOND}`
const dockers = { one: new Docker(), two: new Docker({ socketPath: SECOND }) }
const alice = auth(KEYS.alice)
let config: Config
const apps: FastifyInstance[] = []
// The slim image (setup builds it): the second daemon is given it by `docker save | docker load`, half the bytes of the full one.
const daemon = (action: 'start' | 'stop') => execFileSync('bash', ['scripts/second-dockerd.sh', action], { stdio: 'ignore', env: { ...process.env, SANDBOX_IMAGE_PROFILE: 'slim' } })

let startedHere = false

t.before(async () => {
  startedHere = !(await dockers.two.ping().then(() => true, () => false))
  try {
    daemon('start') // starts it when it is not running, and gives it the image when it lacks it
  } catch {
    throw new Error(`these tests need a second Docker daemon at ${SECOND} and could not start it (root, dockerd and iproute2 are needed): bash scripts/second-dockerd.sh start, and see /var/log/is-docker2.log`)
  }
  await dockers.two.ping().catch(() => { throw new Error(`these tests need a second Docker daemon at ${SECOND}: bash scripts/second-dockerd.sh start`) })
  config = await sandboxConfig({ SANDBOX_IMAGE_PROFILE: 'slim', SANDBOX_DOCKER_HOSTS: hostsSpec, POOL_SIZE: '0', MAX_SANDBOXES_PER_KEY: '60', SANDBOX_KEEP_ON_CLOSE: 'true' })
  apps.push(await build(t, config), await build(t, config))
})
t.teardown(async () => {
  daemon('start')
  for (const docker of Object.values(dockers)) {
    for (const c of await docker.listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${config.SANDBOX_NAMESPACE}`] } })) {
      await docker.getContainer(c.Id).remove({ force: true }).catch(() => {})
    }
  }
  await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
  if (startedHere) daemon('stop') // left as it was found
})

const calls = (i: number) => sandboxCalls(() => apps[i])
const hostOf = async (id: string) => (await apps[0].store.getSandbox(id))!.host
const status = async (app: FastifyInstance, id: string, code: string) => {
  const res = await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })
  return { status: res.statusCode, body: res.json() }
}
/** A replica's URL: it listens (on loopback) the first time a test asks. */
const urls = new Map<FastifyInstance, Promise<string>>()
const urlOf = (app: FastifyInstance) => urls.get(app) ?? urls.set(app, app.listen({ host: '127.0.0.1', port: 0 })).get(app)!
const until = (what: string, check: () => Promise<boolean>, ms = 30_000) => waitFor(what, check, { ms, every: 200 })
const ids: string[] = []

t.test('20 sandboxes created through two replicas land on both hosts by capacity, each keeps its state', async (t) => {
  for (let i = 0; i < 20; i++) {
    const id = await calls(i % 2).newSandbox()
    ids.push(id)
    await calls(i % 2).run(id, `x = ${i}`)
  }
  const placement: Record<string, number> = {}
  for (const id of ids) {
    const host = (await hostOf(id))!
    placement[host] = (placement[host] ?? 0) + 1
  }
  t.same(placement, { one: 10, two: 10 }, 'spread evenly: each new sandbox goes to the host with the most free slots')
  for (const [i, id] of ids.entries()) {
    t.equal((await calls((i + 1) % 2).run(id, 'print(x)')).stdout, `${i}\n`, `the other replica serves ${id} on ${await hostOf(id)}, state kept`)
  }
  const ready = (await apps[0].inject({ method: 'GET', url: '/v1/ready' })).json()
  t.match(ready.hosts, [{ name: 'one', status: 'up', live: 10 }, { name: 'two', status: 'up', live: 10 }], '/v1/ready shows each host')
  const metrics = (await apps[0].inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })).body
  t.match(metrics, /sandbox_docker_host_up\{host="two"\} 1/)
})

t.test('a workspace on the second host, used through the replica that did not make it: a command, a server reached through the port proxy and a signed URL, a terminal, a watcher, a signal', async (t) => {
  let made = -1 // the first sandbox on host two, and the replica that made it (ids[i] was made through apps[i % 2])
  for (const [i, sid] of ids.entries()) if (made < 0 && await hostOf(sid) === 'two') made = i
  t.ok(made >= 0, 'a sandbox on host two')
  const sandbox = ids[made]!
  const other = apps[(made + 1) % 2]!
  const base = await urlOf(other)
  const wsBase = base.replace('http', 'ws')
  const inject = async (method: 'GET' | 'POST', url: string, payload?: object, headers: Record<string, string> = alice) => {
    const res = await other.inject({ method, url, headers, ...(payload ? { payload } : {}) })
    return { status: res.statusCode, body: String(res.headers['content-type']).startsWith('application/json') ? res.json() : null, text: res.body }
  }
  const first = await inject('POST', `/v1/sandboxes/${sandbox}/commands`, { cmd: 'echo "$(hostname) $X"; echo ok > page.html', env: { X: 'here' } })
  t.match(first.body, { exit_code: 0, stdout: /here\n$/ }, first.text)
  const server = await inject('POST', `/v1/sandboxes/${sandbox}/commands`, { cmd: ['python3', '-m', 'http.server', '8080'], background: true })
  t.equal(server.status, 201)
  const page = await until('the server inside', async () => (await inject('GET', `/v1/sandboxes/${sandbox}/ports/8080/page.html`)).text === 'ok\n')
  t.ok(page, 'the page through the port proxy, on host two, from the other replica')
  const log = (await inject('GET', `/v1/sandboxes/${sandbox}/processes/${server.body.pid}/output`)).body
  t.match(log.output.map((c: { text: string }) => c.text).join(''), /GET \/page.html/, 'its log is read')
  const signed = (await inject('POST', `/v1/sandboxes/${sandbox}/ports/8080/url`, { expires_in: 60 })).body
  t.equal((await apps[made % 2]!.inject({ method: 'GET', url: `${signed.path}page.html` })).body, 'ok\n', 'a URL signed by one replica works on the other')

  const term = new WebSocket(`${wsBase}/v1/sandboxes/${sandbox}/pty`, { headers: alice })
  let screen = ''
  term.on('message', (data: Buffer, binary: boolean) => { if (binary) screen += data.toString() })
  await new Promise((resolve, reject) => term.once('open', resolve).once('error', reject))
  term.send(Buffer.from('read x; echo "got $x"\n'))
  await until('the prompt', async () => screen.includes('read x'))
  term.send(Buffer.from('there\n'))
  await until('the answer', async () => screen.includes('got there'))
  t.pass('a terminal on host two')
  term.close()

  const watch = new WebSocket(`${wsBase}/v1/sandboxes/${sandbox}/watch`, { headers: alice })
  const events: Array<{ type: string, path?: string }> = []
  watch.on('message', (data: Buffer) => events.push(JSON.parse(data.toString())))
  await until('watching', async () => events.some(e => e.type === 'watching'))
  await calls((made + 1) % 2).run(sandbox, 'open("made-by-kernel.txt", "w").write("hi")')
  await until('the event', async () => events.some(e => e.type === 'create' && e.path === 'made-by-kernel.txt'))
  t.pass('a watcher sees a file a kernel run made')
  watch.close()

  const sleeper = (await inject('POST', `/v1/sandboxes/${sandbox}/commands`, { cmd: 'sleep 600', background: true })).body.pid
  t.equal((await inject('POST', `/v1/sandboxes/${sandbox}/processes/${sleeper}/signal`, { signal: 'SIGTERM' })).status, 204)
  const ended = await until('its exit', async () => (await inject('GET', `/v1/sandboxes/${sandbox}/processes/${sleeper}`)).body.running === false)
  t.ok(ended)
  t.match((await inject('GET', `/v1/sandboxes/${sandbox}/processes/${sleeper}`)).body, { status: 'killed', signal: 'SIGTERM' }, 'a signal ends it, and its exit says so')
  await inject('POST', `/v1/sandboxes/${sandbox}/processes/${server.body.pid}/signal`, { signal: 'SIGKILL' })
})

t.test('E2B\'s SDK reaches a sandbox on the second host through the replica that did not make it', async (t) => {
  let made = -1
  for (const [i, sid] of ids.entries()) if (made < 0 && await hostOf(sid) === 'two') made = i
  const other = apps[(made + 1) % 2]!
  const base = await urlOf(other)
  const opts = { apiKey: KEYS.alice, apiUrl: `${base}/e2b`, sandboxUrl: `${base}/e2b/sandbox` }
  const sandbox = await CodeSandbox.connect(toE2bId(ids[made]!), opts)
  t.equal((await sandbox.commands.run('echo "$((40 + 2))"')).stdout, '42\n', 'a command')
  await sandbox.files.write('/home/user/e2b.txt', 'from e2b')
  t.equal(await sandbox.files.read('/home/user/e2b.txt'), 'from e2b', 'a file')
  t.equal((await sandbox.runCode('x')).text, String(made), 'the code interpreter sees the variable set through the REST API')
  t.equal((await CodeSandbox.list({ ...opts, query: { metadata: {} } }).nextItems()).length, ids.length, 'listed from either replica')
})

t.test('agent directories: 30 creates while every host\'s pool, in this and another deployment sharing the directory, sweeps; none fails, none loses its directory', async (t) => {
  // Before, each pool swept the whole shared directory and kept only what its own host listed: host two's sweep
  // removed host one's directories (and those of containers still being created), and a create failed with "error
  // mounting ... no such file or directory".
  const other = await build(t, { ...config, SANDBOX_NAMESPACE: `${config.SANDBOX_NAMESPACE}-other`, REDIS_PREFIX: `${config.REDIS_PREFIX}other:` })
  const pools = [...apps, other].flatMap(app => app.sandboxes.pools)
  t.equal(pools.length, 6)
  const state = { sweeping: true, sweeps: 0 }
  const sweeper = (async () => {
    while (state.sweeping) {
      await Promise.all(pools.map(pool => pool.containers.removeStaleAgentDirs()))
      state.sweeps++
      await new Promise(resolve => setTimeout(resolve, 10))
    }
  })()
  const made = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => calls(i % 2).newSandbox()))
  state.sweeping = false
  await sweeper
  const sweeps = state.sweeps
  const failures = made.filter(m => m.status === 'rejected').map(m => String((m as PromiseRejectedResult).reason))
  t.same(failures, [], `30 creates, no failure, during ${sweeps} rounds of six sweeps`)
  const created = made.flatMap(m => m.status === 'fulfilled' ? [m.value] : [])
  for (const docker of Object.values(dockers)) {
    for (const c of await docker.listContainers({ all: true, filters: { label: [`dev.interpreter-server.namespace=${config.SANDBOX_NAMESPACE}`] } })) {
      const dir = c.Labels['dev.interpreter-server.agent-dir']
      t.ok(dir && existsSync(dir), `${c.Id.slice(0, 12)} keeps its agent directory`)
    }
  }
  for (const [i, id] of created.entries()) {
    t.equal((await calls(i % 2).run(id, 'print("ok")')).stdout, 'ok\n')
    await apps[i % 2].inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: alice })
  }
})

t.test('a host that goes down: its sandboxes are 503s, the other host serves and takes new ones; back with state when it returns', async (t) => {
  const onTwo: string[] = []
  const onOne: string[] = []
  for (const id of ids) ((await hostOf(id)) === 'two' ? onTwo : onOne).push(id)
  daemon('stop')
  // Each replica pings on its own schedule: both mark the host down within two pings.
  await until('host two is marked down', async () => (await status(apps[0], onTwo[0], 'print(x)')).status === 503)
  await until('the other replica too', async () => (await status(apps[1], onTwo[1], 'print(x)')).status === 503)
  const down = await status(apps[1], onTwo[1], 'print(x)')
  t.match(down, { status: 503, body: { error: { code: 'sandbox_host_unavailable' } } }, 'another replica says the same')
  t.equal((await calls(0).run(onOne[0], 'print(x)')).stdout, `${ids.indexOf(onOne[0])}\n`, 'host one keeps working, state intact')
  const fresh = await calls(1).newSandbox()
  t.equal(await hostOf(fresh), 'one', 'new sandboxes go to the host that answers')
  const ready = (await apps[0].inject({ method: 'GET', url: '/v1/ready' })).json()
  t.equal(ready.status, 'ready', 'still ready: one host answers')
  t.match(ready.hosts, [{ name: 'one', status: 'up' }, { name: 'two', status: 'down' }])
  await apps[1].inject({ method: 'DELETE', url: `/v1/sandboxes/${fresh}`, headers: alice })

  daemon('start') // live-restore: its containers kept running while the daemon was away
  await until('host two is back', async () => (await status(apps[0], onTwo[0], 'print(x)')).status === 200)
  await until('for the other replica too', async () => (await status(apps[1], onTwo[0], 'print(x)')).status === 200)
  for (const id of onTwo) {
    t.equal((await calls(1).run(id, 'print(x)')).stdout, `${ids.indexOf(id)}\n`, `${id} is back with its state`)
  }
})

t.test('a host that comes back without a sandbox: 410 sandbox_lost; a session then gets a fresh sandbox and is told', async (t) => {
  let victim = ''
  for (const id of ids) if (!victim && (await hostOf(id)) === 'two') victim = id
  const record = (await apps[0].store.getSandbox(victim))!
  await dockers.two.getContainer(record.container_id).remove({ force: true })
  await until('the loss is seen', async () => (await status(apps[0], victim, 'print(x)')).status === 410)
  t.equal((await apps[1].inject({ method: 'GET', url: `/v1/sandboxes/${victim}`, headers: alice })).statusCode, 404, 'its record is gone')

  const session = (await apps[0].inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: {} })).json()
  const first = await (await apps[0].runs.executeDirect(session, 'python', 'y = 5\nprint(y)', { via: 'rest' })).done
  t.equal(first.execution?.stdout, '5\n')
  const stored = (await apps[0].store.getSession(session.id))!
  const sandbox = (await apps[0].store.getSandbox(stored.sandbox_id!))!
  await dockers[(sandbox.host ?? 'one') as 'one' | 'two'].getContainer(sandbox.container_id).remove({ force: true })
  await until('the loss is seen', async () => {
    const run = await (await apps[1].runs.executeDirect(stored, 'python', 'print(1)', { via: 'rest' })).done
    return run.error?.code === 'sandbox_lost'
  })
  const again = await (await apps[1].runs.executeDirect((await apps[1].store.getSession(session.id))!, 'python', 'print("y" in globals())', { via: 'rest' })).done
  t.equal(again.execution?.stdout, 'False\n', 'a fresh sandbox')
  t.equal(again.execution?.state_lost, true, 'and the run says its state was lost')
  t.match(again.execution?.stderr, /sandbox was lost/)
})

t.test('a restarted replica re-adopts sandboxes on both hosts, state intact', async (t) => {
  await apps[0].close()
  apps[0] = await build(t, config)
  const alive = []
  for (const id of ids) if (await apps[0].store.getSandbox(id)) alive.push(id)
  const hosts = new Set<string>()
  for (const id of alive) {
    t.equal((await calls(0).run(id, 'print(x)')).stdout, `${ids.indexOf(id)}\n`)
    hosts.add((await hostOf(id))!)
  }
  t.same([...hosts].sort(), ['one', 'two'])
})
