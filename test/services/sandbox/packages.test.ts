// Package installs behind the wall (issue 26): the `packages` entry of a network policy allows the operator's package
// index (here a local PyPI-style one on 127.0.0.1), pip is pointed at it, and the egress proxy keeps each download in
// its cache, so a second sandbox's install of the same package does not reach the index for it again.
import t from 'tap'
import { createServer } from 'node:http'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'

const admin = { ...auth(KEYS.admin), 'content-type': 'application/json' }
const alice = { ...auth(KEYS.alice), 'content-type': 'application/json' }
const WHEEL = 'demo_pkg-1.0-py3-none-any.whl'

/** A pure-python wheel, made with the host's python3 (zipfile). */
function makeWheel (dir: string): Buffer {
  execFileSync('python3', ['-c', `
import zipfile, sys
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    z.writestr('demo_pkg/__init__.py', 'VALUE = 42\\n')
    z.writestr('demo_pkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: demo-pkg\\nVersion: 1.0\\n')
    z.writestr('demo_pkg-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')
    z.writestr('demo_pkg-1.0.dist-info/RECORD', 'demo_pkg/__init__.py,,\\ndemo_pkg-1.0.dist-info/METADATA,,\\ndemo_pkg-1.0.dist-info/WHEEL,,\\ndemo_pkg-1.0.dist-info/RECORD,,\\n')
`, join(dir, WHEEL)])
  return readFileSync(join(dir, WHEEL))
}

t.test('the packages preset and the download cache', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'packages-'))
  const wheel = makeWheel(work)
  let downloads = 0
  const index = createServer((req, res) => {
    if (req.url === '/simple/demo-pkg/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(`<html><body><a href="/files/${WHEEL}">${WHEEL}</a></body></html>`)
    } else if (req.url === `/files/${WHEEL}`) {
      downloads++
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': wheel.length }).end(wheel)
    } else {
      res.writeHead(404).end()
    }
  })
  await new Promise<void>(resolve => index.listen(0, '127.0.0.1', resolve))
  t.teardown(() => index.close())
  const port = (index.address() as { port: number }).port

  const config = await sandboxConfig({ POOL_SIZE: '1', SANDBOX_PACKAGE_INDEXES: `pip=http://127.0.0.1:${port}/simple`, SANDBOX_PACKAGE_CACHE_DIR: join(work, 'cache') })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const call = async (method: 'POST' | 'DELETE', url: string, payload?: unknown, headers = admin) => {
    const res = await app.inject({ method, url, headers: payload === undefined ? { authorization: headers.authorization } : headers, ...(payload === undefined ? {} : { payload: payload as object }) })
    return { status: res.statusCode, body: res.body ? res.json() : null }
  }

  const install = async () => {
    const sandbox = (await call('POST', '/v1/sandboxes', { network: { allow: ['packages'] } })).body
    t.same(sandbox.network, { allow: [`127.0.0.1:${port}`] }, 'the preset is the operator\'s index')
    const pip = (await call('POST', `/v1/sandboxes/${sandbox.id}/commands`, { cmd: 'pip install --no-deps demo-pkg 2>&1 | tail -2; python3 -c "import demo_pkg; print(demo_pkg.VALUE)"' })).body
    await call('DELETE', `/v1/sandboxes/${sandbox.id}`)
    return pip.stdout as string
  }
  t.match(await install(), /42\n$/, 'the first sandbox installs it from the index')
  t.equal(downloads, 1)
  t.match(await install(), /42\n$/, 'a second sandbox installs it too')
  t.equal(downloads, 1, 'from the cache: the index saw one download')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics', headers: { authorization: admin.authorization } })).body
  t.match(metrics, /sandbox_egress_events_total\{event="cache_hit"\} [1-9]/)

  const refused = await call('POST', '/v1/sandboxes', { network: { allow: ['packages'] } }, alice)
  t.equal(refused.status, 201, 'a user key may ask for the preset (its addresses still meet the wall)')
  await call('DELETE', `/v1/sandboxes/${refused.body.id}`, undefined, alice)
})

t.test('without package indexes the preset is a clear 400', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '0' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const res = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: admin, payload: { network: { allow: ['packages'] } } })
  t.equal(res.statusCode, 400)
  t.match(res.json().error.message, /SANDBOX_PACKAGE_INDEXES/)
})
