// TLS for the egress proxy's changed requests (issue 26): for a host whose requests get a secret injected, the proxy
// answers the sandbox's CONNECT itself, with a certificate for that host signed by the deployment's CA (which the
// sandbox trusts), reads the request, changes it, and sends it on over its own TLS connection, which verifies the
// upstream's certificate against the system store (plus EGRESS_UPSTREAM_CA). Hosts without a transform keep a blind tunnel.
import { execFile } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile, mkdir, chmod } from 'node:fs/promises'
import { isIP } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** Makes a deployment CA in `dir` (ca.crt, and ca.key readable by its owner only) unless one is there. */
export async function makeCa (dir: string, name = 'interpreter-server egress CA'): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  if (await readFile(join(dir, 'ca.crt')).then(() => true, () => false)) return
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt'), '-days', '3650', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  await chmod(join(dir, 'ca.key'), 0o600)
}

/** Signs a certificate for `host` (a name or an address) with the CA in `caDir`, for the public key of `keyPem`. */
export async function signLeaf (caDir: string, host: string, keyPem: string, days = 7): Promise<string> {
  const work = await mkdtemp(join(tmpdir(), 'leaf-'))
  try {
    await writeFile(join(work, 'leaf.key'), keyPem, { mode: 0o600 })
    const san = isIP(host) ? `IP:${host}` : `DNS:${host}`
    await writeFile(join(work, 'ext.cnf'), `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=${san}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n`)
    await run('openssl', ['req', '-new', '-key', join(work, 'leaf.key'), '-subj', `/CN=${host.slice(0, 64)}`, '-out', join(work, 'leaf.csr')])
    await run('openssl', ['x509', '-req', '-in', join(work, 'leaf.csr'), '-CA', join(caDir, 'ca.crt'), '-CAkey', join(caDir, 'ca.key'),
      '-set_serial', `0x${randomBytes(16).toString('hex')}`, '-days', String(days), '-extfile', join(work, 'ext.cnf'), '-out', join(work, 'leaf.crt')])
    return await readFile(join(work, 'leaf.crt'), 'utf8')
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

export class TlsInterceptor {
  /** One key for every leaf (a certificate per host): made at start, never written anywhere but a signing's temp dir. */
  private readonly leafKey = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  private readonly contexts = new Map<string, Promise<SecureContext>>()
  /** What upstream certificates are checked against: the system store, plus the operator's extra CAs. */
  readonly upstreamCa: string[]

  constructor (private readonly caDir: string, readonly caCert: string, extraCa?: string) {
    this.upstreamCa = [...rootCertificates, ...(extraCa ? [extraCa] : [])]
  }

  static async load (caDir: string, upstreamCaFile?: string): Promise<TlsInterceptor> {
    const caCert = await readFile(join(caDir, 'ca.crt'), 'utf8')
    await readFile(join(caDir, 'ca.key')) // readable now, or the server says so at start
    return new TlsInterceptor(caDir, caCert, upstreamCaFile ? await readFile(upstreamCaFile, 'utf8') : undefined)
  }

  /** The server side's context for `host` (its certificate made once, then kept; at most 1000 hosts). */
  contextFor (host: string): Promise<SecureContext> {
    let context = this.contexts.get(host)
    if (!context) {
      if (this.contexts.size >= 1000) this.contexts.delete(this.contexts.keys().next().value!)
      context = signLeaf(this.caDir, host, this.leafKey).then(cert => createSecureContext({ key: this.leafKey, cert: `${cert}${this.caCert}` }))
      context.catch(() => this.contexts.delete(host))
      this.contexts.set(host, context)
    }
    return context
  }
}
