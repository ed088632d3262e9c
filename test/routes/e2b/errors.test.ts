// The E2B API as a hostile or careless client meets it: bad keys, ids, tokens, bodies, paths and numbers each get E2B's
// error shape (control plane, envd REST, the code interpreter) or a Connect error (RPC), never a crash or a hang.
import t from 'tap'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import { envelope } from '../../../services/e2b/connect.js'

t.test('E2B routes refuse bad input clearly', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const alice = { 'x-api-key': KEYS.alice, 'content-type': 'application/json' }
  const api = async (method: 'GET' | 'POST' | 'DELETE' | 'PUT', url: string, payload?: unknown, headers: Record<string, string> = alice) => {
    const res = await app.inject({ method, url: `/e2b${url}`, headers, ...(payload === undefined ? {} : { payload: payload as object }) })
    return { status: res.statusCode, body: res.body ? res.json() : null, headers: res.headers }
  }

  t.test('control plane', async (t) => {
    t.match(await api('POST', '/v2/sandboxes', {}, { 'content-type': 'application/json' }), { status: 401, body: { code: 401, message: /API key/ } }, 'no key')
    t.match(await api('POST', '/v2/sandboxes', {}, { 'x-api-key': 'nope', 'content-type': 'application/json' }), { status: 401, body: { code: 401 } }, 'a wrong key')
    t.match(await api('GET', '/sandboxes/not-an-id'), { status: 404, body: { code: 404, message: /not found/ } })
    t.match(await api('GET', `/sandboxes/${'ab'.repeat(32)}`), { status: 404 }, 'hex that is no id of ours')
    t.match(await api('POST', '/v2/sandboxes', { timeout: 10 ** 12 }), { status: 400, body: { code: 400, message: /timeout/ } }, 'a huge timeout')
    t.match(await api('POST', '/v2/sandboxes', { timeout: -5 }), { status: 400 }, 'a negative timeout')
    t.match(await api('POST', '/v2/sandboxes', { templateID: 'Nope/../x' }), { status: 404, body: { message: /Template/ } })
    t.match(await api('POST', '/v2/sandboxes', { templateID: 'no-such-snapshot' }), { status: 404, body: { message: /Template no-such-snapshot not found/ } })
    t.match(await api('POST', '/v2/sandboxes', { network: { rules: { 'api.example.com': [] } } }), { status: 400, body: { message: /network.rules is not offered/ } })
    t.match(await api('POST', '/v2/sandboxes', { allow_internet_access: true }), { status: 400, body: { message: /allowOut/ } })
    t.match(await api('POST', '/v2/sandboxes', { mcp: { github: {} } }), { status: 400, body: { message: /MCP/ } })
    t.match(await api('GET', '/v2/sandboxes?nextToken=!!!'), { status: 400 }, 'a made-up page token')
    t.match(await api('GET', '/v2/sandboxes?state=dead'), { status: 400, body: { message: /running or paused/ } })
    t.match(await api('GET', '/v2/sandboxes?limit=1000000'), { status: 400 })
    t.match(await api('GET', '/templates'), { status: 404, body: { code: 404, message: /not offered/ } }, 'a part of E2B\'s API we lack: its shape, not HTML')
    t.match(await api('GET', `/sandboxes/${'ab'.repeat(4)}/metrics`), { status: 501, body: { code: 501, message: /metrics/i } })
  })

  const created = await api('POST', '/v2/sandboxes', { metadata: { a: 'b' } })
  t.equal(created.status, 201)
  const sandboxId = created.body.sandboxID as string
  const token = created.body.envdAccessToken as string
  const data = (port = '49983', extra: Record<string, string> = {}) => ({ 'e2b-sandbox-id': sandboxId, 'e2b-sandbox-port': port, 'x-access-token': token, ...extra })
  const rpc = async (method: string, body: unknown, headers = data()) => {
    const res = await app.inject({ method: 'POST', url: `/e2b/sandbox/${method}`, headers: { ...headers, 'content-type': 'application/json' }, payload: JSON.stringify(body) })
    return { status: res.statusCode, body: res.body ? res.json() : null }
  }
  const stream = async (method: string, raw: Buffer) => {
    const res = await app.inject({ method: 'POST', url: `/e2b/sandbox/${method}`, headers: { ...data(), 'content-type': 'application/connect+json' }, payload: raw })
    return { status: res.statusCode, raw: res.rawPayload }
  }
  /** The end-of-stream message of a stream's answer. */
  const endOf = (raw: Buffer) => {
    for (let at = 0; at + 5 <= raw.length;) {
      const length = raw.readUInt32BE(at + 1)
      if (raw[at]! & 2) return JSON.parse(raw.subarray(at + 5, at + 5 + length).toString())
      at += 5 + length
    }
    return null
  }

  t.test('data plane: who may call', async (t) => {
    t.match(await rpc('process.Process/List', {}, { 'e2b-sandbox-port': '49983', 'x-access-token': token } as never), { status: 400, body: { message: /E2b-Sandbox-Id/ } })
    t.match(await rpc('process.Process/List', {}, data('49983', { 'x-access-token': 'forged' })), { status: 401, body: { code: 401 } })
    t.match(await rpc('process.Process/List', {}, { ...data(), 'x-access-token': '' }), { status: 401 })
    t.match(await rpc('process.Process/List', {}, { ...data(), 'e2b-sandbox-id': 'ab'.repeat(10) }), { status: 502 }, 'an unknown sandbox is 502, as E2B\'s edge says')
    t.match(await rpc('process.Process/List', {}, { ...data(), 'e2b-sandbox-port': '99999' }), { status: 400 })
    const other = await api('POST', '/v2/sandboxes', {}, { 'x-api-key': KEYS.bob, 'content-type': 'application/json' })
    t.match(await rpc('process.Process/List', {}, { ...data(), 'x-access-token': other.body.envdAccessToken }), { status: 401 }, 'another sandbox\'s token opens nothing here')
    await api('DELETE', `/sandboxes/${other.body.sandboxID}`, undefined, { 'x-api-key': KEYS.bob })
  })

  t.test('data plane: bad messages', async (t) => {
    t.match(await rpc('process.Process/Nope', {}), { status: 501, body: { code: 'unimplemented' } })
    t.match(await rpc('process.Process/StreamInput', {}), { status: 501, body: { code: 'unimplemented', message: /SendInput/ } })
    t.match(await rpc('process.Process/SendInput', { process: { selector: { pid: 10 ** 12 } }, input: { stdin: 'aGk=' } }), { status: 400, body: { code: 'invalid_argument' } }, 'a pid past any pid')
    t.match(await rpc('process.Process/SendInput', { process: { selector: { pid: 4242 } }, input: { stdin: 'aGk=' } }), { status: 404, body: { code: 'not_found' } })
    t.match(await rpc('process.Process/SendSignal', { process: { selector: { pid: 4242 } }, signal: 'SIGNAL_SIGSTOP' }), { status: 400, body: { code: 'invalid_argument' } })
    t.match(await rpc('filesystem.Filesystem/ListDir', { path: '/home/user', depth: 10 ** 9 }), { status: 400, body: { code: 'invalid_argument' } })
    t.match(await rpc('filesystem.Filesystem/ListDir', { path: '/home/user/../../etc' }), { status: 403, body: { code: 'permission_denied' } }, 'no way out of the workspace')
    t.match(await rpc('filesystem.Filesystem/Stat', { path: 'a\u0000b' }), { status: 400, body: { code: 'invalid_argument' } })
    t.match(await rpc('filesystem.Filesystem/Stat', { path: '/home/user/missing' }), { status: 404, body: { code: 'not_found' } })
    t.match(await rpc('filesystem.Filesystem/Remove', { path: '/home/user' }), { status: 403 }, 'the workspace itself stays')
    t.match(await rpc('filesystem.Filesystem/Stat', { path: 42 }), { status: 400, body: { code: 'invalid_argument', message: /path/ } })
    const notJson = await app.inject({ method: 'POST', url: '/e2b/sandbox/filesystem.Filesystem/Stat', headers: { ...data(), 'content-type': 'application/json' }, payload: '{nope' })
    t.match({ status: notJson.statusCode, body: notJson.json() }, { status: 400, body: { code: 'invalid_argument' } })
    t.match(endOf((await stream('process.Process/Start', envelope({ process: { cmd: 'x', envs: { 'BAD NAME': 'v' } } }))).raw), { error: { code: 'invalid_argument' } }, 'an env name that is no name')
    t.match(endOf((await stream('process.Process/Start', envelope({ process: { cmd: '' } }))).raw), { error: { code: 'invalid_argument' } })
    const lying = Buffer.alloc(5)
    lying.writeUInt32BE(2 ** 31, 1)
    t.match(endOf((await stream('process.Process/Start', lying)).raw), { error: { code: 'resource_exhausted' } }, 'an envelope claiming 2 GB')
    t.match(endOf((await stream('process.Process/Start', Buffer.from('xy'))).raw), { error: { code: 'invalid_argument' } }, 'no envelope')
    t.match(endOf((await stream('process.Process/Connect', envelope({ process: { selector: { pid: 4242 } } }))).raw), { error: { code: 'not_found' } })
    t.match(endOf((await stream('filesystem.Filesystem/WatchDir', envelope({ path: '/home/user/missing' }))).raw), { error: { code: 'not_found' } })
  })

  t.test('polling watchers (CreateWatcher, GetWatcherEvents, RemoveWatcher), as E2B\'s Python SDK uses them', async (t) => {
    t.match(await rpc('filesystem.Filesystem/MakeDir', { path: 'polled' }), { status: 200, body: { entry: { type: 'FILE_TYPE_DIRECTORY', path: '/home/user/polled' } } })
    const made = await rpc('filesystem.Filesystem/CreateWatcher', { path: '/home/user/polled' })
    t.equal(made.status, 200)
    const watcherId = made.body.watcherId as string
    const upload = await app.inject({ method: 'POST', url: '/e2b/sandbox/files?path=/home/user/polled/f.txt', headers: { ...data(), 'content-type': 'application/octet-stream' }, payload: 'x' })
    t.match({ status: upload.statusCode, body: upload.json() }, { status: 200, body: [{ path: '/home/user/polled/f.txt' }] }, 'an octet-stream upload')
    let events: Array<{ name: string, type: string }> = []
    for (let i = 0; i < 100 && !events.some(e => e.name === 'f.txt'); i++) {
      events = events.concat((await rpc('filesystem.Filesystem/GetWatcherEvents', { watcherId })).body.events)
      await new Promise(resolve => setTimeout(resolve, 50))
    }
    t.ok(events.some(e => e.name === 'f.txt' && e.type === 'EVENT_TYPE_CREATE'), 'the new file, polled')
    t.notOk(events.some(e => e.name.startsWith('.upload-')), 'not the upload\'s own temporary file')
    t.match(await rpc('filesystem.Filesystem/RemoveWatcher', { watcherId }), { status: 200 })
    t.match(await rpc('filesystem.Filesystem/GetWatcherEvents', { watcherId }), { status: 404, body: { code: 'not_found' } }, 'gone once removed')
    t.match(await rpc('filesystem.Filesystem/GetWatcherEvents', { watcherId: 'made-up' }), { status: 404 })
  })

  t.test('envd REST and the code interpreter', async (t) => {
    const files = async (url: string, headers = data()) => {
      const res = await app.inject({ method: 'GET', url: `/e2b/sandbox${url}`, headers })
      return { status: res.statusCode, body: res.body }
    }
    t.match(await files('/files?path=/home/user'), { status: 400, body: /directory/ }, 'a directory where a file is expected')
    t.match(await files('/files?path=/etc/passwd'), { status: 403, body: /workspace/ })
    t.match(await files('/files?path=/home/user/x&username=root'), { status: 403, body: /root/ })
    t.match(await files('/files?path=/home/user/missing'), { status: 404 })
    const empty = await app.inject({ method: 'POST', url: '/e2b/sandbox/files', headers: { ...data(), 'content-type': 'application/octet-stream' }, payload: 'x' })
    t.equal(empty.statusCode, 400, 'an octet-stream upload without ?path')
    const run = async (body: unknown) => {
      const res = await app.inject({ method: 'POST', url: '/e2b/sandbox/execute', headers: { ...data('49999'), 'content-type': 'application/json' }, payload: JSON.stringify(body) })
      return { status: res.statusCode, body: res.body }
    }
    t.match(await run({ code: 42 }), { status: 400 })
    t.match(await run({ code: '1', language: 'java' }), { status: 400, body: /java/ })
    t.match(await run({ code: '1', context_id: 'python-0000000000000000' }), { status: 404, body: /context/ })
    t.match(await run({ code: '1', context_id: '../../etc' }), { status: 404 })
    t.match(await run({ code: '1', env_vars: { A: 'b' } }), { status: 400, body: /envs/ })
    t.match(await run({ code: 'print("ok")' }), { status: 200, body: /"type":"stdout","text":"ok\\n"/ })
    const ctx = await app.inject({ method: 'POST', url: '/e2b/sandbox/contexts', headers: { ...data('49999'), 'content-type': 'application/json' }, payload: JSON.stringify({ language: 'python', cwd: '/no/such/dir' }) })
    t.equal(ctx.statusCode, 400, 'a context in a directory that is not there')
    const del = await app.inject({ method: 'DELETE', url: '/e2b/sandbox/contexts/python', headers: data('49999') })
    t.equal(del.statusCode, 400, 'a default context is restarted, not removed')
    const port = await app.inject({ method: 'GET', url: '/e2b/sandbox/anything', headers: data('3000') })
    t.match({ status: port.statusCode, body: port.json() }, { status: 502, body: { message: /port|3000/ } }, 'a port nothing listens on: 502 naming it')
  })

  t.test('kill, twice at once', async (t) => {
    const both = await Promise.all([api('DELETE', `/sandboxes/${sandboxId}`), api('DELETE', `/sandboxes/${sandboxId}`)])
    t.ok(both.some(r => r.status === 204), 'one kills it')
    t.ok(both.every(r => r.status === 204 || r.status === 404), 'the other finds it gone, or killed it too; never an error')
    t.equal((await api('DELETE', `/sandboxes/${sandboxId}`)).status, 404, 'killed once')
  })
})
