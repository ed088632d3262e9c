// What changing requests at the egress proxy costs (issue 26), measured from inside a sandbox in one run: sequential
// GETs over one keep-alive session (python requests) to local servers on 127.0.0.1:
// - HTTPS through a blind tunnel (no transform) against HTTPS terminated by the proxy with a secret injected;
// - plain HTTP forwarded as it is against plain HTTP with a secret injected.
// Usage: npm run bench:egress (after npm run setup). BENCH_ROUNDS sets the requests per row (default 500).
import { createServer as createHttps } from 'node:https'
import { createServer as createHttp, type Server as HttpServer } from 'node:http'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Server, headers } from './server.js'
import { makeCa, signLeaf } from '../services/sandbox/tls-intercept.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 500)

async function listen (server: HttpServer): Promise<number> {
  server.on('request', (_req, res) => { res.writeHead(200, { 'content-type': 'text/plain' }).end('ok') })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as { port: number }).port
}

async function call (server: Server, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${server.base}${path}`, { method, headers: body === undefined ? { authorization: headers.authorization } : headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}

async function main (): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'bench-egress-'))
  await makeCa(join(work, 'deployment'))
  await makeCa(join(work, 'upstream'), 'bench upstream CA')
  const key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const cert = await signLeaf(join(work, 'upstream'), '127.0.0.1', key)
  const servers = [createHttps({ key, cert }), createHttps({ key, cert }), createHttp()]
  const [injected, tunnelled, plain] = await Promise.all(servers.map(listen))
  const server = new Server('egress', {
    POOL_SIZE: '1',
    SECRETS_KEY: 'b'.repeat(64),
    EGRESS_CA_DIR: join(work, 'deployment'),
    EGRESS_UPSTREAM_CA: join(work, 'upstream', 'ca.crt')
  })
  await server.start()
  try {
    await call(server, 'POST', '/v1/secrets', { name: 'TOKEN', value: 'bench-secret-value' })
    const allow = [`127.0.0.1:${injected}`, `127.0.0.1:${tunnelled}`, `127.0.0.1:${plain}`]
    const transforms = [
      { host: allow[0], headers: { Authorization: 'Bearer {{secret:TOKEN}}' } },
      { host: allow[2], path_prefix: '/api', headers: { Authorization: 'Bearer {{secret:TOKEN}}' } }
    ]
    const sandbox = await call(server, 'POST', '/v1/sandboxes', { network: { allow, transforms } })
    const code = `
import requests, time, json, urllib3
urllib3.disable_warnings()
def run(url, verify=True):
    s = requests.Session()
    for _ in range(20): s.get(url, verify=verify)
    times = []
    t0 = time.perf_counter()
    for _ in range(${ROUNDS}):
        a = time.perf_counter(); s.get(url, verify=verify); times.append((time.perf_counter() - a) * 1000)
    total = time.perf_counter() - t0
    times.sort()
    return [times[len(times) // 2], times[int(len(times) * 0.99) - 1], ${ROUNDS} / total]
print(json.dumps({
  'tunnel': run('https://127.0.0.1:${tunnelled}/x', verify=False),
  'inject': run('https://127.0.0.1:${injected}/x'),
  'plain': run('http://127.0.0.1:${plain}/other'),
  'plain_inject': run('http://127.0.0.1:${plain}/api/x'),
}))`
    const out = await call(server, 'POST', `/v1/sandboxes/${sandbox.id}/execute`, { code, timeout_ms: 300000 })
    if (out.error) throw new Error(JSON.stringify(out.error))
    const r = JSON.parse(out.stdout) as Record<string, [number, number, number]>
    const row = (what: string, x: [number, number, number]) => `| ${what} | ${x[0].toFixed(2)} / ${x[1].toFixed(2)} | ${x[2].toFixed(0)} |`
    process.stdout.write([
      `| ${ROUNDS} sequential GETs, keep-alive (python requests in the sandbox) | p50 / p99 ms | requests/s |`,
      '|---|---|---|',
      row('HTTPS, blind tunnel (no transform)', r.tunnel!),
      row('HTTPS, TLS terminated by the proxy, secret injected', r.inject!),
      row('HTTP, forwarded as it is', r.plain!),
      row('HTTP, secret injected', r.plain_inject!),
      `| added by terminating TLS and injecting (p50) | ${(r.inject![0] - r.tunnel![0]).toFixed(2)} | |`,
      `| added by injecting into plain HTTP (p50) | ${(r.plain_inject![0] - r.plain![0]).toFixed(2)} | |`
    ].join('\n') + '\n')
  } finally {
    await server.clear().catch(() => {})
    await server.stop()
    for (const s of servers) s.close()
  }
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
