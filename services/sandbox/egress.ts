import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https'
import { BlockList, connect, isIP, type Socket } from 'node:net'
import { TLSSocket, checkServerIdentity } from 'node:tls'
import type { TlsInterceptor } from './tls-intercept.js'
import { lookup } from 'node:dns/promises'
import { unlink, stat, rename } from 'node:fs/promises'
import { createReadStream, createWriteStream, mkdirSync } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { AppError } from '../errors.js'
import { shareWithGroup } from './agent-socket.js'

/**
 * Egress for sandboxes that a network policy lets out. The container keeps `--network none`: it has no interface but
 * its own loopback, so it can reach no other sandbox, no port of this host, no Redis and no metadata service. Its one
 * way out is an HTTP proxy this server runs per sandbox on a unix socket in the sandbox's agent directory (root's
 * alone; a relay started by the agent offers it on the sandbox's 127.0.0.1:3128, set as HTTP(S)_PROXY for the
 * kernels). Which socket a connection arrives on says which sandbox asks, so nothing in the sandbox can claim to be
 * another. Each destination is checked against that sandbox's allow list, resolved here, and refused when it lands on
 * a private, loopback, link-local or metadata address that the list does not name as an address.
 */

export const EGRESS_SOCKET = 'egress.sock'
export const PROXY_URL_IN_SANDBOX = 'http://127.0.0.1:3128'

/** One allow-list entry: a host name, `*.domain` (its subdomains), or an address; with a port, or 80 and 443. */
export interface AllowRule { host: string, wildcard: boolean, ip: boolean, port: number | null, text: string }

export type NetworkPolicy = 'none' | { allow: string[], transforms?: TransformSpec[] }

/** A change to requests leaving a sandbox for one host (and a path prefix): headers set from the key's secrets. */
export interface TransformSpec {
  host: string
  path_prefix?: string
  /** Header name → value; `{{secret:NAME}}` in a value is the secret's value, read when the request leaves. */
  headers?: Record<string, string>
  /** Authorization: Basic from these two templates. */
  basic_auth?: { username: string, password: string }
  /** Also replace `{{secret:NAME}}` in the headers the code sent itself (to this host only). */
  replace_placeholders?: boolean
}
export interface Transform extends TransformSpec { rule: AllowRule }

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$/
/** Headers a transform may not set: the connection's own, and the proxy's. */
const FIXED_HEADERS = new Set(['host', 'connection', 'content-length', 'transfer-encoding', 'proxy-authorization', 'proxy-connection', 'upgrade', 'te', 'trailer', 'keep-alive'])

/** Reads a policy's transforms: each for a host the allow list names (400 otherwise), its headers well formed. */
export function parseTransforms (raw: unknown, rules: AllowRule[], field = 'network'): Transform[] {
  const list = raw !== null && typeof raw === 'object' && !Array.isArray(raw) ? (raw as { transforms?: unknown }).transforms : undefined
  if (list === undefined) return []
  if (!Array.isArray(list) || list.length > 50) throw invalid(`${field}.transforms`, 'must be a list of at most 50 transforms')
  return list.map((t: unknown, i) => {
    const f = `${field}.transforms[${i}]`
    if (t === null || typeof t !== 'object' || Array.isArray(t)) throw invalid(f, 'must be {host, path_prefix?, headers?, basic_auth?, replace_placeholders?}')
    const spec = t as TransformSpec
    const rule = parseRule(spec.host, `${f}.host`)
    if (!rules.some(r => r.host === rule.host && r.wildcard === rule.wildcard && r.port === rule.port)) {
      throw invalid(`${f}.host`, `${rule.text} is not in the allow list: a transform applies only to a host the sandbox may reach`)
    }
    if (spec.path_prefix !== undefined && (typeof spec.path_prefix !== 'string' || !spec.path_prefix.startsWith('/') || spec.path_prefix.length > 1024 || /[\s#?]|\/\.\.?(\/|$)/.test(spec.path_prefix))) {
      throw invalid(`${f}.path_prefix`, 'must be a path starting with /, without . or .. segments, a query or spaces')
    }
    const headers = spec.headers ?? {}
    if (typeof headers !== 'object' || Array.isArray(headers) || Object.keys(headers).length > 16) throw invalid(`${f}.headers`, 'must map at most 16 header names to values')
    for (const [name, value] of Object.entries(headers)) {
      if (!TOKEN.test(name) || FIXED_HEADERS.has(name.toLowerCase())) throw invalid(`${f}.headers`, `"${name}" is not a header a transform may set`)
      if (typeof value !== 'string' || value.length > 4096 || /[\r\n\0]/.test(value)) throw invalid(`${f}.headers.${name}`, 'must be a string of at most 4096 characters on one line')
    }
    const basic = spec.basic_auth
    if (basic !== undefined && (typeof basic !== 'object' || typeof basic.username !== 'string' || typeof basic.password !== 'string' || basic.username.length > 1024 || basic.password.length > 1024 || basic.username.includes(':'))) {
      throw invalid(`${f}.basic_auth`, 'must be {username, password}: strings, the username without a colon')
    }
    if (basic && Object.keys(headers).some(h => h.toLowerCase() === 'authorization')) throw invalid(f, 'basic_auth and an Authorization header cannot both be set')
    if (spec.replace_placeholders !== undefined && typeof spec.replace_placeholders !== 'boolean') throw invalid(`${f}.replace_placeholders`, 'must be a boolean')
    if (!Object.keys(headers).length && !basic && !spec.replace_placeholders) throw invalid(f, 'changes nothing: give headers, basic_auth or replace_placeholders')
    return { host: rule.text, ...(spec.path_prefix ? { path_prefix: spec.path_prefix } : {}), headers, ...(basic ? { basic_auth: { username: basic.username, password: basic.password } } : {}), replace_placeholders: spec.replace_placeholders === true, rule }
  })
}

/** Every secret template of some transforms (what a policy is checked against: each name must exist). */
export function templatesOf (transforms: TransformSpec[]): string[] {
  return transforms.flatMap(t => [...Object.values(t.headers ?? {}), ...(t.basic_auth ? [t.basic_auth.username, t.basic_auth.password] : [])])
}

const LABEL = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/

function invalid (field: string, message: string): AppError {
  return new AppError(400, 'validation_error', `${field}: ${message}`)
}

/** Parses `host`, `host:port`, `*.domain[:port]`, `1.2.3.4[:port]` or `[v6][:port]`; a 400 naming the field otherwise. */
export function parseRule (raw: unknown, field: string, allowStar = false): AllowRule {
  if (typeof raw !== 'string' || !raw.trim()) throw invalid(field, 'must be a host name, a host:port, *.domain or an address')
  const text = raw.trim().toLowerCase()
  if (allowStar && (text === '*' || /^\*:\d+$/.test(text))) {
    return { host: '*', wildcard: true, ip: false, port: text === '*' ? null : port(text.slice(2), field, raw), text }
  }
  let host = text
  let portText: string | undefined
  const v6 = /^\[([0-9a-f:.]+)\](?::([^:]*))?$/.exec(text)
  if (v6) {
    host = v6[1]
    portText = v6[2]
  } else if (text.split(':').length === 2) {
    [host, portText] = text.split(':')
  } else if (text.includes(':') && isIP(text) !== 6) {
    throw invalid(field, `"${raw}" is not a host (write IPv6 addresses as [address]:port)`)
  }
  host = host.replace(/\.$/, '')
  const wildcard = host.startsWith('*.')
  const name = wildcard ? host.slice(2) : host
  const ip = !wildcard && isIP(name) !== 0
  if (!ip && (name.length > 253 || !name.split('.').every(l => LABEL.test(l)) || (wildcard && !name.includes('.')))) {
    throw invalid(field, `"${raw}" is not a host name`)
  }
  return { host: name, wildcard, ip, port: portText === undefined ? null : port(portText, field, raw), text }
}

function port (text: string, field: string, raw: string): number {
  const n = /^\d{1,5}$/.test(text) ? Number(text) : NaN
  if (!(n >= 1 && n <= 65535)) throw invalid(field, `the port of "${raw}" is out of range (1-65535)`)
  return n
}

/** Reads a policy from a request: `"none"` or `{allow: [...]}` (an empty list is none). */
export function parsePolicy (raw: unknown, field = 'network'): AllowRule[] {
  if (raw === undefined || raw === null || raw === 'none') return []
  if (typeof raw !== 'object' || Array.isArray(raw) || !Array.isArray((raw as { allow?: unknown }).allow)) {
    throw invalid(field, 'must be "none" or {"allow": ["host", "host:port", "*.domain", ...], "transforms"?: [...]}')
  }
  const allow = (raw as { allow: unknown[] }).allow
  if (allow.length > 100) throw invalid(`${field}.allow`, 'must have at most 100 entries')
  return allow.map((entry, i) => parseRule(entry, `${field}.allow[${i}]`))
}

/** Reads SANDBOX_EGRESS_ALLOWED (comma-separated; `*` for any host). */
export function parseAllowedList (text: string | undefined, field = 'SANDBOX_EGRESS_ALLOWED'): AllowRule[] {
  return (text ?? '').split(',').map(s => s.trim()).filter(Boolean).map((s, i) => parseRule(s, `${field}[${i}]`, true))
}

/** Whether an operator's pattern covers a user's entry (the entry may be narrower, never wider). */
function covers (pattern: AllowRule, rule: AllowRule): boolean {
  if (pattern.port !== null && pattern.port !== rule.port) return false
  if (pattern.host === '*') return true
  if (pattern.wildcard) return rule.host.endsWith(`.${pattern.host}`) || (rule.wildcard && rule.host === pattern.host)
  return !rule.wildcard && rule.host === pattern.host
}

/** The first of `rules` the operator's list does not cover, as a 403 naming it; admins are not held to the list. */
export function checkAllowed (rules: AllowRule[], allowed: AllowRule[], admin: boolean): void {
  if (admin) return
  const outside = rules.find(r => !allowed.some(p => covers(p, r)))
  if (outside) {
    throw new AppError(403, 'egress_not_allowed', `This server does not let sandboxes reach ${outside.text} (SANDBOX_EGRESS_ALLOWED)`, 'permission_error')
  }
}

/** Whether a (normalised) request path is the prefix or below it, segment-wise. */
function pathUnder (path: string, prefix: string): boolean {
  if (prefix === '/' || path === prefix) return true
  return path.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`)
}

function matches (rule: AllowRule, host: string, port: number): boolean {
  if (rule.port === null ? port !== 80 && port !== 443 : rule.port !== port) return false
  return rule.wildcard ? host.endsWith(`.${rule.host}`) : host === rule.host
}

const RANGES: Array<[string, string, number, 'ipv4' | 'ipv6']> = [
  ['unspecified', '0.0.0.0', 8, 'ipv4'], ['private', '10.0.0.0', 8, 'ipv4'], ['shared', '100.64.0.0', 10, 'ipv4'],
  ['loopback', '127.0.0.0', 8, 'ipv4'], ['link-local', '169.254.0.0', 16, 'ipv4'], ['private', '172.16.0.0', 12, 'ipv4'],
  ['reserved', '192.0.0.0', 24, 'ipv4'], ['private', '192.168.0.0', 16, 'ipv4'], ['benchmarking', '198.18.0.0', 15, 'ipv4'],
  ['multicast', '224.0.0.0', 4, 'ipv4'], ['reserved', '240.0.0.0', 4, 'ipv4'],
  ['unspecified', '::', 128, 'ipv6'], ['loopback', '::1', 128, 'ipv6'], ['private', 'fc00::', 7, 'ipv6'],
  ['link-local', 'fe80::', 10, 'ipv6'], ['multicast', 'ff00::', 8, 'ipv6']
]
const LISTS = new Map<string, BlockList>()
for (const [kind, net, prefix, family] of RANGES) {
  if (!LISTS.has(kind)) LISTS.set(kind, new BlockList())
  LISTS.get(kind)!.addSubnet(net, prefix, family)
}

/** The 16 bytes of an IPv6 address (isIP must say 6). */
function v6Bytes (address: string): number[] {
  let text = address.toLowerCase().replace(/%.*$/, '')
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)?.[1]
  if (v4) {
    const [a, b, c, d] = v4.split('.').map(Number)
    text = text.slice(0, -v4.length) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined]
  const words = (part: string | undefined) => part ? part.split(':').map(w => parseInt(w, 16)) : []
  const h = words(head)
  const t = words(tail)
  const all = tail === undefined ? h : [...h, ...new Array(8 - h.length - t.length).fill(0), ...t]
  return all.flatMap(w => [w >> 8, w & 255])
}

/**
 * The IPv4 address an IPv6 address carries, in every form a stack may route to it: mapped (::ffff:a.b.c.d),
 * compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002:aabb:ccdd::/48).
 */
export function embeddedV4 (address: string): string | null {
  if (isIP(address) !== 6) return null
  const b = v6Bytes(address)
  const v4 = (at: number) => b.slice(at, at + 4).join('.')
  const zeros = (from: number, to: number) => b.slice(from, to).every(x => x === 0)
  if (zeros(0, 10) && b[10] === 255 && b[11] === 255) return v4(12)
  if (zeros(0, 12) && !zeros(12, 16) && !(zeros(12, 15) && b[15] === 1)) return v4(12)
  if (b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && zeros(4, 12)) return v4(12)
  if (b[0] === 0x20 && b[1] === 0x02) return v4(2)
  return null
}

/** Why an address may not be reached unless listed as an address (metadata, loopback, private, ...); null when public. */
export function forbiddenAddress (address: string): string | null {
  const family = isIP(address)
  if (family === 0) return 'not an address'
  const inner = embeddedV4(address)
  if (inner) return forbiddenAddress(inner)
  if (address === '169.254.169.254' || (family === 6 && v6Bytes(address).join() === v6Bytes('fd00:ec2::254').join())) return 'metadata'
  for (const [kind, list] of LISTS) if (list.check(address, family === 4 ? 'ipv4' : 'ipv6')) return kind
  return null
}

/** Kinds of address a user key's sandbox never reaches, whatever any allow list says. */
const NEVER_FOR_USERS = new Set(['metadata', 'loopback', 'link-local', 'unspecified', 'multicast', 'reserved', 'not an address'])

/** The same address however it is written (an IPv4 address inside IPv6 is that IPv4 address). */
export function canonicalAddress (address: string): string {
  const inner = embeddedV4(address)
  if (inner) return inner
  return isIP(address) === 6 ? v6Bytes(address).join('.') : address
}

/** One of the server's own endpoints (its listeners, its Redis, its Docker hosts): an address (or any, for `*`) and a port. */
export interface Endpoint { host: string, port: number }

/**
 * The wall around a user key's sandbox: whatever the allow lists say, it never reaches loopback, link-local, metadata or
 * other reserved addresses, nor one of the server's own endpoints; a private address only where the operator's
 * SANDBOX_EGRESS_ALLOWED names it as an address. Returns why not, or null.
 */
export function userWall (address: string, port: number, operatorAllowed: AllowRule[], own: Array<{ address: string, port: number }>): string | null {
  const kind = forbiddenAddress(address)
  if (kind && NEVER_FOR_USERS.has(kind)) return `${address} is a ${kind} address`
  const canonical = canonicalAddress(address)
  if (own.some(e => e.port === port && (e.address === '*' || e.address === canonical))) return `${address}:${port} is this server's own endpoint`
  if (kind && !operatorAllowed.some(r => r.ip && canonicalAddress(r.host) === canonical)) return `${address} is a ${kind} address`
  return null
}

export interface EgressDecision { ok: boolean, reason?: string, address?: string }

/**
 * Checks a destination against a sandbox's rules and resolves it to the address to connect to; `wall` (a user key's
 * sandbox) may refuse an address the rules allow.
 */
export async function decide (rules: AllowRule[], rawHost: string, port: number, resolve: (host: string) => Promise<string[]> = defaultResolve, wall?: (address: string, port: number) => string | null): Promise<EgressDecision> {
  const host = rawHost.toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '')
  if (!(port >= 1 && port <= 65535)) return { ok: false, reason: 'bad port' }
  const rule = rules.find(r => matches(r, host, port))
  if (!rule) return { ok: false, reason: 'not in the allow list' }
  let addresses: string[]
  try {
    addresses = isIP(host) ? [host] : await resolve(host)
  } catch {
    return { ok: false, reason: 'the name does not resolve' }
  }
  let reason = 'the name does not resolve'
  for (const address of addresses) {
    const walled = wall?.(address, port)
    if (walled) { reason = walled; continue }
    const forbidden = forbiddenAddress(address)
    if (!forbidden || (rule.ip && canonicalAddress(rule.host) === canonicalAddress(address))) return { ok: true, address }
    reason = `${address} is a ${forbidden} address`
  }
  return { ok: false, reason }
}

async function defaultResolve (host: string): Promise<string[]> {
  return (await lookup(host, { all: true })).map(a => a.address)
}

interface Log { info: (o: object, m: string) => void, warn: (o: object, m: string) => void }

export interface EgressOptions {
  /** Bytes one sandbox may move through the proxy, both ways, over its life. */
  maxBytes: number
  /** Connections one sandbox may have open at once. */
  maxConnections: number
  connectTimeoutMs?: number
  log: Log
  resolve?: (host: string) => Promise<string[]>
  /** The operator's SANDBOX_EGRESS_ALLOWED: a user key's sandbox reaches a private address only where it is named. */
  operatorAllowed?: AllowRule[]
  /** The server's own listeners, Redis and Docker endpoints: never reached from a user key's sandbox. */
  ownEndpoints?: Endpoint[]
  /** The group each sandbox's proxy socket is given (mode 0660), when agent directories are shared with one. */
  socketGroup?: number
  /** A template with the owner's secrets filled in, read at the moment of the request (`missing`: a name gone since). */
  secrets?: (owner: string, templates: string[]) => Promise<{ texts: string[], missing: string | null }>
  /** Terminates TLS for hosts with a transform (EGRESS_CA_DIR); without it, transforms reach plain HTTP only. */
  tls?: TlsInterceptor
  /** Told of each injection and each refusal, and of each package served from the cache or fetched into it (metrics). */
  observe?: (event: 'injected' | 'refused' | 'cache_hit' | 'cache_miss') => void
  /** Package downloads (wheels, sdists, npm tarballs) from these hosts are kept in `dir` and served from it again. */
  packageCache?: { dir: string, hosts: AllowRule[] }
}

/** What a package index serves that never changes under its URL: the archives, not the index pages. */
const ARTIFACT = /\.(whl|tar\.gz|tgz|zip|tar\.bz2|egg)$/
const MAX_CACHED = 512 * 1024 * 1024

/** Which sandbox a connection's requests come from, and where they go, once its TLS is ours to read. */
interface Intercepted { sandboxId: string, gate: Gate, host: string, port: number, address: string }

interface Gate { server: Server, rules: AllowRule[], trusted: boolean, bytes: number, open: Set<Socket>, sockets: Set<Socket>, path: string, owner: string, transforms: Transform[] }

/** The per-sandbox proxies of this process. */
export class EgressProxy {
  private readonly gates = new Map<string, Gate>()
  /** Reads the requests of intercepted TLS connections (one parser for every sandbox: the socket says whose). */
  private readonly inner: Server
  private readonly intercepted = new WeakMap<object, Intercepted>()
  /** Kept TLS connections to upstreams of intercepted hosts, one pool per host, port and address (at most 200 pools). */
  private readonly upstreams = new Map<string, HttpsAgent>()

  private upstreamAgent (host: string, port: number, address: string): HttpsAgent {
    const key = `${host}|${port}|${address}`
    let agent = this.upstreams.get(key)
    if (!agent) {
      if (this.upstreams.size >= 200) {
        const [oldest, old] = this.upstreams.entries().next().value!
        old.destroy()
        this.upstreams.delete(oldest)
      }
      agent = new HttpsAgent({ keepAlive: true, maxSockets: 32, maxFreeSockets: 4, timeout: 30_000, ca: this.opts.tls!.upstreamCa })
      this.upstreams.set(key, agent)
    }
    return agent
  }

  constructor (private readonly opts: EgressOptions) {
    if (opts.packageCache) mkdirSync(opts.packageCache.dir, { recursive: true, mode: 0o700 })
    this.inner = createServer({ keepAlive: true }, (req, res) => { this.relay(req, res).catch((err: Error) => this.failed(res, err)) })
    this.inner.on('clientError', (_err, socket: Socket) => { socket.destroy() })
  }

  /** The own endpoints as addresses (resolved once, when the first user gate asks). */
  private own: Promise<Array<{ address: string, port: number }>> | null = null

  private ownAddresses (): Promise<Array<{ address: string, port: number }>> {
    this.own ??= Promise.all((this.opts.ownEndpoints ?? []).map(async ({ host, port }) => {
      const bare = host.replace(/^\[|\]$/g, '')
      if (bare === '*' || bare === '' || forbiddenAddress(bare) === 'unspecified') return [{ address: '*', port }]
      const addresses = isIP(bare) ? [bare] : await (this.opts.resolve ?? defaultResolve)(bare).catch(() => [] as string[])
      return addresses.map(a => ({ address: canonicalAddress(a), port }))
    })).then(lists => lists.flat())
    return this.own
  }

  /**
   * Serves a sandbox's proxy socket in its agent directory (replacing a stale one). `trusted`: an admin key set its
   * policy, so its rules are all that limit it; otherwise the user wall applies too (see userWall).
   */
  async open (sandboxId: string, dir: string, rules: AllowRule[], trusted = false, inject?: { owner: string, transforms: Transform[] }): Promise<void> {
    await this.close(sandboxId)
    const path = join(dir, EGRESS_SOCKET)
    await unlink(path).catch(() => {})
    const server = createServer()
    const gate: Gate = { server, rules, trusted, bytes: 0, open: new Set(), sockets: new Set(), path, owner: inject?.owner ?? '', transforms: inject?.transforms ?? [] }
    server.on('connection', (socket: Socket) => {
      gate.sockets.add(socket)
      socket.on('close', () => gate.sockets.delete(socket))
    })
    server.on('connect', (req: IncomingMessage, client: Socket, head: Buffer) => { this.tunnel(sandboxId, gate, req, client, head).catch(() => client.destroy()) })
    server.on('request', (req: IncomingMessage, res: ServerResponse) => { this.forward(sandboxId, gate, req, res).catch((err: Error) => this.failed(res, err)) })
    server.on('clientError', (_err, socket: Socket) => { socket.destroy() })
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(path, () => { server.off('error', reject); resolve() }) })
    if (this.opts.socketGroup !== undefined) await shareWithGroup(path, this.opts.socketGroup, 0o660)
    this.gates.set(sandboxId, gate)
  }

  has (sandboxId: string): boolean { return this.gates.has(sandboxId) }

  /** Bytes a sandbox has moved, and its open connections. */
  usage (sandboxId: string): { bytes: number, connections: number } | null {
    const gate = this.gates.get(sandboxId)
    return gate ? { bytes: gate.bytes, connections: gate.open.size } : null
  }

  async close (sandboxId: string): Promise<void> {
    const gate = this.gates.get(sandboxId)
    if (!gate) return
    this.gates.delete(sandboxId)
    for (const s of gate.open) s.destroy()
    for (const s of gate.sockets) s.destroy() // tunnels too: the HTTP server no longer tracks a socket after CONNECT
    gate.server.close()
    await unlink(gate.path).catch(() => {})
  }

  async closeAll (): Promise<void> {
    for (const agent of this.upstreams.values()) agent.destroy()
    this.upstreams.clear()
    await Promise.all([...this.gates.keys()].map(id => this.close(id)))
  }

  /** A refusal, or the address to connect to; every decision is logged with the sandbox id. */
  private async admit (sandboxId: string, gate: Gate, host: string, port: number): Promise<EgressDecision> {
    let decision: EgressDecision
    if (gate.bytes >= this.opts.maxBytes) decision = { ok: false, reason: `the sandbox used its ${this.opts.maxBytes} bytes of egress` }
    else if (gate.open.size >= this.opts.maxConnections * 2) decision = { ok: false, reason: `the sandbox has ${this.opts.maxConnections} connections open` }
    else {
      const own = gate.trusted ? [] : await this.ownAddresses()
      const wall = gate.trusted ? undefined : (address: string, p: number) => userWall(address, p, this.opts.operatorAllowed ?? [], own)
      decision = await decide(gate.rules, host, port, this.opts.resolve, wall)
    }
    if (decision.ok) this.opts.log.info({ sandbox: sandboxId, host, port, address: decision.address }, 'egress allowed')
    else {
      this.opts.log.warn({ sandbox: sandboxId, host, port, reason: decision.reason }, 'egress refused')
      this.opts.observe?.('refused')
    }
    return decision
  }

  /**
   * Sets the headers a sandbox's transforms give a request to host:port/path (secrets read now, never logged);
   * returns why the request may not go (a secret gone, secrets off), or null.
   */
  private async inject (sandboxId: string, gate: Gate, host: string, port: number, path: string, headers: IncomingHttpHeaders): Promise<string | null> {
    const transforms = gate.transforms.filter(t => matches(t.rule, host, port) && pathUnder(path, t.path_prefix ?? '/'))
    for (const t of transforms) {
      // Every header this transform sets: its own, Basic auth, and the code's that carry placeholders, filled at once.
      const set: Array<[string, string]> = [
        ...(t.replace_placeholders ? Object.entries(headers).map(([name, v]) => [name, Array.isArray(v) ? v.join(', ') : v ?? ''] as [string, string]).filter(([, v]) => v.includes('{{secret:')) : []),
        ...Object.entries(t.headers ?? {}).map(([name, v]) => [name.toLowerCase(), v] as [string, string]),
        ...(t.basic_auth ? [['authorization:user', t.basic_auth.username], ['authorization:password', t.basic_auth.password]] as Array<[string, string]> : [])
      ]
      try {
        if (!this.opts.secrets) throw new Error('this server keeps no secrets')
        const { texts, missing } = await this.opts.secrets(gate.owner, set.map(([, template]) => template))
        if (missing) throw new Error(`the secret ${missing} no longer exists`)
        if (texts.some(text => /[\r\n\0]/.test(text))) throw new Error('a secret it names holds a line break or NUL, which no header may carry')
        const filled = new Map(set.map(([name], i) => [name, texts[i]!]))
        for (const [name, text] of filled) if (!name.startsWith('authorization:')) headers[name] = text
        if (t.basic_auth) headers.authorization = `Basic ${Buffer.from(`${filled.get('authorization:user')}:${filled.get('authorization:password')}`).toString('base64')}`
      } catch (err) {
        const reason = `the transform for ${t.host} cannot be applied: ${(err as Error).message}`
        this.opts.log.warn({ sandbox: sandboxId, host, port, rule: t.host, reason }, 'egress refused')
        this.opts.observe?.('refused')
        return reason
      }
      const names = [...Object.keys(t.headers ?? {}), ...(t.basic_auth ? ['authorization'] : []), ...(t.replace_placeholders ? ['(placeholders)'] : [])]
      this.opts.log.info({ sandbox: sandboxId, host, port, rule: t.host, path_prefix: t.path_prefix ?? '/', headers: names }, 'egress secret injected')
      this.opts.observe?.('injected')
    }
    return null
  }

  /** Counts a socket's bytes against the sandbox's budget, and ends it when the budget is spent. */
  private meter (gate: Gate, socket: Socket, peer: () => Socket | undefined): void {
    gate.open.add(socket)
    socket.on('data', (chunk: Buffer) => {
      gate.bytes += chunk.length
      if (gate.bytes > this.opts.maxBytes) { socket.destroy(); peer()?.destroy() }
    })
    socket.on('close', () => gate.open.delete(socket))
    socket.on('error', () => { peer()?.destroy() })
  }

  private upstream (address: string, port: number): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: address, port })
      socket.setTimeout(this.opts.connectTimeoutMs ?? 10_000, () => socket.destroy(new Error('connect timeout')))
      socket.once('connect', () => { socket.setTimeout(0); socket.off('error', reject); resolve(socket) })
      socket.once('error', reject)
    })
  }

  /** CONNECT host:port: a tunnel (HTTPS, or anything over TCP) to an allowed destination. */
  private async tunnel (sandboxId: string, gate: Gate, req: IncomingMessage, client: Socket, head: Buffer): Promise<void> {
    client.on('error', () => {})
    const target = /^\[?([^\]]+?)\]?:(\d+)$/.exec(req.url ?? '')
    const decision = target ? await this.admit(sandboxId, gate, target[1], Number(target[2])) : { ok: false, reason: 'not host:port' }
    if (!decision.ok) {
      client.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\negress refused: ${decision.reason}\n`)
      return
    }
    const host = target![1].toLowerCase()
    const port = Number(target![2])
    const cached = this.opts.tls && this.opts.packageCache?.hosts.some(r => matches(r, host, port))
    if (cached || gate.transforms.some(t => matches(t.rule, host, port))) return await this.intercept(sandboxId, gate, client, head, host, port, decision.address!)
    let server: Socket | undefined
    this.meter(gate, client, () => server)
    try {
      server = await this.upstream(decision.address!, Number(target![2]))
    } catch (err) {
      client.end(`HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n${(err as Error).message}\n`)
      return
    }
    this.meter(gate, server, () => client)
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length) server.write(head)
    server.pipe(client)
    client.pipe(server)
  }

  /** A CONNECT to a host whose requests change: its TLS is ours (a certificate of the deployment CA), its requests relayed. */
  private async intercept (sandboxId: string, gate: Gate, client: Socket, head: Buffer, host: string, port: number, address: string): Promise<void> {
    if (!this.opts.tls) {
      this.opts.log.warn({ sandbox: sandboxId, host, port, reason: 'no deployment CA' }, 'egress refused')
      client.end('HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\negress refused: requests to this host are changed, which over HTTPS needs the deployment CA (EGRESS_CA_DIR)\n')
      return
    }
    let context
    try {
      context = await this.opts.tls.contextFor(host)
    } catch (err) {
      client.end(`HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\nno certificate for ${host}: ${(err as Error).message}\n`)
      return
    }
    this.meter(gate, client, () => undefined)
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length) client.unshift(head)
    const secure = new TLSSocket(client, { isServer: true, secureContext: context })
    secure.on('error', () => client.destroy())
    this.intercepted.set(secure, { sandboxId, gate, host, port, address })
    this.inner.emit('connection', secure)
  }

  /** A request read from an intercepted connection: changed, then sent on over TLS that verifies the upstream. */
  private async relay (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ctx = this.intercepted.get(req.socket)
    if (!ctx || !this.gates.has(ctx.sandboxId)) { res.destroy(); return }
    const { sandboxId, gate, host, port, address } = ctx
    let path: string
    try {
      path = new URL(req.url ?? '/', 'https://x').pathname
    } catch {
      res.writeHead(400, { connection: 'close' }).end('egress refused: a request without a path\n')
      return
    }
    const headers: IncomingHttpHeaders = { ...req.headers, host: port === 443 ? host : `${host}:${port}` }
    delete headers['proxy-connection']
    delete headers['proxy-authorization']
    const refused = await this.inject(sandboxId, gate, host, port, path, headers)
    if (refused) {
      res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' }).end(`egress refused: ${refused}\n`)
      return
    }
    const key = this.cacheKey('https', host, port, req.method, path, req.url ?? '')
    if (key && await this.fromCache(sandboxId, key, res)) return
    const tls = this.opts.tls!
    const upstream = httpsRequest({
      host: address,
      port,
      method: req.method,
      path: req.url,
      headers,
      agent: this.upstreamAgent(host, port, address),
      ca: tls.upstreamCa,
      ...(isIP(host) ? {} : { servername: host }),
      checkServerIdentity: (_name, cert) => checkServerIdentity(host, cert),
      timeout: this.opts.connectTimeoutMs ?? 10_000
    }, (answer) => {
      answer.on('data', (chunk: Buffer) => {
        gate.bytes += chunk.length
        if (gate.bytes > this.opts.maxBytes) { answer.destroy(); res.destroy() }
      })
      // Redirects go back to the code as they are: a redirect elsewhere is a new request, which gets that host's rules.
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      if (key) this.keep(key, answer)
      answer.pipe(res)
    })
    upstream.on('timeout', () => upstream.destroy(new Error('timeout')))
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      const certificate = /CERT|SELF_SIGNED|altnames|certificate/i.test(`${err.code ?? ''} ${err.message}`)
      if (certificate) {
        this.opts.log.warn({ sandbox: sandboxId, host, port, reason: `the upstream certificate did not verify: ${err.message}` }, 'egress refused')
        this.opts.observe?.('refused')
      }
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' }).end(certificate ? `egress refused: the certificate of ${host} did not verify (${err.message}); nothing was sent\n` : `${err.message}\n`)
      else res.destroy()
    })
    req.pipe(upstream)
  }

  /** A request the proxy could not pass on (a header Node refuses, say): a 502 saying so, never a crash. */
  private failed (res: ServerResponse, err: Error): void {
    this.opts.log.warn({ err: err.message }, 'egress request failed')
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' }).end(`egress failed: ${err.message}\n`)
    else res.destroy()
  }

  /** The cache's name for a package download (null: not one the cache keeps). */
  private cacheKey (scheme: string, host: string, port: number, method: string | undefined, path: string, pathAndQuery: string): string | null {
    const cache = this.opts.packageCache
    if (!cache || method !== 'GET' || !ARTIFACT.test(path) || !cache.hosts.some(r => matches(r, host, port))) return null
    return createHash('sha256').update(`${scheme}://${host}:${port}${pathAndQuery}`).digest('hex')
  }

  /** Serves a kept download; false when there is none. */
  private async fromCache (sandboxId: string, key: string, res: ServerResponse): Promise<boolean> {
    const file = join(this.opts.packageCache!.dir, key)
    const size = await stat(file).then(s => s.size, () => null)
    if (size === null) return false
    this.opts.log.info({ sandbox: sandboxId, key, size }, 'package served from the cache')
    this.opts.observe?.('cache_hit')
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size })
    createReadStream(file).on('error', () => res.destroy()).pipe(res)
    return true
  }

  /** Keeps a download that answered 200 whole (written aside, renamed into place once complete). */
  private keep (key: string, answer: IncomingMessage): void {
    const length = Number(answer.headers['content-length'] ?? 0)
    if (answer.statusCode !== 200 || length > MAX_CACHED) return
    this.opts.observe?.('cache_miss')
    const dir = this.opts.packageCache!.dir
    const tmp = join(dir, `.${key}.${randomBytes(4).toString('hex')}`)
    const out = createWriteStream(tmp)
    let bytes = 0
    let ended = false
    answer.on('data', (chunk: Buffer) => { bytes += chunk.length; if (bytes > MAX_CACHED) out.destroy() })
    answer.on('end', () => { ended = true })
    answer.on('aborted', () => out.destroy())
    answer.pipe(out)
    out.on('error', () => {})
    out.on('close', () => {
      if (ended && bytes <= MAX_CACHED && (!length || bytes === length)) void rename(tmp, join(dir, key)).catch(() => unlink(tmp).catch(() => {}))
      else void unlink(tmp).catch(() => {})
    })
  }

  /** A plain HTTP request in absolute form (http://host/path): forwarded to an allowed destination. */
  private async forward (sandboxId: string, gate: Gate, req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL
    try {
      url = new URL(req.url ?? '')
      if (url.protocol !== 'http:') throw new Error('not http')
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' }).end('egress refused: send an absolute http:// URL, or CONNECT for https\n')
      return
    }
    const port = Number(url.port || 80)
    const decision = await this.admit(sandboxId, gate, url.hostname, port)
    if (!decision.ok) {
      res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' }).end(`egress refused: ${decision.reason}\n`)
      return
    }
    const headers: IncomingHttpHeaders = { ...req.headers, host: url.host, connection: 'close' }
    delete headers['proxy-connection']
    delete headers['proxy-authorization']
    const refused = await this.inject(sandboxId, gate, url.hostname.toLowerCase(), port, url.pathname, headers)
    if (refused) {
      res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' }).end(`egress refused: ${refused}\n`)
      return
    }
    const key = this.cacheKey('http', url.hostname.toLowerCase(), port, req.method, url.pathname, `${url.pathname}${url.search}`)
    if (key && await this.fromCache(sandboxId, key, res)) return
    this.meter(gate, req.socket, () => upstream.socket ?? undefined)
    const upstream = httpRequest({ host: decision.address, port, method: req.method, path: `${url.pathname}${url.search}`, headers, setHost: false, timeout: this.opts.connectTimeoutMs ?? 10_000 }, (answer) => {
      answer.on('data', (chunk: Buffer) => {
        gate.bytes += chunk.length
        if (gate.bytes > this.opts.maxBytes) { answer.destroy(); res.destroy() }
      })
      res.writeHead(answer.statusCode ?? 502, { ...answer.headers, connection: 'close' })
      if (key) this.keep(key, answer)
      answer.pipe(res)
    })
    upstream.on('timeout', () => upstream.destroy(new Error('timeout')))
    upstream.on('error', (err) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain', connection: 'close' }).end(`${err.message}\n`)
      else res.destroy()
    })
    req.pipe(upstream)
  }
}
