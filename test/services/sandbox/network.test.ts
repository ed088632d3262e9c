import t from 'tap'
import Docker from 'dockerode'
import { createServer, type Server } from 'node:http'
import { Writable } from 'node:stream'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { build, sandboxConfig, sandboxCalls, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import { decide, forbiddenAddress, parsePolicy, parseRule, checkAllowed, parseAllowedList } from '../../../services/sandbox/egress.js'

// Every destination here is a server this test starts on loopback; nothing else is ever contacted.
let app: FastifyInstance
let appPort: number
let logged = ''
let allowedPort: number
let otherPort: number
const servers: Server[] = []

/** A wheel of a one-module package, built with the host's python (zipfile), served by the allowed server as a simple index. */
function buildWheel (): { name: string, bytes: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'wheel-'))
  const name = 'tinypkg-1.0-py3-none-any.whl'
  execFileSync('python3', ['-c', `
import zipfile, sys
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    z.writestr('tinypkg/__init__.py', 'VALUE = 42\\n')
    z.writestr('tinypkg-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: tinypkg\\nVersion: 1.0\\n')
    z.writestr('tinypkg-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')
    z.writestr('tinypkg-1.0.dist-info/RECORD', '')
`, join(dir, name)])
  return { name, bytes: readFileSync(join(dir, name)) }
}

async function listen (handler: Parameters<typeof createServer>[1]): Promise<number> {
  const server = createServer(handler)
  servers.push(server)
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as { port: number }).port
}

t.before(async () => {
  const wheel = buildWheel()
  allowedPort = await listen((req, res) => {
    if (req.url === '/hello') return res.end('hello from the allowed server')
    if (req.url === '/big') return res.end(Buffer.alloc(3 * 1024 * 1024, 'x'))
    if (req.url === '/simple/tinypkg/') return res.writeHead(200, { 'content-type': 'text/html' }).end(`<a href="/files/${wheel.name}">${wheel.name}</a>`)
    if (req.url === `/files/${wheel.name}`) return res.end(wheel.bytes)
    res.writeHead(404).end()
  })
  otherPort = await listen((_req, res) => { res.end('you should not see this') })
  const config = await sandboxConfig({
    POOL_SIZE: '2',
    SANDBOX_EGRESS_ALLOWED: '127.0.0.1,*.example.org',
    SANDBOX_EGRESS_MAX_BYTES: String(2 * 1024 * 1024),
    MAX_SANDBOXES_PER_KEY: '20',
    EXECUTION_TIMEOUT_MS: '60000',
    LOG_LEVEL: 'info',
    SLOW_REQUEST_MS: '400'
  })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const stream = new Writable({ write (chunk, _enc, done) { logged += String(chunk); done() } })
  app = await build(t, config, { logger: { stream } })
  await app.listen({ host: '127.0.0.1', port: 0 })
  appPort = (app.server.address() as { port: number }).port
})
t.teardown(() => { for (const s of servers) { s.closeAllConnections(); s.close() } })

// The test servers listen on this host's loopback, which a user key's sandbox never reaches (the user wall): the
// proxy's mechanics are tested with an admin key's sandboxes, the wall with alice's.
const { newSandbox, run } = sandboxCalls(() => app, auth(KEYS.admin))
const fetchIn = (url: string) => [
  'import urllib.request, urllib.error',
  'try:',
  `    print(urllib.request.urlopen(${JSON.stringify(url)}, timeout=10).read().decode())`,
  'except urllib.error.HTTPError as e:',
  '    print("HTTP", e.code, e.read().decode().strip())',
  'except Exception as e:',
  '    print("FAILED", type(e).__name__)'
].join('\n')
/** A raw CONNECT through the proxy, then a GET over the tunnel (what an HTTPS client does before TLS). */
const tunnelIn = (host: string, port: number) => [
  'import socket',
  's = socket.create_connection(("127.0.0.1", 3128), timeout=10)',
  `s.sendall(b"CONNECT ${host}:${port} HTTP/1.1\\r\\nHost: ${host}:${port}\\r\\n\\r\\n")`,
  'head = s.recv(4096).decode()',
  'print(head.split("\\r\\n")[0])',
  'if " 200 " in head:',
  '    s.sendall(b"GET /hello HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")',
  '    data = b""',
  '    while True:',
  '        chunk = s.recv(4096)',
  '        if not chunk: break',
  '        data += chunk',
  '    print(data.decode().split("\\r\\n\\r\\n", 1)[1])'
].join('\n')

t.test('the default policy: no network at all, no proxy', async (t) => {
  const id = await newSandbox()
  const view = (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.admin) })).json()
  t.equal(view.network, 'none')
  const res = await run(id, ['import os, socket', 'print(sorted(n for _, n in socket.if_nameindex()))', 'print(os.environ.get("HTTP_PROXY"))', fetchIn(`http://127.0.0.1:${allowedPort}/hello`)].join('\n'))
  t.equal(res.stdout, "['lo']\nNone\nFAILED URLError\n", 'only a loopback interface; the host\'s servers are out of reach')
  const record = await app.store.getSandbox(id)
  const { HostConfig } = await new Docker().getContainer(record!.container_id).inspect()
  t.equal(HostConfig.Runtime, process.env.TEST_SANDBOX_RUNTIME ?? 'runc', 'under the runtime this suite is for')
})

t.test('an allow list: the listed server through the proxy (HTTP and CONNECT); nothing else', async (t) => {
  const id = await newSandbox({ network: { allow: [`127.0.0.1:${allowedPort}`] } })
  const view = (await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: auth(KEYS.admin) })).json()
  t.same(view.network, { allow: [`127.0.0.1:${allowedPort}`] })

  t.equal((await run(id, fetchIn(`http://127.0.0.1:${allowedPort}/hello`))).stdout, 'hello from the allowed server\n', 'plain HTTP through the proxy')
  t.equal((await run(id, tunnelIn('127.0.0.1', allowedPort))).stdout, 'HTTP/1.1 200 Connection Established\nhello from the allowed server\n', 'a CONNECT tunnel')

  const refused = await run(id, [
    fetchIn(`http://127.0.0.1:${otherPort}/`),
    fetchIn(`http://127.0.0.1:${appPort}/v1/health`),
    tunnelIn('127.0.0.1', 6379),
    tunnelIn('localhost', allowedPort)
  ].join('\n'))
  t.equal(refused.stdout, [
    'HTTP 403 egress refused: not in the allow list',
    'HTTP 403 egress refused: not in the allow list',
    'HTTP/1.1 403 Forbidden',
    'HTTP/1.1 403 Forbidden',
    ''
  ].join('\n'), 'an unlisted server, this server\'s port, Redis\' port, and a name for the listed address are refused')
  t.match(logged, new RegExp(`"sandbox":"${id}".*"port":${otherPort}.*"reason":"not in the allow list".*egress refused`), 'the refusal is logged with the sandbox id')
  t.match(logged, new RegExp(`"sandbox":"${id}".*"port":${allowedPort}.*egress allowed`))

  const direct = await run(id, ['import socket', 'for target in (("127.0.0.1", ' + allowedPort + '), ("172.17.0.1", ' + appPort + ')):', '    try:', '        socket.create_connection(target, timeout=2)', '        print("CONNECTED")', '    except OSError as e:', '        print(type(e).__name__)', 'print(sorted(n for _, n in socket.if_nameindex()))'].join('\n'))
  t.equal(direct.stdout, "ConnectionRefusedError\nOSError\n['lo']\n", 'without the proxy nothing is reachable: the sandbox still has only its loopback (so no other sandbox either)')
})

t.test('pip install from an allowed package index just works', async (t) => {
  const id = await newSandbox({ network: { allow: [`127.0.0.1:${allowedPort}`] } })
  const index = `http://127.0.0.1:${allowedPort}/simple/`
  const res = await run(id, [
    'import subprocess, sys',
    `r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--index-url", "${index}", "--trusted-host", "127.0.0.1", "tinypkg"], capture_output=True, text=True)`,
    'print(r.returncode)',
    'print(r.stderr[-800:], file=sys.stderr)',
    'import importlib, site; importlib.invalidate_caches()',
    'sys.path.append(site.getusersitepackages())',
    'import tinypkg',
    'print(tinypkg.VALUE)'
  ].join('\n'), { timeout_ms: 60000 })
  t.equal(res.stdout, '0\n42\n', `installed and imported (pip said: ${res.stderr})`)
  const download = await run(id, `import subprocess, sys\nr = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", "dl", "--index-url", "${index}", "--trusted-host", "127.0.0.1", "tinypkg"], capture_output=True, text=True)\nimport os\nprint(r.returncode, os.listdir("dl"))`, { timeout_ms: 60000 })
  t.equal(download.stdout, "0 ['tinypkg-1.0-py3-none-any.whl']\n")
})

t.test('the byte budget ends a download and refuses what follows', async (t) => {
  const id = await newSandbox({ network: { allow: [`127.0.0.1:${allowedPort}`] } })
  const res = await run(id, [
    'import urllib.request',
    'try:',
    `    data = urllib.request.urlopen("http://127.0.0.1:${allowedPort}/big", timeout=10).read()`,
    '    print("GOT", len(data))',
    'except Exception as e:',
    '    print("CUT", type(e).__name__)',
    fetchIn(`http://127.0.0.1:${allowedPort}/hello`)
  ].join('\n'))
  t.match(res.stdout, /^CUT \w+\nHTTP 403 egress refused: the sandbox used its 2097152 bytes of egress\n$/)
})

t.test('a live policy change: PATCH opens, narrows and closes the network of a running sandbox', async (t) => {
  const id = await newSandbox({ env: { MINE: 'kept' } })
  const admin = auth(KEYS.admin)
  const patch = (network: unknown, headers = admin) => app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers, payload: { network } })
  // Commands start new processes, which see the environment as it is now.
  const fetchBy = async (url: string) => (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/commands`, headers: admin, payload: { cmd: ['python3', '-c', `import os; print(os.environ.get("MINE"))\n${fetchIn(url)}`] } })).json().stdout
  t.equal(await fetchBy(`http://127.0.0.1:${allowedPort}/hello`), 'kept\nFAILED URLError\n', 'none at first')
  const opened = await patch({ allow: [`127.0.0.1:${allowedPort}`] })
  t.equal(opened.statusCode, 200, opened.body)
  t.same(opened.json().network, { allow: [`127.0.0.1:${allowedPort}`] })
  t.equal(await fetchBy(`http://127.0.0.1:${allowedPort}/hello`), 'kept\nhello from the allowed server\n', 'open now, and the environment given at creation is kept')
  t.equal(await fetchBy(`http://127.0.0.1:${otherPort}/`), 'kept\nHTTP 403 egress refused: not in the allow list\n')
  t.equal((await patch({ allow: [`127.0.0.1:${otherPort}`] })).statusCode, 200)
  t.equal(await fetchBy(`http://127.0.0.1:${allowedPort}/hello`), 'kept\nHTTP 403 egress refused: not in the allow list\n', 'narrowed: the old host is refused')
  t.equal(await fetchBy(`http://127.0.0.1:${otherPort}/`), 'kept\nyou should not see this\n')
  const closed = await patch('none')
  t.equal(closed.json().network, 'none')
  t.equal(await fetchBy(`http://127.0.0.1:${otherPort}/`), 'kept\nFAILED URLError\n', 'none again: no proxy at all')
  t.equal((await patch({ allow: ['not a host!'] })).statusCode, 400)
  t.equal((await patch({ allow: [`127.0.0.1:${otherPort}`] })).statusCode, 200)
  const half = await app.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}`, headers: admin, payload: { network: 'none', timeout_s: 10 ** 9 } })
  t.equal(half.statusCode, 400, 'a PATCH with a bad part')
  t.same((await app.inject({ method: 'GET', url: `/v1/sandboxes/${id}`, headers: admin })).json().network, { allow: [`127.0.0.1:${otherPort}`] }, 'changes nothing, its network included')
  const theirs = await patch({ allow: ['evil.example.com'] }, auth(KEYS.alice))
  t.equal(theirs.statusCode, 404, 'another key\'s sandbox is not found')
  const aliceBox = await sandboxCalls(() => app, auth(KEYS.alice)).newSandbox()
  const beyond = await app.inject({ method: 'PATCH', url: `/v1/sandboxes/${aliceBox}`, headers: auth(KEYS.alice), payload: { network: { allow: ['evil.example.com'] } } })
  t.equal(beyond.statusCode, 403, 'a user key is held to SANDBOX_EGRESS_ALLOWED, as at creation')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sandboxes/${aliceBox}`, headers: auth(KEYS.alice) })).json().network, 'none', 'and nothing changed')
})

t.test('bad policies are 400s naming the field; hosts beyond SANDBOX_EGRESS_ALLOWED are 403 for user keys', async (t) => {
  const create = (network: unknown, key = KEYS.alice) => app.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth(key), payload: { network } })
  const notHost = await create({ allow: ['files.example.org', 'not a host!'] })
  t.equal(notHost.statusCode, 400)
  t.match(notHost.json().error.message, /network\.allow\[1\]: "not a host!" is not a host name/)
  const badPort = await create({ allow: ['files.example.org:70000'] })
  t.equal(badPort.statusCode, 400)
  t.match(badPort.json().error.message, /network\.allow\[0\]: the port of "files\.example\.org:70000" is out of range/)
  t.equal((await create({ allow: 'x' })).statusCode, 400)
  const outside = await create({ allow: ['pypi.example.org', 'evil.example.com'] })
  t.equal(outside.statusCode, 403)
  t.match(outside.json().error, { code: 'egress_not_allowed', message: /evil\.example\.com/ })
  const admin = await create({ allow: ['evil.example.com'] }, KEYS.admin)
  t.equal(admin.statusCode, 201, 'an admin key may allow any host')
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${admin.json().id}`, headers: auth(KEYS.admin) })
  const session = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.alice), payload: { settings: { network: { allow: ['evil.example.com'] } } } })
  t.equal(session.statusCode, 403, 'a session\'s policy is held to the same list')
})

t.test("a session's policy reaches the sandbox it gets, behind the user wall", async (t) => {
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', headers: auth(KEYS.alice), payload: { settings: { network: { allow: [`127.0.0.1:${allowedPort}`] } } } })
  t.equal(created.statusCode, 201)
  const session = created.json()
  const ran = await app.runs.executeDirect(session, 'python', fetchIn(`http://127.0.0.1:${allowedPort}/hello`), { via: 'rest' })
  const outcome = await ran.done
  t.equal(outcome.execution?.stdout, 'HTTP 403 egress refused: 127.0.0.1 is a loopback address\n', 'the sandbox has the proxy (the policy arrived), and the proxy keeps a session\'s sandbox off loopback')
})

t.test('a user key never reaches loopback, metadata or the server\'s own endpoints, whatever the allow lists say', async (t) => {
  const user = sandboxCalls(() => app, auth(KEYS.alice))
  const id = await user.newSandbox({ network: { allow: [`127.0.0.1:${allowedPort}`, `127.0.0.1:${appPort}`, '127.0.0.1:6379', '127.0.0.1'] } })
  const res = await user.run(id, [
    fetchIn(`http://127.0.0.1:${allowedPort}/hello`),
    fetchIn(`http://127.0.0.1:${appPort}/v1/health`),
    tunnelIn('127.0.0.1', 6379),
    tunnelIn('[::ffff:127.0.0.1]', allowedPort),
    tunnelIn('[::ffff:7f00:1]', allowedPort),
    tunnelIn('[::127.0.0.1]', allowedPort),
    tunnelIn('127.1', allowedPort)
  ].join('\n'))
  t.equal(res.stdout, [
    'HTTP 403 egress refused: 127.0.0.1 is a loopback address',
    'HTTP 403 egress refused: 127.0.0.1 is a loopback address',
    'HTTP/1.1 403 Forbidden',
    'HTTP/1.1 403 Forbidden',
    'HTTP/1.1 403 Forbidden',
    'HTTP/1.1 403 Forbidden',
    'HTTP/1.1 403 Forbidden',
    ''
  ].join('\n'), 'the listed server, this server, Redis, and loopback spelled as IPv4-in-IPv6 or short form are all refused')
  t.match(logged, new RegExp(`"sandbox":"${id}".*"reason":"127.0.0.1 is a loopback address".*egress refused`), 'the refusal names the wall')
})

t.test('a request slower than SLOW_REQUEST_MS is logged at warn with its route and duration', async (t) => {
  const id = await newSandbox()
  await run(id, 'import time\ntime.sleep(0.5)')
  const slow = logged.split('\n').filter(l => l.includes('"msg":"slow request"')).map(l => JSON.parse(l)).find(l => l.url === `/v1/sandboxes/${id}/execute`)
  t.match(slow, { level: 40, route: '/v1/sandboxes/:id/execute', status: 200, ms: Number })
  t.ok(slow.ms >= 400, `${slow.ms} ms`)
})

t.test('the policy check itself: private, loopback, link-local and metadata addresses are refused unless listed as addresses', async (t) => {
  for (const [address, kind] of [['10.1.2.3', 'private'], ['172.16.0.9', 'private'], ['192.168.1.1', 'private'], ['127.0.0.1', 'loopback'], ['169.254.169.254', 'metadata'], ['169.254.10.10', 'link-local'], ['100.64.0.1', 'shared'], ['0.0.0.0', 'unspecified'], ['::1', 'loopback'], ['fe80::1', 'link-local'], ['fd00::5', 'private'], ['::ffff:10.0.0.1', 'private'], ['fd00:ec2::254', 'metadata']]) {
    t.equal(forbiddenAddress(address), kind, address)
  }
  t.equal(forbiddenAddress('93.184.216.34'), null, 'a public address is fine')
  const resolver = (map: Record<string, string[]>) => async (host: string) => { if (!map[host]) throw new Error('NXDOMAIN'); return map[host] }
  const rules = parsePolicy({ allow: ['files.example.org', '*.example.net:8443', '10.0.0.5:8080'] })
  const dns = resolver({ 'files.example.org': ['169.254.169.254'], 'a.example.net': ['93.184.216.34'] })
  t.match(await decide(rules, 'files.example.org', 443, dns), { ok: false, reason: '169.254.169.254 is a metadata address' }, 'a listed name that resolves to the metadata address is refused')
  t.match(await decide(rules, 'a.example.net', 8443, dns), { ok: true, address: '93.184.216.34' })
  t.match(await decide(rules, 'a.example.net', 443, dns), { ok: false, reason: 'not in the allow list' }, 'the port is part of the rule')
  t.match(await decide(rules, 'example.net', 8443, dns), { ok: false }, '*.domain is its subdomains only')
  t.match(await decide(rules, '10.0.0.5', 8080, dns), { ok: true, address: '10.0.0.5' }, 'a private address listed as an address is allowed')
  t.match(await decide(rules, '10.0.0.6', 8080, dns), { ok: false })
  t.match(await decide(rules, 'files.example.org', 80, resolver({})), { ok: false, reason: 'the name does not resolve' })
  t.same(parseRule('[::1]:8080', 'x'), { host: '::1', wildcard: false, ip: true, port: 8080, text: '[::1]:8080' })
  const allowed = parseAllowedList('*.example.org,files.example.com:8080')
  t.doesNotThrow(() => checkAllowed(parsePolicy({ allow: ['a.example.org', '*.b.example.org:99', '*.example.org', 'files.example.com:8080'] }), allowed, false))
  t.throws(() => checkAllowed(parsePolicy({ allow: ['files.example.com:9090'] }), allowed, false), /files\.example\.com:9090/)
  t.throws(() => checkAllowed(parsePolicy({ allow: ['example.org'] }), allowed, false), /example\.org/)
})
