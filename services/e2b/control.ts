// E2B's control plane (spec/openapi.yml: /v2/sandboxes, /sandboxes/{id}/...) over our SandboxService: the same keys,
// limits, egress wall and pauses as every other protocol. The ids E2B's clients see are our ids in hex, since E2B puts
// them in host names (`<port>-<id>.<domain>`, which is also our PORT_HOST_DOMAIN label), and host names ignore case.
import type { Principal } from '../auth.js'
import { AppError } from '../errors.js'
import type { SandboxService } from '../sandbox/service.js'
import type { Workspace } from '../sandbox/workspace.js'
import type { CreateSandbox, NetworkPolicy, SandboxRecord } from '../../schemas/sandboxes.js'

/** The envd version we answer as: the SDK enables features by it (stdin close 0.5.2, octet-stream uploads 0.5.7). */
export const ENVD_VERSION = '0.5.7'
/** The templates that mean "this server's image" (E2B's base and code-interpreter defaults). */
const DEFAULT_TEMPLATES = new Set(['base', 'code-interpreter-v1', 'code-interpreter', 'default'])
const MAX_PAGE = 100

export const toE2bId = (id: string) => Buffer.from(id).toString('hex')

/** Our id from an E2B one (hex), or our own id given as is; null for neither. */
export function fromE2bId (id: string): string | null {
  if (id.startsWith('sbx_') && id.length <= 64) return id
  if (!/^(?:[0-9a-f]{2}){1,32}$/.test(id)) return null
  const ours = Buffer.from(id, 'hex').toString()
  return ours.startsWith('sbx_') ? ours : null
}

const notFound = (id: string) => new AppError(404, 'sandbox_not_found', `Sandbox ${id} not found`)

export interface E2bCreate {
  templateID?: string
  timeout?: number
  metadata?: Record<string, string>
  envVars?: Record<string, string>
  autoPause?: boolean
  autoPauseMemory?: boolean
  autoResume?: { enabled?: boolean }
  allow_internet_access?: boolean
  network?: { allowOut?: string[], denyOut?: string[], rules?: unknown, egressProxy?: unknown, allowPublicTraffic?: boolean, maskRequestHost?: string, httpsPorts?: unknown }
  volumeMounts?: Array<{ name: string, path: string }>
  mcp?: unknown
  iam?: unknown
  secure?: boolean
}

/** What E2B's API says of a sandbox (ListedSandbox / SandboxDetail). */
export interface E2bSandbox {
  sandboxID: string
  templateID: string
  clientID: string
  alias?: string
  startedAt: string
  endAt: string
  cpuCount: number
  memoryMB: number
  diskSizeMB: number
  metadata: Record<string, string>
  state: 'running' | 'paused'
  envdVersion: string
  volumeMounts: Array<{ name: string, path: string }>
  envdAccessToken?: string
  domain?: string | null
  allowInternetAccess?: boolean
  network?: { allowOut?: string[], denyOut?: string[] }
  lifecycle?: { onTimeout: 'kill' | 'pause', autoResume: boolean }
}

/** What a create or connect answers: enough for the SDK to reach the data plane. */
export interface E2bCreated {
  sandboxID: string
  templateID: string
  clientID: string
  envdVersion: string
  envdAccessToken: string
  trafficAccessToken: string
  domain: string | null
}

export interface E2bControlOptions {
  /** PORT_HOST_DOMAIN: where `sandbox.getHost(port)` leads (null: no host routing). */
  domain: string | null
}

export class E2bControl {
  constructor (private readonly sandboxes: SandboxService, private readonly workspace: Workspace, private readonly opts: E2bControlOptions) {}

  /** A sandbox of this key by its E2B id; 404 in E2B's words for any other. */
  async record (principal: Principal, e2bId: string): Promise<SandboxRecord> {
    const id = fromE2bId(e2bId)
    if (!id) throw notFound(e2bId)
    try {
      return await this.sandboxes.get(id, principal)
    } catch (err) {
      if (err instanceof AppError && err.statusCode === 404) throw notFound(e2bId)
      throw err
    }
  }

  async create (principal: Principal, body: E2bCreate, signal?: AbortSignal): Promise<E2bCreated> {
    const template = body.templateID ?? 'base'
    const network = this.network(body)
    const spec: CreateSandbox = {
      ...(body.timeout !== undefined ? { timeout_s: body.timeout } : {}),
      ...(body.metadata ? { metadata: body.metadata } : {}),
      ...(body.envVars && Object.keys(body.envVars).length ? { env: body.envVars } : {}),
      ...(body.autoPause !== undefined ? { on_timeout: body.autoPause ? 'pause' as const : 'remove' as const } : {}),
      ...(network ? { network } : {}),
      ...(body.volumeMounts?.length ? { volumes: body.volumeMounts.map(v => ({ name: v.name, path: v.path })) } : {})
    }
    if (body.mcp) throw new AppError(400, 'unsupported', 'MCP gateways inside sandboxes (the `mcp` option) are not offered by this server; its own MCP endpoint is /mcp')
    if (body.iam) throw new AppError(400, 'unsupported', 'Workload identity tokens (the `iam` option) are not offered by this server')
    if (!DEFAULT_TEMPLATES.has(template)) {
      // A template that is not the image is a snapshot of this key (Sandbox.create(snapshotName)).
      if (!/^[a-z0-9][a-z0-9_.-]{0,62}$/.test(template)) throw new AppError(404, 'template_not_found', `Template ${template} not found: this server offers "base" (its image) and the key's snapshots`)
      spec.snapshot = template
    }
    let record: SandboxRecord
    try {
      record = await this.sandboxes.create(principal, spec, null, signal)
    } catch (err) {
      if (err instanceof AppError && err.code === 'snapshot_not_found') throw new AppError(404, 'template_not_found', `Template ${template} not found: this server offers "base" (its image) and the key's snapshots`)
      throw err
    }
    return await this.created(record, template)
  }

  /** E2B's network options as our egress policy: an allow list, and nothing else (no network is our default). */
  private network (body: E2bCreate): NetworkPolicy | null {
    const net = body.network ?? {}
    const unsupported = (['rules', 'egressProxy', 'maskRequestHost', 'httpsPorts'] as const).filter(k => net[k] !== undefined)
    if (unsupported.length) throw new AppError(400, 'unsupported', `network.${unsupported[0]} is not offered by this server: sandboxes reach only the hosts in network.allowOut, through its egress proxy`)
    const deny = net.denyOut ?? []
    if (deny.some(d => d !== '0.0.0.0/0')) throw new AppError(400, 'unsupported', 'network.denyOut other than 0.0.0.0/0 is not offered by this server: every host not in network.allowOut is refused already')
    if (net.allowOut?.length) return { allow: net.allowOut }
    if (body.allow_internet_access === true) throw new AppError(400, 'unsupported', 'Unrestricted internet access is not offered by this server: name the hosts in network.allowOut')
    return body.allow_internet_access === false ? 'none' : null
  }

  private async created (record: SandboxRecord, template = 'base'): Promise<E2bCreated> {
    const token = await this.workspace.accessToken(record)
    return { sandboxID: toE2bId(record.id), templateID: template, clientID: 'interpreter-server', envdVersion: ENVD_VERSION, envdAccessToken: token, trafficAccessToken: token, domain: this.opts.domain }
  }

  /** E2B's timeout is the sandbox's life from now; ours is how long it may stay idle (a use renews it): `endAt` says when. */
  info (record: SandboxRecord): E2bSandbox {
    const view = this.sandboxes.view(record)
    return {
      sandboxID: toE2bId(record.id),
      templateID: 'base',
      clientID: 'interpreter-server',
      startedAt: record.created_at,
      endAt: view.expires_at,
      cpuCount: Math.max(1, Math.ceil(record.cpus)),
      memoryMB: record.memory_mb,
      diskSizeMB: 0,
      metadata: record.metadata,
      state: record.paused ? 'paused' : 'running',
      envdVersion: ENVD_VERSION,
      volumeMounts: (record.volumes ?? []).map(v => ({ name: v.name, path: v.path })),
      domain: this.opts.domain,
      allowInternetAccess: false,
      ...(record.network?.length ? { network: { allowOut: record.network, denyOut: ['0.0.0.0/0'] } } : {}),
      lifecycle: { onTimeout: view.on_timeout === 'pause' ? 'pause' : 'kill', autoResume: view.on_timeout === 'pause' }
    }
  }

  /**
   * This key's sandboxes, newest first, filtered by metadata (all pairs must match) and state, a page at a time:
   * `nextToken` is where the next page starts.
   */
  async list (principal: Principal, query: { metadata?: Record<string, string>, state?: string[], limit?: number, nextToken?: string }): Promise<{ items: E2bSandbox[], nextToken: string | null }> {
    const limit = Math.min(query.limit ?? MAX_PAGE, MAX_PAGE)
    const decoded = query.nextToken !== undefined ? Buffer.from(query.nextToken, 'base64url').toString() : '0'
    if (!/^\d{1,9}$/.test(decoded) || (query.nextToken !== undefined && Buffer.from(decoded).toString('base64url') !== query.nextToken)) {
      throw new AppError(400, 'validation_error', 'nextToken is not one this server gave')
    }
    const start = Number(decoded)
    const wanted = new Set(query.state?.length ? query.state : ['running', 'paused'])
    const unknown = [...wanted].filter(s => s !== 'running' && s !== 'paused')
    if (unknown.length) throw new AppError(400, 'validation_error', `state must be running or paused (got ${unknown[0]})`)
    const all = (await this.sandboxes.list(principal)).filter(r =>
      wanted.has(r.paused ? 'paused' : 'running') &&
      Object.entries(query.metadata ?? {}).every(([k, v]) => r.metadata[k] === v))
    const page = all.slice(start, start + limit)
    return { items: page.map(r => this.info(r)), nextToken: start + limit < all.length ? Buffer.from(String(start + limit)).toString('base64url') : null }
  }

  async kill (record: SandboxRecord): Promise<void> {
    await this.sandboxes.destroy(record)
  }

  async setTimeout (record: SandboxRecord, seconds: number): Promise<void> {
    await this.sandboxes.update(record, { timeout_s: seconds })
  }

  /** Pauses; false when it was paused already (E2B answers 409 then). */
  async pause (record: SandboxRecord): Promise<boolean> {
    if (record.paused) return false
    await this.sandboxes.pause(record)
    return true
  }

  /** Reattaches (resuming a paused sandbox, renewing its timeout when given); true when it was paused. */
  async connect (record: SandboxRecord, timeout?: number): Promise<{ created: E2bCreated, resumed: boolean }> {
    const resumed = record.paused !== undefined
    let current = record
    if (resumed) current = (await this.sandboxes.resume(record)).record
    if (timeout !== undefined) current = await this.sandboxes.update(current, { timeout_s: timeout })
    return { created: await this.created(current), resumed }
  }

  /** The sandbox a data-plane request names, if its token is that sandbox's; the principal it acts as. */
  async authorize (e2bId: string, token: string | undefined): Promise<{ record: SandboxRecord, principal: Principal }> {
    const id = fromE2bId(e2bId)
    if (!id) throw new AppError(502, 'sandbox_not_found', `The sandbox ${e2bId} was not found`)
    let record: SandboxRecord
    try {
      record = await this.sandboxes.get(id, { name: 'e2b-data-plane', role: 'admin' })
    } catch (err) {
      // E2B's edge answers 502 for a sandbox that is gone: the SDK reads it as "not running" (isRunning() is false).
      if (err instanceof AppError && err.statusCode === 404) throw new AppError(502, 'sandbox_not_found', `The sandbox ${e2bId} was not found`)
      throw err
    }
    if (!await this.workspace.isAccessToken(record, token)) {
      throw new AppError(401, 'invalid_access_token', 'The sandbox access token (X-Access-Token) is missing or not this sandbox\'s')
    }
    return { record, principal: { name: record.owner, role: 'user' } }
  }
}
