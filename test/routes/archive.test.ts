// GET/PUT /v1/sandboxes/:id/archive: the workspace as tar, and tar into it, with what a hostile client sends.
import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { build, sandboxConfig, sandboxCalls, auth, KEYS, REDIS_URL, flushPrefix } from '../helper.js'

/** A tar made by the host's tar from `files` (name → content), members named as given (`../x` too, with -P). */
function tarOf (files: Record<string, string>): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'tar-'))
  const src = join(dir, 'src')
  mkdirSync(join(src, 'inner'), { recursive: true })
  for (const [name, content] of Object.entries(files)) writeFileSync(join(src, 'inner', name.replace(/\//g, '_')), content)
  const names = Object.keys(files)
  // --transform renames each member to the name asked for (a hostile archive's "../escape" included).
  const transforms = names.flatMap(n => ['--transform', `s|^inner/${n.replace(/\//g, '_').replace(/\./g, '\\.')}$|${n}|`])
  execFileSync('tar', ['-cf', join(dir, 'out.tar'), '-P', '-C', src, ...transforms, ...names.map(n => `inner/${n.replace(/\//g, '_')}`)])
  return readFileSync(join(dir, 'out.tar'))
}

t.test('the workspace archive routes', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1', MAX_UPLOAD_BYTES: String(64 * 1024) })
  const app = await build(t, config)
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const headers = auth(KEYS.alice)
  const { newSandbox } = sandboxCalls(() => app, headers)
  const id = await newSandbox()
  const put = (body: Buffer | string, query = '') => app.inject({ method: 'PUT', url: `/v1/sandboxes/${id}/archive${query}`, headers: { ...headers, 'content-type': 'application/x-tar' }, payload: body })
  const sh = async (cmd: string) => (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/commands`, headers, payload: { cmd } })).json()

  const good = await put(tarOf({ 'a.txt': 'alpha', 'b.txt': 'beta' }))
  t.equal(good.statusCode, 201, good.body)
  t.match(good.json(), { path: '', size: Number })
  t.equal((await sh('cat a.txt b.txt')).stdout, 'alphabeta')
  await sh('mkdir -p sub')
  t.equal((await put(tarOf({ 'c.txt': 'gamma' }), '?path=sub')).statusCode, 201, 'into a directory of the workspace')
  t.equal((await sh('cat sub/c.txt')).stdout, 'gamma')

  const back = await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/archive`, headers })
  t.equal(back.statusCode, 200)
  t.equal(back.headers['content-type'], 'application/x-tar')
  const listing = execFileSync('tar', ['-t'], { input: back.rawPayload }).toString()
  t.match(listing, /\.\/a\.txt\n/)
  t.match(listing, /\.\/sub\/c\.txt\n/)

  const escape = await put(tarOf({ '../escape.txt': 'out' }))
  t.equal(escape.statusCode, 400, 'a member leading out of the directory fails the unpack')
  t.equal((await sh('ls /home/escape.txt 2>&1; ls ../escape.txt 2>&1 | head -1')).stdout.includes('No such file'), true, 'and nothing was written outside')
  const garbage = await put('this is not a tar archive at all, just text'.repeat(20))
  t.equal(garbage.statusCode, 400, 'not a tar: a 400, not a 500')
  t.match(garbage.json().error, { code: 'unpack_failed' })
  t.equal((await put(Buffer.alloc(128 * 1024))).statusCode, 413, 'past MAX_UPLOAD_BYTES')
  t.equal((await put(tarOf({ 'x.txt': 'x' }), '?path=a.txt')).statusCode, 400, 'a file where a directory is expected')
  t.equal((await put(tarOf({ 'x.txt': 'x' }), '?path=../..')).statusCode, 400, 'a path out of the workspace')
  t.equal((await put(tarOf({ 'x.txt': 'x' }), '?path=nope')).statusCode, 404, 'a directory that is not there')
  t.equal((await app.inject({ method: 'GET', url: '/v1/sandboxes/sbx_nope/archive', headers })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}/archive`, headers: auth(KEYS.bob) })).statusCode, 404, 'another key\'s sandbox')
  t.equal((await sh('cat a.txt')).stdout, 'alpha', 'the workspace is as it was')
})
