// E2B's own SDKs (`e2b` and `@e2b/code-interpreter` from npm), unchanged, against our server: only E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY are set. Real Docker, real Redis; the examples follow E2B's documentation.
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { request as httpRequest } from 'node:http'
import { Sandbox, CommandExitError, NotFoundError, FileType } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'
import { build, sandboxConfig, KEYS, REDIS_URL, flushPrefix, waitFor } from '../helper.js'

// sdk-runsc.test.ts runs this suite under gVisor, whose sandboxes pause with their memory (TEST_PAUSE_MODE=memory).
const pauseMode = process.env.TEST_PAUSE_MODE

/** Listens, and points E2B's SDKs at the server with only their environment variables (as a user would); its URL. */
async function pointSdkAt (t: Test, app: FastifyInstance, domain?: string): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const base = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`
  const saved = { ...process.env }
  process.env.E2B_API_URL = `${base}/e2b`
  process.env.E2B_SANDBOX_URL = `${base}/e2b/sandbox`
  process.env.E2B_API_KEY = KEYS.alice
  if (domain) process.env.E2B_DOMAIN = domain
  t.teardown(() => { process.env = saved })
  return base
}

t.test('the e2b SDK against our server', async (t) => {
  const config = await sandboxConfig({ SANDBOX_MAX_TERMINALS: '2', POOL_SIZE: '2', PORT_HOST_DOMAIN: 'sandbox.test' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const base = await pointSdkAt(t, app, 'sandbox.test')

  const sandbox = await Sandbox.create({ metadata: { suite: 'e2b', run: 'one' } })
  t.teardown(async () => { await sandbox.kill().catch(() => {}) })
  t.match(sandbox.sandboxId, /^[0-9a-f]+$/, 'ids are host-name safe (hex)')

  t.test('commands.run', async (t) => {
    const result = await sandbox.commands.run('echo hello')
    t.equal(result.stdout, 'hello\n')
    t.equal(result.exitCode, 0)
    const failed = await sandbox.commands.run('echo bad >&2; exit 3').catch((err: unknown) => err)
    t.ok(failed instanceof CommandExitError, 'a non-zero exit throws CommandExitError')
    t.equal((failed as CommandExitError).exitCode, 3)
    t.equal((failed as CommandExitError).stderr, 'bad\n')
    const env = await sandbox.commands.run('echo $GREETING; pwd', { envs: { GREETING: 'hi' }, cwd: '/tmp' })
    t.equal(env.stdout, 'hi\n/tmp\n', 'envs and cwd')
    const lines: string[] = []
    await sandbox.commands.run('for i in 1 2 3; do echo line$i; sleep 0.05; done', { onStdout: (d) => { lines.push(d) } })
    t.equal(lines.join(''), 'line1\nline2\nline3\n', 'onStdout streams the output in order')
  })

  t.test('a background command: started, listed, followed, killed', async (t) => {
    const handle = await sandbox.commands.run('for i in $(seq 1 1000); do echo tick $i; sleep 0.1; done', { background: true })
    t.ok(handle.pid > 0)
    const listed = await sandbox.commands.list()
    t.ok(listed.some(p => p.pid === handle.pid), 'it is listed')
    const seen: string[] = []
    const again = await sandbox.commands.connect(handle.pid, { onStdout: (d) => { seen.push(d) } })
    await waitFor('the follower sees output', () => seen.join('').includes('tick'), { ms: 5000 })
    t.match(seen.join(''), /tick \d+/, 'its output is followed from a second handle')
    t.equal(await handle.kill(), true, 'killed')
    const end = await again.wait().catch((err: unknown) => err)
    t.ok(end instanceof CommandExitError, 'the follower sees it end killed')
    t.notOk((await sandbox.commands.list()).some(p => p.pid === handle.pid), 'no longer listed')
    t.equal(await sandbox.commands.kill(handle.pid), false, 'killing it again says false')
    const withStdin = await sandbox.commands.run('read line; echo got $line', { background: true, stdin: true })
    await sandbox.commands.sendStdin(withStdin.pid, 'abc\n')
    t.equal((await withStdin.wait()).stdout, 'got abc\n', 'stdin reaches it')
    const cat = await sandbox.commands.run('cat', { background: true, stdin: true })
    await cat.sendStdin('to the end\n')
    await cat.closeStdin()
    t.equal((await cat.wait()).stdout, 'to the end\n', 'closeStdin ends its input')
  })

  t.test('pty: an interactive shell with input and resize', async (t) => {
    let screen = ''
    const decoder = new TextDecoder()
    const pty = await sandbox.pty.create({ cols: 80, rows: 24, onData: (d) => { screen += decoder.decode(d) } })
    await sandbox.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'))
    await waitFor('the terminal answers', () => screen.includes('24 80'), { ms: 10_000 })
    await sandbox.pty.resize(pty.pid, { cols: 100, rows: 30 })
    await sandbox.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo done-$((6*7))\n'))
    await waitFor('the resized terminal answers', () => screen.includes('30 100') && screen.includes('done-42'), { ms: 10_000 })
    t.pass('the terminal answered before and after a resize')
    await sandbox.pty.sendInput(pty.pid, new TextEncoder().encode('exit\n'))
    const end = await pty.wait().catch((err: unknown) => err)
    t.notOk(end instanceof Error && !(end instanceof CommandExitError), 'the shell ends')
  })

  t.test('files', async (t) => {
    const written = await sandbox.files.write([
      { path: '/home/user/docs/a.txt', data: 'alpha' },
      { path: 'docs/b.txt', data: 'beta' }
    ])
    t.same(written.map(w => w.path).sort(), ['/home/user/docs/a.txt', '/home/user/docs/b.txt'])
    t.equal(await sandbox.files.read('/home/user/docs/a.txt'), 'alpha')
    t.equal(await sandbox.files.read('docs/b.txt'), 'beta', 'relative paths are under the home')
    const bytes = await sandbox.files.read('docs/a.txt', { format: 'bytes' })
    t.equal(Buffer.from(bytes).toString(), 'alpha')
    const listed = await sandbox.files.list('/home/user/docs')
    t.same(listed.map(e => [e.name, e.type, e.size]).sort(), [['a.txt', FileType.FILE, 5], ['b.txt', FileType.FILE, 4]])
    t.ok(listed[0]!.modifiedTime instanceof Date)
    await sandbox.files.makeDir('/home/user/docs/deep/er')
    await sandbox.files.write('/home/user/docs/deep/er/c.txt', 'gamma')
    const deep = await sandbox.files.list('/home/user/docs', { depth: 3 })
    t.ok(deep.some(e => e.path === '/home/user/docs/deep/er/c.txt'), 'depth descends')
    t.equal(await sandbox.files.makeDir('/home/user/docs'), false, 'makeDir of an existing one says false')
    t.equal(await sandbox.files.exists('/home/user/docs/a.txt'), true)
    const moved = await sandbox.files.rename('/home/user/docs/a.txt', '/home/user/docs/moved.txt')
    t.equal(moved.path, '/home/user/docs/moved.txt')
    t.equal(await sandbox.files.exists('/home/user/docs/a.txt'), false)
    const info = await sandbox.files.getInfo('/home/user/docs/moved.txt')
    t.match(info, { name: 'moved.txt', type: FileType.FILE, size: 5, owner: 'user' })
    await sandbox.files.remove('/home/user/docs/moved.txt')
    t.equal(await sandbox.files.exists('/home/user/docs/moved.txt'), false, 'removed')
    await t.rejects(sandbox.files.read('/home/user/nope.txt'), NotFoundError, 'a missing file is NotFoundError')
    await t.rejects(sandbox.files.read('/etc/passwd'), /workspace/, 'the files API keeps to the workspace')
    t.equal((await sandbox.commands.run('cat docs/b.txt')).stdout, 'beta', 'commands see what the files API wrote')
  })

  t.test('watchDir sees a change', async (t) => {
    await sandbox.files.makeDir('/home/user/watched')
    const events: Array<{ name: string, type: string }> = []
    const watcher = await sandbox.files.watchDir('/home/user/watched', (e) => { events.push({ name: e.name, type: e.type }) })
    await sandbox.files.write('/home/user/watched/new.txt', 'x')
    await waitFor('the watcher sees the file', () => events.some(e => e.name === 'new.txt'), { ms: 10_000 })
    t.ok(events.some(e => e.name === 'new.txt' && (e.type === 'create' || e.type === 'write')))
    await watcher.stop()
  })

  t.test('an app\'s port: getHost through host routing, and the single-URL mode', async (t) => {
    await sandbox.files.write('/home/user/site/page.html', 'served')
    const server = await sandbox.commands.run('python3 -m http.server 8080', { background: true, cwd: '/home/user/site' })
    const host = sandbox.getHost(8080)
    t.equal(host, `8080-${sandbox.sandboxId}.sandbox.test`, 'E2B\'s host name is our port host label')
    const get = (headers: Record<string, string>) => new Promise<{ status: number, body: string }>((resolve, reject) => {
      httpRequest(`${base}/page.html`, { headers: { host, ...headers } }, (res) => {
        let body = ''
        res.on('data', (c: Buffer) => { body += c.toString() })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      }).on('error', reject).end()
    })
    const page = await waitFor('the app answers through getHost', async () => {
      const res = await get({ 'e2b-traffic-access-token': sandbox.trafficAccessToken! })
      return res.status === 200 ? res : null
    }, { ms: 10_000 })
    t.equal(page.body, 'served', 'the host name with the sandbox\'s traffic token')
    t.equal((await get({})).status, 401, 'without the token: refused')
    t.equal((await get({ 'e2b-traffic-access-token': 'forged' })).status, 401, 'a forged token: refused')
    const single = await fetch(`${base}/e2b/sandbox/page.html`, { headers: { 'E2b-Sandbox-Id': sandbox.sandboxId, 'E2b-Sandbox-Port': '8080', 'X-Access-Token': sandbox.trafficAccessToken! } })
    t.equal(await single.text(), 'served', 'E2B_SANDBOX_URL with E2b-Sandbox-Port reaches the app')
    await server.kill()
  })

  t.test('list, connect from a second client, setTimeout, getInfo', async (t) => {
    const paginator = Sandbox.list({ query: { metadata: { suite: 'e2b', run: 'one' } } })
    const found = await paginator.nextItems()
    t.same(found.map(s => s.sandboxId), [sandbox.sandboxId], 'found by its metadata')
    t.same((await Sandbox.list({ query: { metadata: { suite: 'other' } } }).nextItems()), [], 'others are not')
    const second = await Sandbox.connect(sandbox.sandboxId)
    await second.files.write('/home/user/from-second.txt', 'two')
    t.equal(await sandbox.files.read('/home/user/from-second.txt'), 'two', 'a second client reaches the same sandbox')
    await sandbox.setTimeout(600_000)
    const info = await sandbox.getInfo()
    t.equal(info.state, 'running')
    t.same(info.metadata, { suite: 'e2b', run: 'one' })
    t.ok(info.endAt.getTime() > Date.now() + 500_000, 'the new timeout shows')
    t.equal(await sandbox.isRunning(), true)
  })

  t.test('another key does not find it', async (t) => {
    await t.rejects(Sandbox.connect(sandbox.sandboxId, { apiKey: KEYS.bob }), NotFoundError)
    t.same(await Sandbox.list({ apiKey: KEYS.bob }).nextItems(), [])
  })

  t.test('kill removes it', async (t) => {
    const doomed = await Sandbox.create()
    t.equal(await doomed.isRunning(), true)
    t.equal(await doomed.kill(), true)
    t.equal(await doomed.isRunning(), false, 'isRunning is false after kill')
    t.equal(await Sandbox.kill(doomed.sandboxId), false, 'a second kill finds nothing')
  })
})

t.test('the code interpreter SDK against our server', async (t) => {
  const config = await sandboxConfig({ POOL_SIZE: '1', ...(pauseMode ? { SANDBOX_PAUSE_MODE: pauseMode } : {}) })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  await pointSdkAt(t, app)

  const sandbox = await CodeSandbox.create()
  t.teardown(async () => { await sandbox.kill().catch(() => {}) })

  t.test('state persists between runCode calls', async (t) => {
    await sandbox.runCode('x = 41')
    const execution = await sandbox.runCode('x + 1')
    t.equal(execution.text, '42')
    t.equal(execution.results[0]?.isMainResult, true)
  })

  t.test('a matplotlib plot arrives as png', async (t) => {
    const execution = await sandbox.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()')
    const png = execution.results.find(r => r.png)?.png
    t.ok(png, 'a result has a png')
    t.equal(Buffer.from(png!, 'base64').subarray(1, 4).toString(), 'PNG')
  })

  t.test('an exception arrives as error', async (t) => {
    const execution = await sandbox.runCode('1 / 0')
    t.equal(execution.error?.name, 'ZeroDivisionError')
    t.match(execution.error?.value, /division by zero/)
    t.match(execution.error?.traceback, /ZeroDivisionError/)
  })

  t.test('onStdout streams lines in order', async (t) => {
    const lines: string[] = []
    const execution = await sandbox.runCode('import time\nfor i in range(3):\n    print(f"line {i}", flush=True)\n    time.sleep(0.05)', { onStdout: (m) => { lines.push(m.line) } })
    t.equal(lines.join(''), 'line 0\nline 1\nline 2\n')
    t.same(execution.logs.stdout.join(''), 'line 0\nline 1\nline 2\n')
  })

  t.test('contexts: JavaScript, and a python context of its own', async (t) => {
    const js = await sandbox.createCodeContext({ language: 'js' })
    t.equal(js.language, 'javascript')
    await sandbox.runCode('const y = 20', { context: js })
    t.equal((await sandbox.runCode('y + 22', { context: js })).text, '42', 'javascript keeps its state')
    const py = await sandbox.createCodeContext({ language: 'python', cwd: '/tmp' })
    t.equal((await sandbox.runCode('import os; os.getcwd()', { context: py })).text, "'/tmp'", 'its cwd')
    t.match((await sandbox.runCode('x', { context: py })).error?.name, 'NameError', 'a new context does not see the default one\'s variables')
    const ids = (await sandbox.listCodeContexts()).map(c => c.id)
    t.ok(ids.includes(js.id) && ids.includes(py.id), 'listed')
    await sandbox.restartCodeContext(js)
    t.match((await sandbox.runCode('y', { context: js })).error?.name, 'ReferenceError', 'a restart forgets')
    await sandbox.removeCodeContext(py)
    t.notOk((await sandbox.listCodeContexts()).some(c => c.id === py.id), 'removed')
    const bash = await sandbox.runCode('echo $((2 + 3))', { language: 'bash' })
    t.equal(bash.logs.stdout.join(''), '5\n', 'bash by language')
    await t.rejects(sandbox.runCode('1', { language: 'java' }), /400/, 'a language without a kernel is a clear error')
  })

  t.test(pauseMode === 'memory' ? 'pause and resume keep a variable' : 'pause and resume keep the files (this host pauses without memory)', async (t) => {
    await sandbox.runCode('kept = "still here"\nopen("kept.txt", "w").write("on disk")')
    t.equal(await sandbox.pause(), true)
    t.equal(await sandbox.pause(), false, 'a second pause says it was paused already')
    t.same((await CodeSandbox.list({ query: { state: ['paused'] } }).nextItems()).map(s => s.sandboxId), [sandbox.sandboxId], 'listed as paused')
    t.equal((await CodeSandbox.getInfo(sandbox.sandboxId)).state, 'paused')
    const back = await CodeSandbox.connect(sandbox.sandboxId)
    t.equal((await back.getInfo()).state, 'running', 'connect resumed it')
    t.equal(await back.files.read('/home/user/kept.txt'), 'on disk', 'its files came back')
    const execution = await back.runCode('kept')
    if (pauseMode === 'memory') t.equal(execution.text, "'still here'", 'its variable came back')
    else t.equal(execution.error?.name, 'NameError', 'a files pause starts the kernel afresh')
  })
})
