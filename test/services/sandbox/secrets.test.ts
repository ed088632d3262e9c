// Secrets injected by the egress proxy (issue 26), against local servers only: an HTTPS server on 127.0.0.1 with a
// certificate of a test CA (given as EGRESS_UPSTREAM_CA), a plain HTTP one, and one whose certificate no CA vouches for.
// The sandbox calls them with urllib, requests and curl; the servers see the secret, the sandbox never holds it.
import t from 'tap'
import { createServer as createHttps } from 'node:https'
import { createServer as createHttp, type IncomingHttpHeaders, type Server } from 'node:http'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import { makeCa, signLeaf } from '../../../services/sandbox/tls-intercept.js'

const admin = { ...auth(KEYS.admin), 'content-type': 'application/json' }
const alice = { ...auth(KEYS.alice), 'content-type': 'application/json' }

interface Seen { path: string, headers: IncomingHttpHeaders }

async function listen (server: Server, seen: Seen[]): Promise<number> {
  server.on('request', (req, res) => {
    seen.push({ path: req.url ?? '', headers: req.headers })
    if (req.url?.startsWith('/redirect')) {
      res.writeHead(302, { location: String(req.headers['x-redirect-to']) }).end()
      return
    }
    res.writeHead(200, { 'content-type': 'text/plain' }).end(`auth=${req.headers.authorization ?? ''} key=${req.headers['x-api-key'] ?? ''} custom=${req.headers['x-custom'] ?? ''}`)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as { port: number }).port
}

async function tlsServer (caDir: string, seen: Seen[]): Promise<{ server: Server, port: number }> {
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const cert = await signLeaf(caDir, '127.0.0.1', key)
  const server = createHttps({ key, cert })
  return { server, port: await listen(server, seen) }
}

t.test('secrets never enter the sandbox: the egress proxy injects them', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'secrets-'))
  await makeCa(join(work, 'deployment'))
  await makeCa(join(work, 'upstream'), 'test upstream CA')
  await makeCa(join(work, 'stranger'), 'a CA nobody trusts')
  const seen = { https: [] as Seen[], http: [] as Seen[], other: [] as Seen[], stranger: [] as Seen[] }
  const https = await tlsServer(join(work, 'upstream'), seen.https)
  const other = await tlsServer(join(work, 'upstream'), seen.other)
  const stranger = await tlsServer(join(work, 'stranger'), seen.stranger)
  const plain = createHttp()
  const httpPort = await listen(plain, seen.http)
  t.teardown(() => { for (const s of [https.server, other.server, stranger.server, plain]) s.close() })

  const config = await sandboxConfig({ SECRETS_KEY: randomBytes(32).toString('hex'), EGRESS_CA_DIR: join(work, 'deployment'), EGRESS_UPSTREAM_CA: join(work, 'upstream', 'ca.crt'), POOL_SIZE: '1' })
  const app: FastifyInstance = await build(t, config)
  t.teardown(async () => { await flushPrefix(REDIS_URL, config.REDIS_PREFIX) })
  const call = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = admin) => {
    const res = await app.inject({ method, url, headers: payload === undefined ? { authorization: headers.authorization! } : headers, ...(payload === undefined ? {} : { payload: payload as object }) })
    return { status: res.statusCode, body: res.body && String(res.headers['content-type']).startsWith('application/json') ? res.json() : null, text: res.body }
  }
  const value = `sk-test-${randomBytes(12).toString('hex')}`

  await t.test('the store: values go in and never come out', async (t) => {
    const made = await call('POST', '/v1/secrets', { name: 'API_TOKEN', value, description: 'the test API' })
    t.equal(made.status, 201)
    t.notOk(made.text.includes(value), 'not in the create answer')
    t.equal((await call('POST', '/v1/secrets', { name: 'API_TOKEN', value: 'x' })).status, 409)
    const listed = await call('GET', '/v1/secrets')
    t.same(listed.body.data.map((s: { name: string }) => s.name), ['API_TOKEN'])
    t.notOk(listed.text.includes(value), 'not in the list')
    t.notOk((await call('GET', '/v1/secrets/API_TOKEN')).text.includes(value), 'not in its own answer')
    t.equal((await call('GET', '/v1/secrets/API_TOKEN', undefined, alice)).status, 404, 'another key does not see it')
    t.equal((await call('POST', '/v1/secrets', { name: '1bad', value: 'x' })).status, 400)
    const redis = new Redis(REDIS_URL)
    const keys = await redis.keys(`${config.REDIS_PREFIX}*`)
    t.ok(keys.length > 0)
    const raw = (await Promise.all(keys.map(async k => (await redis.dumpBuffer(k))?.toString('latin1') ?? ''))).join('\n')
    redis.disconnect()
    t.notOk(raw.includes(value), 'Redis holds it sealed')
  })

  const allow = [`127.0.0.1:${https.port}`, `127.0.0.1:${httpPort}`, `127.0.0.1:${other.port}`, `127.0.0.1:${stranger.port}`]
  const transforms = [
    { host: `127.0.0.1:${https.port}`, headers: { Authorization: 'Bearer {{secret:API_TOKEN}}' } },
    { host: `127.0.0.1:${stranger.port}`, headers: { Authorization: 'Bearer {{secret:API_TOKEN}}' } },
    { host: `127.0.0.1:${httpPort}`, path_prefix: '/api', headers: { 'X-Api-Key': '{{secret:API_TOKEN}}' }, replace_placeholders: true }
  ]

  await t.test('policies are checked when they are set', async (t) => {
    const bad = async (network: unknown) => (await call('POST', '/v1/sandboxes', { network })).body?.error?.message as string
    t.match(await bad({ allow, transforms: [{ host: `127.0.0.1:${https.port}`, headers: { Authorization: 'Bearer {{secret:NOPE}}' } }] }), /no secret named NOPE/)
    t.match(await bad({ allow, transforms: [{ host: 'api.example.com', headers: { A: '{{secret:API_TOKEN}}' } }] }), /not in the allow list/)
    t.match(await bad({ allow, transforms: [{ host: `127.0.0.1:${https.port}`, headers: { Host: 'x' } }] }), /not a header a transform may set/)
    t.match(await bad({ allow, transforms: [{ host: `127.0.0.1:${https.port}`, path_prefix: '/a/../b', headers: { A: 'b' } }] }), /path_prefix/)
    const res = await call('POST', '/v1/sandboxes', { network: { allow: [`127.0.0.1:${https.port}`], transforms: [{ host: `127.0.0.1:${https.port}`, headers: { A: '{{secret:API_TOKEN}}' } }] } }, alice)
    t.equal(res.status, 403, 'a user key may not reach 127.0.0.1 at all')
  })

  const sandbox = (await call('POST', '/v1/sandboxes', { network: { allow, transforms } })).body
  t.ok(sandbox.id, JSON.stringify(sandbox))
  t.same(sandbox.network.transforms.length, 3, 'the sandbox shows its transforms (templates, no values)')
  const run = async (code: string) => (await call('POST', `/v1/sandboxes/${sandbox.id}/execute`, { code })).body
  const sh = async (cmd: string, input?: string) => (await call('POST', `/v1/sandboxes/${sandbox.id}/commands`, { cmd, ...(input !== undefined ? { input } : {}) })).body as { stdout: string, stderr: string, exit_code: number }
  const url = `https://127.0.0.1:${https.port}`

  t.test('HTTPS with urllib, requests and curl: the server sees the secret', async (t) => {
    t.equal((await run(`import urllib.request\nprint(urllib.request.urlopen('${url}/v1/models').read().decode())`)).stdout, `auth=Bearer ${value} key= custom=\n`, 'urllib')
    t.equal((await run(`import requests\nprint(requests.get('${url}/v1/models').text)`)).stdout, `auth=Bearer ${value} key= custom=\n`, 'requests')
    const curl = await sh(`curl -sS ${url}/v1/models`)
    t.equal(curl.stdout, `auth=Bearer ${value} key= custom=`, `curl ${curl.stderr}`)
    t.ok(seen.https.every(r => r.headers.authorization === `Bearer ${value}`))
  })

  t.test('the value is nowhere inside the sandbox', async (t) => {
    // The value goes in on stdin, so that no command line holds it (grep's own would).
    const found = await sh('grep -rlsF -f - /proc/[0-9]*/environ /proc/[0-9]*/cmdline /tmp /home /etc /run /var /opt /root 2>/dev/null; true', `${value}\n`)
    t.equal(found.stdout.trim(), '', `no file, environment or command line holds it: ${found.stdout}`)
    t.equal((await run(`import os\nprint(any('${value}' in v for v in os.environ.values()))`)).stdout, 'False\n')
  })

  t.test('rotation takes effect on the next request', async (t) => {
    const next = `sk-rotated-${randomBytes(8).toString('hex')}`
    t.equal((await call('PUT', '/v1/secrets/API_TOKEN', { value: next })).body.version, 2)
    t.equal((await sh(`curl -sS ${url}/v1/models`)).stdout, `auth=Bearer ${next} key= custom=`)
    await call('PUT', '/v1/secrets/API_TOKEN', { value })
  })

  t.test('plain HTTP: headers under a path prefix, and placeholders the code sent', async (t) => {
    const base = `http://127.0.0.1:${httpPort}`
    t.equal((await sh(`curl -sS ${base}/api/items`)).stdout, `auth= key=${value} custom=`, 'under /api: injected')
    t.equal((await sh(`curl -sS ${base}/apis`)).stdout, 'auth= key= custom=', 'not under /api (/apis is another path)')
    t.equal((await sh(`curl -sS -H 'X-Custom: token {{secret:API_TOKEN}}' ${base}/api/other`)).stdout, `auth= key=${value} custom=token ${value}`, 'a placeholder replaced')
    t.equal((await sh(`curl -sS -H 'X-Custom: {{secret:API_TOKEN}}' ${base}/other`)).stdout, 'auth= key= custom={{secret:API_TOKEN}}', 'not outside the transform\'s path')
    // -k: this host has no transform, so its TLS is the server's own (a CA the sandbox does not know): a blind tunnel.
    t.equal((await sh(`curl -sSk -H 'X-Custom: {{secret:API_TOKEN}}' https://127.0.0.1:${other.port}/x`)).stdout, 'auth= key= custom={{secret:API_TOKEN}}', 'not for a host without the transform')
  })

  t.test('a redirect to another host does not take the secret along', async (t) => {
    const before = seen.other.length
    const res = await sh(`curl -sSk -L -H 'X-Redirect-To: https://127.0.0.1:${other.port}/landed' ${url}/redirect`)
    t.equal(res.stdout, 'auth= key= custom=', `the second host saw no secret ${res.stderr}`)
    t.equal(seen.other.length, before + 1)
    t.equal(seen.other.at(-1)?.headers.authorization, undefined)
    t.equal(seen.https.at(-1)?.headers.authorization, `Bearer ${value}`, 'the first did')
  })

  t.test('an upstream whose certificate does not verify gets nothing', async (t) => {
    const res = await sh(`curl -sS https://127.0.0.1:${stranger.port}/x`)
    t.match(res.stdout, /did not verify/, 'refused with the reason')
    t.equal(seen.stranger.length, 0, 'the server never saw a request')
  })

  t.test('a host the policy refuses fails at once with a message', async (t) => {
    // Not timed here (these machines are noisy): the proxy's refusal is its first answer, and pip does not retry it.
    let began = Date.now()
    const curl = await sh('curl -sS https://api.example.com/ 2>&1; true')
    t.comment(`curl refused in ${Date.now() - began} ms`)
    t.match(curl.stdout, /CONNECT tunnel failed, response 403/, curl.stdout)
    began = Date.now()
    const pip = await sh('pip download -v --no-deps --index-url https://pypi.example.org/simple -d /tmp/x six 2>&1; true')
    t.comment(`pip gave up in ${Date.now() - began} ms`)
    t.match(pip.stdout, /No matching distribution found for six/)
    t.notMatch(pip.stdout, /Retrying/, 'pip gives up at the first refusal (PIP_RETRIES=0)')
  })

  t.test('a secret with a line break is not sent as a header (and nothing crashes)', async (t) => {
    await call('PUT', '/v1/secrets/API_TOKEN', { value: 'first\r\nX-Evil: 1' })
    t.match((await sh(`curl -sS ${url}/v1/models`)).stdout, /line break/)
    t.match((await sh(`curl -sS http://127.0.0.1:${httpPort}/api/x`)).stdout, /line break/)
    await call('PUT', '/v1/secrets/API_TOKEN', { value })
    t.equal((await sh(`curl -sS ${url}/v1/models`)).stdout, `auth=Bearer ${value} key= custom=`, 'and the proxy still serves')
  })

  t.test('a secret deleted under a running sandbox: its requests are refused, not sent without it', async (t) => {
    t.equal((await call('DELETE', '/v1/secrets/API_TOKEN')).status, 204)
    const res = await sh(`curl -sS ${url}/v1/models`)
    t.match(res.stdout, /no longer exists/)
    const metrics = (await call('GET', '/metrics')).text
    t.match(metrics, /sandbox_egress_events_total\{event="injected"\} [1-9]/)
    t.match(metrics, /sandbox_egress_events_total\{event="refused"\} [1-9]/)
  })

  t.test('the CA the sandbox trusts is the deployment\'s', async (t) => {
    const bundle = (await sh('cat $SSL_CERT_FILE')).stdout
    t.ok(bundle.includes(readFileSync(join(work, 'deployment', 'ca.crt'), 'utf8').trim()), 'in the bundle SSL_CERT_FILE names')
    t.notOk(bundle.includes('PRIVATE KEY'), 'and no key with it')
  })
})
