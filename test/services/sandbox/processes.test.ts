// Commands, background processes, terminals, watchers and ports (issue 24) against the real engine, through a listening
// server: fetch for REST and SSE, a real WebSocket client for terminals, watchers and proxied sockets.
import t from 'tap'
import { WebSocket } from 'ws'
import type { FastifyInstance } from 'fastify'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix, readSse, waitFor, wsEchoServer } from '../../helper.js'

const alice = auth(KEYS.alice)
const bob = auth(KEYS.bob)
const json = { ...alice, 'content-type': 'application/json' }

async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  return `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`
}

/** A WebSocket that collects what it receives (text frames parsed as JSON, binary frames as text). */
function socket (url: string, headers = alice) {
  const ws = new WebSocket(url, { headers })
  const got: any[] = []
  let screen = ''
  ws.on('message', (data: Buffer, binary: boolean) => {
    if (binary) screen += data.toString()
    else got.push(JSON.parse(data.toString()))
  })
  ws.on('unexpected-response', (_req, res) => got.push({ type: 'refused', status: res.statusCode }))
  ws.on('error', (err) => got.push({ type: 'socket_error', message: err.message }))
  const closed = new Promise<{ code: number, reason: string }>(resolve => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  const opened = new Promise<void>((resolve, reject) => { ws.once('open', () => resolve()); ws.once('error', reject) })
  return { ws, got, get screen () { return screen }, closed, opened }
}

t.test('commands, processes, terminals, watchers and ports', async (t) => {
  const config = await sandboxConfig({ SANDBOX_MAX_TERMINALS: '2', SANDBOX_MAX_WATCHERS: '1', SANDBOX_OUTPUT_LIMIT: '65536' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const base = await listen(app)
  const wsBase = base.replace('http', 'ws')
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = json) => {
    const res = await fetch(`${base}${path}`, { method, headers: body === undefined ? { authorization: headers.authorization! } : headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
    const text = await res.text()
    return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers }
  }
  const id = (await call('POST', '/v1/sandboxes', {})).body.id as string

  t.test('a foreground command answers with its output and exit code', async (t) => {
    const res = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo hi; echo oops >&2; exit 3' })
    t.equal(res.status, 200)
    t.match(res.body, { stdout: 'hi\n', stderr: 'oops\n', exit_code: 3, status: 'exited', signal: null, truncated: false })
    const argv = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: ['printf', '%s|', 'a b', '$HOME'], cwd: '/tmp', env: { X: '1' } })
    t.equal(argv.body.stdout, 'a b|$HOME|', 'argv is not split or expanded')
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'pwd; echo $X; id -u', cwd: '/tmp', env: { X: 'yes' } })).body.stdout, '/tmp\nyes\n1000\n', 'cwd, env, and the user')
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'tr a-z A-Z', input: 'shout\n' })).body.stdout, 'SHOUT\n', 'input reaches stdin')
    const slow = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'sleep 30', timeout_ms: 300 })
    t.match(slow.body, { status: 'timeout', signal: 'SIGTERM', exit_code: 143 }, 'a timeout stops it')
    const big = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'head -c 10000000 /dev/zero | tr "\\0" x' })
    t.equal(big.body.truncated, true, 'output past the limit is capped')
    t.ok(big.body.stdout.length <= 65536)
    t.match(big.body.stderr, /output truncated/)
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true', cwd: '/nowhere' })).status, 404, 'a missing cwd')
    t.match(await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true', env: { 'A=B': 'x' } }), { status: 400, body: { error: { code: 'validation_error' } } }, 'an env name with "="')
    t.match((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: ['no-such-program'] })).body, { exit_code: 127, stderr: 'no-such-program: No such file or directory\n' }, 'a missing program')
    const status = (await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: ['grep', '-E', '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs)', '/proc/self/status'] })).body.stdout as string
    const fields = Object.fromEntries(status.trim().split('\n').map(l => l.split(/:\s*/)))
    // gVisor's /proc leaves out some lines (Groups, CapAmb, NoNewPrivs); those it shows must say the same.
    t.match(fields, { Uid: '1000\t1000\t1000\t1000', Gid: '1000\t1000\t1000\t1000', CapInh: '0000000000000000', CapPrm: '0000000000000000', CapEff: '0000000000000000' })
    t.same({ Groups: fields.Groups ?? '', CapAmb: fields.CapAmb ?? '0000000000000000', NoNewPrivs: fields.NoNewPrivs ?? '1' }, { Groups: '', CapAmb: '0000000000000000', NoNewPrivs: '1' }, 'a command runs as the user, no groups, no capabilities, no new privileges')
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true', user: 'root' })).status, 400, 'root is not offered')
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: [] })).status, 400)
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true' }, { ...bob, 'content-type': 'application/json' })).status, 404, "another key's sandbox")
  })

  t.test('a foreground command streams as SSE', async (t) => {
    const res = await fetch(`${base}/v1/sandboxes/${id}/commands`, { method: 'POST', headers: { ...json, accept: 'text/event-stream' }, body: JSON.stringify({ cmd: 'echo one; sleep 0.2; echo two >&2' }) })
    const events = await readSse(res, e => e.event === 'exit')
    t.same(events.map(e => e.event), ['start', 'stdout', 'stderr', 'exit'])
    t.equal(events[1]!.data.text, 'one\n')
    t.equal(events[3]!.data.exit_code, 0)
  })

  t.test('a background process: log, stdin, signals, its exit', async (t) => {
    const started = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'echo ready; while read line; do echo "got $line"; done; echo bye', background: true, stdin: true, tag: 'reader' })
    t.equal(started.status, 201)
    const pid = started.body.pid as number
    t.match(started.body, { running: true, tag: 'reader', pty: false })
    await waitFor('its first line', async () => (await call('GET', `/v1/sandboxes/${id}/processes/${pid}/output`)).body.output.length > 0)
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${pid}/stdin`, { data: 'hello\n' })).status, 204)
    const log = await waitFor('the answer', async () => {
      const out = (await call('GET', `/v1/sandboxes/${id}/processes/${pid}/output`)).body
      const text = out.output.map((c: { text: string }) => c.text).join('')
      return text.includes('got hello') ? text : null
    })
    t.equal(log, 'ready\ngot hello\n')
    // Follow live over SSE from offset 6 (after "ready\n"), then close stdin: the loop ends and the process exits.
    const follow = fetch(`${base}/v1/sandboxes/${id}/processes/${pid}/output?offset=6`, { headers: { ...alice, accept: 'text/event-stream' } })
    const res = await follow
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${pid}/stdin`, { data: '', eof: true })).status, 204)
    const events = await readSse(res, e => e.event === 'exit')
    t.equal(events[0]!.event, 'follow')
    t.equal(events.filter(e => e.event === 'output').map(e => e.data.text).join(''), 'got hello\nbye\n', 'resumed from the offset')
    t.match(events.at(-1)!.data, { exit_code: 0, status: 'exited' })
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${pid}/stdin`, { data: 'late\n' })).status, 409, 'writing to a finished process')
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${pid}/signal`, { signal: 'SIGTERM' })).status, 409)
    t.equal((await call('GET', `/v1/sandboxes/${id}/processes/99999`)).status, 404, 'an unknown pid')
    t.equal((await call('GET', `/v1/sandboxes/${id}/processes/99999/output`)).status, 404)

    const onTerminal = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'tty; stty size', background: true, pty: { cols: 91, rows: 27 } })
    t.equal(onTerminal.status, 201)
    t.equal(onTerminal.body.pty, true, 'a background command on a terminal')
    const ttyOut = await waitFor('its output', async () => {
      const out = (await call('GET', `/v1/sandboxes/${id}/processes/${onTerminal.body.pid}/output`)).body
      return out.process.running ? null : out.output.map((o: { text: string }) => o.text).join('')
    })
    t.match(ttyOut, /\/dev\/pts\/\d+\r\n27 91\r\n/, 'of the size asked for')
    t.equal((await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'true', pty: { cols: 80, rows: 24 } })).status, 400, 'a terminal only for background commands')
    const sleeper = (await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: ['sleep', '600'], background: true })).body.pid as number
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${sleeper}/signal`, { signal: 'SIGKILL' })).status, 204)
    const killed = await waitFor('its exit', async () => {
      const p = (await call('GET', `/v1/sandboxes/${id}/processes/${sleeper}`)).body
      return p.running ? null : p
    })
    t.match(killed, { status: 'killed', signal: 'SIGKILL', exit_code: 137 }, 'a process killed by a signal reports it')
    const list = (await call('GET', `/v1/sandboxes/${id}/processes`)).body.data as Array<{ pid: number }>
    t.ok(list.some(p => p.pid === sleeper) && list.some(p => p.pid === pid), 'both are listed')
    t.equal((await call('POST', `/v1/sandboxes/${id}/processes/${sleeper}/signal`, { signal: 'SIGNOPE' })).status, 400)
  })

  t.test('a fork bomb in the background is held by the pids limit and the sandbox stays usable', async (t) => {
    // A sandbox of its own: under gVisor, whose memory limit counts its own kernel's, the bomb may stop the sandbox
    // (as in the containment suite): then the client is told, and a new one works.
    const gvisor = process.env.TEST_SANDBOX_RUNTIME === 'runsc'
    const box = (await call('POST', '/v1/sandboxes', {})).body.id as string
    const bomb = await call('POST', `/v1/sandboxes/${box}/commands`, { cmd: 'b(){ b | b & }; b', background: true, timeout_ms: 3000 })
    t.equal(bomb.status, 201)
    // Its first shell exits at once; the timeout still ends the children it left (its process group). Meanwhile a
    // command may be refused: 429 pids_exhausted, naming what holds the pids.
    let refused: { status: number, body: any } | null = null
    let lost: { status: number, body: any } | null = null
    const after = await waitFor('the bomb\'s children to be gone', async () => {
      const res = await call('POST', `/v1/sandboxes/${box}/commands`, { cmd: 'ps -e --no-headers | wc -l' })
      if (res.status === 429) refused = res
      if (res.status === 410) { lost = res; return res }
      return res.status === 200 && Number(res.body.stdout) < 12 ? res : null
    }, { ms: 60_000 })
    if (lost) {
      t.ok(gvisor, `only under gVisor may the sandbox itself stop (got ${JSON.stringify(lost)})`)
      t.match(after, { status: 410, body: { error: { code: 'sandbox_lost' } } }, 'the client is told the sandbox stopped')
      const fresh = (await call('POST', '/v1/sandboxes', {})).body.id as string
      t.equal((await call('POST', `/v1/sandboxes/${fresh}/commands`, { cmd: 'echo fresh' })).body.stdout, 'fresh\n', 'a new sandbox works')
      await call('DELETE', `/v1/sandboxes/${fresh}`)
      return
    }
    t.ok(Number(after.body.stdout) < 12, `a few processes are left (${String(after.body.stdout).trim()}): the agent, its kernel and this command's`)
    if (refused) t.match(refused, { status: 429, body: { error: { code: 'pids_exhausted', message: /pids limit is reached \(\d+ processes and threads: bash \d+/ } } }, 'a command refused during the bomb says why')
    const run = await call('POST', `/v1/sandboxes/${box}/execute`, { code: 'print(6 * 7)' })
    t.equal(run.body.stdout, '42\n', 'the kernel too')
    await call('DELETE', `/v1/sandboxes/${box}`)
  })

  t.test('a terminal: interactive input, resize, reattach with the screen replayed, limits', async (t) => {
    const term = socket(`${wsBase}/v1/sandboxes/${id}/pty?cols=80&rows=24`)
    await term.opened
    term.ws.send(Buffer.from('read x; echo "got $x"\n')) // at once: keys typed before the terminal exists wait for it
    const ready = await waitFor('ready', () => term.got.find(m => m.type === 'ready')).catch((err: Error) => { throw new Error(`${err.message} ${JSON.stringify(term.got)} ${term.screen}`) })
    const pid = ready.pid as number
    await waitFor('the prompt to wait', () => term.screen.includes('read x'))
    term.ws.send(Buffer.from('hello\n'))
    await waitFor('got hello', () => term.screen.includes('got hello'))
    term.ws.send(JSON.stringify({ type: 'resize', cols: 123, rows: 40 }))
    term.ws.send(Buffer.from('tput cols\n'))
    await waitFor('123 columns', () => /[\r\n]123\r\n/.test(term.screen))
    term.ws.send(JSON.stringify({ type: 'resize', cols: -1, rows: 1e9 }))
    await waitFor('an error for nonsense sizes', () => term.got.find(m => m.type === 'error'))
    t.equal(term.got.find(m => m.type === 'error').error.code, 'validation_error', 'nonsense sizes are refused, nothing breaks')
    term.ws.close()
    await term.closed

    const again = socket(`${wsBase}/v1/sandboxes/${id}/pty?pid=${pid}`)
    await waitFor('the replayed screen', () => again.screen.includes('got hello'))
    t.pass('reattached: the recent screen is replayed')
    const second = socket(`${wsBase}/v1/sandboxes/${id}/pty`)
    await waitFor('a second terminal', () => second.got.find(m => m.type === 'ready')).catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(second.got)}`) })
    const third = socket(`${wsBase}/v1/sandboxes/${id}/pty`)
    const refused = await third.closed
    t.equal(refused.reason, 'too_many_terminals', 'more than SANDBOX_MAX_TERMINALS')
    t.equal(third.got[0].error.code, 'too_many_terminals')
    again.ws.send(Buffer.from('exit\n'))
    const end = await again.closed
    t.equal(end.code, 1000)
    t.match(again.got.find(m => m.type === 'exit'), { exit_code: 0, status: 'exited' })
    second.ws.close()
    const bobs = socket(`${wsBase}/v1/sandboxes/${id}/pty`, bob)
    t.equal((await bobs.closed).reason, 'sandbox_not_found', "another key's sandbox")
  })

  t.test('a watcher sees a file a kernel made', async (t) => {
    await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'mkdir -p watched/sub' })
    const watch = socket(`${wsBase}/v1/sandboxes/${id}/watch?path=watched&recursive=true`)
    await waitFor('watching', () => watch.got.find(m => m.type === 'watching'))
    const busy = socket(`${wsBase}/v1/sandboxes/${id}/watch?path=watched`)
    t.equal((await busy.closed).reason, 'too_many_watchers', 'more than SANDBOX_MAX_WATCHERS')
    await call('POST', `/v1/sandboxes/${id}/execute`, { code: 'open("watched/sub/made.txt", "w").write("x")' })
    const created = await waitFor('the create event', () => watch.got.find(m => m.type === 'create' && m.path === 'watched/sub/made.txt'))
    t.equal(created.is_dir, false)
    await waitFor('the write event', () => watch.got.find(m => m.type === 'write' && m.path === 'watched/sub/made.txt'))
    await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'mv watched/sub/made.txt watched/moved.txt && rm watched/moved.txt' })
    await waitFor('rename and remove', () => watch.got.find(m => m.type === 'rename') && watch.got.find(m => m.type === 'remove' && m.path === 'watched/moved.txt'))
    watch.ws.close()
    await watch.closed
    const sse = await fetch(`${base}/v1/sandboxes/${id}/watch?path=missing`, { headers: { ...alice, accept: 'text/event-stream' } })
    t.equal(sse.status, 404, 'a missing directory')
    const file = await fetch(`${base}/v1/sandboxes/${id}/watch?path=../etc`, { headers: alice })
    t.equal(file.status, 400)
  })

  t.test('ports: HTTP and WebSocket through the proxy and a signed URL', async (t) => {
    await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'mkdir -p site && echo "<h1>hello from the sandbox</h1>" > site/index.html' })
    const server = (await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'python3 -m http.server 8080', cwd: 'site', background: true })).body.pid as number
    const page = await waitFor('the server', async () => {
      const res = await fetch(`${base}/v1/sandboxes/${id}/ports/8080/index.html`, { headers: alice })
      return res.status === 200 ? await res.text() : null
    })
    t.equal(page, '<h1>hello from the sandbox</h1>\n')
    const log = (await call('GET', `/v1/sandboxes/${id}/processes/${server}/output`)).body.output.map((c: { text: string }) => c.text).join('')
    t.match(log, /GET \/index.html/, 'the server\'s log is read')
    t.equal((await fetch(`${base}/v1/sandboxes/${id}/ports/8080/index.html`, { headers: bob })).status, 404, "another key's sandbox")
    t.equal((await fetch(`${base}/v1/sandboxes/${id}/ports/8080/`)).status, 401, 'no key')
    const closed = await fetch(`${base}/v1/sandboxes/${id}/ports/9/`, { headers: alice })
    t.equal(closed.status, 502, 'a port nothing listens on')
    t.equal((await closed.json()).error.code, 'port_closed')

    const signed = await call('POST', `/v1/sandboxes/${id}/ports/8080/url`, { expires_in: 2 })
    t.equal(signed.status, 200)
    t.equal(await (await fetch(`${base}${signed.body.path}index.html`)).text(), '<h1>hello from the sandbox</h1>\n', 'a signed URL needs no key')
    const [payload, mac] = (signed.body.path as string).split('/')[3]!.split('.')
    const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload!, 'base64url').toString()), p: 22 })).toString('base64url')
    t.equal((await fetch(`${base}/v1/ports/${forged}.${mac}/`)).status, 401, 'a tampered URL')
    t.equal((await fetch(`${base}/v1/ports/nonsense/`)).status, 401)
    await waitFor('the URL to expire', async () => (await fetch(`${base}${signed.body.path}`)).status === 401, { ms: 10_000 })
    t.pass('an expired URL is refused')

    // A WebSocket echo server inside, reached through the proxy.
    const echo = wsEchoServer(8765)
    await fetch(`${base}/v1/sandboxes/${id}/files/echo_ws.py`, { method: 'PUT', headers: alice, body: echo })
    await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'python3 echo_ws.py', background: true })
    const reply = await waitFor('the echo', async () => {
      const ws = new WebSocket(`${wsBase}/v1/sandboxes/${id}/ports/8765/`, { headers: alice })
      return await new Promise<string | null>((resolve) => {
        ws.on('open', () => ws.send('ping'))
        ws.on('message', (data: Buffer) => { resolve(data.toString()); ws.close() })
        ws.on('close', () => resolve(null))
        ws.on('error', () => resolve(null))
      })
    })
    t.equal(reply, 'echo: ping', 'a WebSocket server inside, reached through the proxy')
    const negotiated = await new Promise<{ protocol: string, offered: string }>((resolve, reject) => {
      const ws = new WebSocket(`${wsBase}/v1/sandboxes/${id}/ports/8765/`, ['interpreter.v1', `bearer.${KEYS.alice}`, 'nope', 'echo.v1'])
      ws.on('open', () => ws.send('offered?'))
      ws.on('message', (data: Buffer) => { resolve({ protocol: ws.protocol, offered: data.toString() }); ws.close() })
      ws.on('error', reject)
    })
    t.same(negotiated, { protocol: 'echo.v1', offered: 'offered: nope,echo.v1' }, 'the app chooses the subprotocol; our key and ours are not passed on')
    const refused = await new Promise<number>((resolve) => {
      const ws = new WebSocket(`${wsBase}/v1/sandboxes/${id}/ports/9/`, { headers: alice })
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
      ws.on('open', () => resolve(101))
      ws.on('error', () => resolve(-1))
    })
    t.equal(refused, 502, 'a WebSocket to a closed port is refused at the upgrade with 502')

    // An app that keeps its connections: the proxy reuses one relay for request after request.
    await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: ['node', '-e', 'require("http").createServer((q, s) => s.end(String(q.socket.remotePort))).listen(8081, "127.0.0.1")'], background: true })
    const ports: string[] = []
    await waitFor('the node app', async () => (await fetch(`${base}/v1/sandboxes/${id}/ports/8081/`, { headers: alice })).status === 200)
    for (let i = 0; i < 5; i++) ports.push(await (await fetch(`${base}/v1/sandboxes/${id}/ports/8081/`, { headers: alice })).text())
    t.equal(new Set(ports).size, 1, `one kept connection served five requests (${ports.join(', ')})`)
  })

  t.test('removing the sandbox stops its processes and closes its streams', async (t) => {
    const sleeping = await call('POST', `/v1/sandboxes/${id}/commands`, { cmd: 'sleep 600', background: true })
    t.equal(sleeping.status, 201, JSON.stringify(sleeping.body))
    const pid = sleeping.body.pid as number
    const out = socket(`${wsBase}/v1/sandboxes/${id}/processes/${pid}/output`)
    await waitFor('ready', () => out.got.find(m => m.type === 'ready'))
    t.equal((await call('DELETE', `/v1/sandboxes/${id}`)).status, 204)
    await out.closed
    t.pass('the stream closed with the sandbox')
    t.equal((await call('GET', `/v1/sandboxes/${id}/processes`)).status, 404)
  })
})

t.test('PORT_HOST_DOMAIN: an app at the root of a host name of its own, by key or by a signed URL kept in a cookie', async (t) => {
  const config = await sandboxConfig({ PORT_HOST_DOMAIN: 'apps.test', POOL_SIZE: '1' })
  const app = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const base = await listen(app)
  const inject = (url: string, headers: Record<string, string>) => app.inject({ method: 'GET', url, headers })
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id as string
  // The app answers with what it was sent: path, prefix, cookies.
  const server = 'require("http").createServer((q, s) => s.end(JSON.stringify({ url: q.url, prefix: q.headers["x-forwarded-prefix"] ?? null, cookie: q.headers.cookie ?? null, auth: q.headers.authorization ?? null }))).listen(3000, "127.0.0.1")'
  t.equal((await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/commands`, headers: alice, payload: { cmd: ['node', '-e', server], background: true } })).statusCode, 201)
  const signed = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/ports/3000/url`, headers: alice, payload: { expires_in: 600 } })).json()
  const host = new URL(signed.host_url).host
  t.match(host, /^3000-[0-9a-f]+\.apps\.test$/, 'the URL names a host of the domain')
  const seen = await waitFor('the app', async () => {
    const res = await inject('/static/app.js?v=1', { ...alice, host })
    return res.statusCode === 200 ? res.json() : null
  })
  t.same(seen, { url: '/static/app.js?v=1', prefix: null, cookie: null, auth: null }, 'at its root, no prefix, our key not passed on')
  t.equal((await inject('/', { host })).statusCode, 401, 'no key, no token')
  t.equal((await inject('/', { ...auth(KEYS.bob), host })).statusCode, 404, "another key's sandbox")
  const first = await inject(`/page?x=1&_port_token=${new URL(signed.host_url).searchParams.get('_port_token')}`, { host })
  t.equal(first.statusCode, 302, 'a signed URL sets its cookie and sends the browser on')
  t.equal(first.headers.location, '/page?x=1')
  const cookie = String(first.headers['set-cookie']).split(';')[0]!
  t.match(String(first.headers['set-cookie']), /HttpOnly; SameSite=Lax; Max-Age=\d+/)
  const withCookie = await inject('/page?x=1', { host, cookie: `${cookie}; theirs=1` })
  t.same(withCookie.json(), { url: '/page?x=1', prefix: null, cookie: 'theirs=1', auth: null }, 'the cookie is enough, and only the app\'s own cookie reaches it')
  t.equal((await inject('/', { host: host.replace(/^3000-/, '3001-'), cookie })).statusCode, 401, 'a token for another port')
  t.equal((await inject('/v1/health', { host: 'zz-nothex.apps.test' })).statusCode, 200, 'a name of the domain that is no sandbox\'s is left to the API')
  t.equal((await inject(`/v1/port-hosts/${host.split('.')[0]}/`, alice)).statusCode, 404, 'never as a path of the API\'s own host')
  t.equal((await inject('/v1/health', { host: 'api.example.com' })).statusCode, 200, 'other host names reach the API')
  const echoed = await new Promise<string>((resolve, reject) => {
    const ws = new WebSocket(`${base.replace('http', 'ws')}/ws-path`, { headers: { host, cookie } })
    ws.on('unexpected-response', (_req, res) => resolve(`upgrade answered ${res.statusCode}`))
    ws.on('error', reject)
    ws.on('open', () => resolve('opened'))
  })
  t.equal(echoed, 'upgrade answered 502', 'a WebSocket upgrade reaches the app through the host name (this plain HTTP app drops it: 502)')
})
