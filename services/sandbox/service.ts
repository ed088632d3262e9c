import { StatsPoller, type LiveStat, type StatsTarget } from './stats.js'
import { randomBytes } from 'node:crypto'
import { AgentGone } from './agent-client.js'
import { PROXY_URL_IN_SANDBOX, checkAllowed, parsePolicy, parseRule, parseTransforms, templatesOf, type AllowRule, type EgressProxy, type Transform } from './egress.js'
import type { Store } from '../store/types.js'
import type { Principal } from '../auth.js'
import { canAccess } from '../auth.js'
import { AppError, DependencyError, SandboxNotFound, SandboxesDisabled } from '../errors.js'
import type { SandboxPool, Logger } from './pool.js'
import { HostSet, hostUnavailable } from './host-set.js'
import { Capacity } from './capacity.js'
import { Recovery, type RecoveryState } from './recovery.js'
import type { SandboxHandle } from './sandbox.js'
import { PauseFailed, type PauseMode } from './containers.js'
import type { ImageProfile } from './image.js'
import { findLanguage, freshProcess, languagesOf, type LanguageSpec } from './languages.js'
import type { CreateSandbox, Execution, ExecutionEvent, Language, Sandbox, SandboxRecord, SnapshotRecord, VolumeMount } from '../../schemas/sandboxes.js'
import type { VolumeBind, Volumes } from './volumes.js'

/** What kernels of a sandbox with a network policy see: the relay to the egress proxy, and pip set to use it. */
const PROXY_ENV: Record<string, string> = {
  HTTP_PROXY: PROXY_URL_IN_SANDBOX,
  HTTPS_PROXY: PROXY_URL_IN_SANDBOX,
  http_proxy: PROXY_URL_IN_SANDBOX,
  https_proxy: PROXY_URL_IN_SANDBOX,
  NO_PROXY: 'localhost',
  no_proxy: 'localhost',
  PIP_BREAK_SYSTEM_PACKAGES: '1',
  PIP_USER: '1',
  PIP_DISABLE_PIP_VERSION_CHECK: '1',
  // The proxy refuses at once (403): pip's retries would only wait longer before saying so.
  PIP_RETRIES: '0'
}

/** The ways in: each execution is counted under the protocol that asked for it. */
export const PROTOCOLS = ['rest', 'chat', 'websocket', 'openai', 'librechat', 'mcp', 'jupyter', 'e2b', 'tools', 'terminal'] as const
export type Protocol = typeof PROTOCOLS[number]
export interface ExecutionObservation {
  language: string
  /** ok: the code ran (whatever it printed); error: it raised, timed out or was interrupted; failed: no result. */
  status: 'ok' | 'error' | 'failed'
  protocol: Protocol
  seconds: number
  sandbox_id: string
  /** The process's exit code (shell and the fresh-process languages). */
  exit_code?: number
  /** The code that ran (the audit trail keeps a short prefix of it, never more). */
  code: string
}

export interface SandboxServiceOptions {
  /** SANDBOX_ENABLED: false refuses every new sandbox (503 sandboxes_disabled), whichever protocol asks. */
  enabled?: boolean
  /** How often each Docker host is pinged (a host that does not answer is marked down). */
  hostCheckMs?: number
  /** The egress proxies of sandboxes with a network policy (needs the agent directories); without it, no network. */
  egress?: EgressProxy
  /** What user keys may allow (SANDBOX_EGRESS_ALLOWED). */
  egressAllowed?: AllowRule[]
  /** The allow list of sandboxes that ask for none (SANDBOX_NETWORK_DEFAULT). */
  networkDefault?: AllowRule[]
  maxPerKey: number
  defaultTimeoutS: number
  maxTimeoutS: number
  executionTimeoutMs: number
  maxExecutionTimeoutMs: number
  maxCodeSize: number
  outputLimit: number
  keepOnClose: boolean
  cpus: number
  memoryMb: number
  /** Sandboxes on this Docker host, all keys together. */
  maxSandboxes: number
  /** The sum of live sandboxes' memory limits may not pass this. */
  memoryBudgetMb: number
  /** Which languages the image has (GET /v1/languages). */
  imageProfile?: ImageProfile
  /** Told of every execution, whichever protocol asked for it (metrics). */
  observeExecution?: (e: ExecutionObservation) => void
  /** The audit trail: what happened to a sandbox (made, removed, its policy changed), told as it happens. */
  audit?: (action: string, sandbox: SandboxRecord, detail?: Record<string, string | number | boolean | null>) => void
  /** Containers re-adopted (or removed) at once during start-up's recovery. */
  recoveryConcurrency?: number
  reapIntervalMs?: number
  /**
   * Whether another server process still lives (with a shared store). Given, the reaper also removes containers
   * whose process died, and start-up leaves a live process's containers alone; without it, start-up removes every
   * container no stored sandbox references.
   */
  isLive?: (instance: string) => Promise<boolean>
  /** Told of each creation refused for a host-wide limit. */
  onRejected?: (reason: 'max_sandboxes' | 'memory_budget') => void
  /** What a sandbox idle past its timeout becomes unless it asked otherwise (SANDBOX_IDLE_ACTION). */
  idleAction?: 'remove' | 'pause'
  /** A paused sandbox is removed after this long paused (SANDBOX_PAUSED_TTL_S). */
  pausedTtlS?: number
  /** Told of each pause and resume (metrics). */
  observePause?: (e: PauseObservation) => void
  /** The keys' named volumes, which sandboxes may mount. */
  volumes?: Volumes
  /** Checks that each secret a policy's transforms name exists for the owner (400 otherwise). */
  checkSecrets?: (owner: string, templates: string[], field: string) => Promise<void>
  /** The deployment CA's certificate (EGRESS_CA_DIR): sandboxes with a network trust it, and HTTPS requests can be changed. */
  egressCa?: string
  /** What a policy's `packages` entry allows (SANDBOX_PACKAGE_INDEXES): the hosts, and pip's and npm's settings. */
  packages?: PackageIndexes
}

export interface PackageIndexes { rules: AllowRule[], env: Record<string, string> }

/** Reads SANDBOX_PACKAGE_INDEXES (pip=URL, npm=URL, files=URL; comma-separated) into rules and environment. */
export function parsePackageIndexes (text: string): PackageIndexes {
  const rules: AllowRule[] = []
  const env: Record<string, string> = {}
  for (const [i, item] of text.split(',').map(x => x.trim()).filter(Boolean).entries()) {
    const m = /^(pip|npm|files)=(https?:\/\/\S+)$/.exec(item)
    if (!m) throw new AppError(400, 'validation_error', `SANDBOX_PACKAGE_INDEXES[${i}]: "${item}" is not pip=URL, npm=URL or files=URL`)
    const url = new URL(m[2]!)
    rules.push(parseRule(url.port ? `${url.hostname}:${url.port}` : url.hostname, `SANDBOX_PACKAGE_INDEXES[${i}]`))
    // pip takes a plain-HTTP index (a mirror inside the deployment) only when told to trust its host.
    if (m[1] === 'pip' && !env.PIP_INDEX_URL) Object.assign(env, { PIP_INDEX_URL: url.href }, url.protocol === 'http:' ? { PIP_TRUSTED_HOST: url.hostname } : {})
    if (m[1] === 'npm' && !env.npm_config_registry) env.npm_config_registry = url.href
  }
  return { rules, env }
}

/** The `packages` preset of an allow list: where it is, and the policy without it. */
function withoutPreset (policy: unknown): { policy: unknown, packages: boolean } {
  if (policy === null || typeof policy !== 'object' || Array.isArray(policy) || !Array.isArray((policy as { allow?: unknown }).allow)) return { policy, packages: false }
  const allow = (policy as { allow: unknown[] }).allow
  if (!allow.includes('packages')) return { policy, packages: false }
  return { policy: { ...policy, allow: allow.filter(a => a !== 'packages') }, packages: true }
}

/** Where a sandbox finds the system CAs plus the deployment's (the agent writes it; see sandbox/agent.py op_egress). */
export const CA_BUNDLE_IN_SANDBOX = '/tmp/.egress-ca/ca-bundle.pem'
const CA_ENV: Record<string, string> = Object.fromEntries(['SSL_CERT_FILE', 'REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'PIP_CERT', 'NODE_EXTRA_CA_CERTS'].map(k => [k, CA_BUNDLE_IN_SANDBOX]))

/** Kept workspace files a new sandbox starts from: a volume on a host (absent: the first), and their language. */
export interface KeptFiles { volume: string, host?: string, language?: Language }

export interface PauseObservation { action: 'pause' | 'resume', mode: PauseMode, seconds: number, bytes: number }

const sandboxLost = (why: string) => new AppError(410, 'sandbox_lost', `${why}; its variables and files are lost`, 'sandbox_error')

/** Sandboxes as the API sees them: owned by a key, recorded in the store, backed by pool containers. */
export type { RecoveryState } from './recovery.js'

/** Creations under way in this process, counted against the limits before their records exist. */
/** Each Docker host's state, for /v1/ready, /v1/stats and the metrics. */
export interface HostStatus { name: string, status: 'up' | 'down', live: number, memory_used_mb: number, warm: number, creating: number, queued: number, paused: number, pause_mode: PauseMode | 'unknown', pause_note?: string }

export class SandboxService {
  private readonly live = new Map<string, SandboxHandle>()
  /** The records of the sandboxes in `live`. */
  private readonly records = new Map<string, SandboxRecord>()
  /** When each sandbox's use was last written to the store, and a pending write of a later one. */
  private readonly touches = new Map<string, { at: number, timer?: NodeJS.Timeout }>()
  private reaper: NodeJS.Timeout | null = null
  /** Pauses and resumes under way in this process, by sandbox (one at a time each). */
  private readonly transitions = new Map<string, Promise<unknown>>()
  /** Sandboxes resumed with their files alone: their next execution says state_lost. */
  private readonly freshKernels = new Set<string>()
  readonly pools: SandboxPool[]
  /** The first host's pool (the only one with one host). */
  readonly pool: SandboxPool
  private readonly hostSet: HostSet
  private readonly stats: StatsPoller
  private readonly cap: Capacity
  private readonly recoverer: Recovery

  constructor (pools: SandboxPool | SandboxPool[], private readonly store: Store, private readonly opts: SandboxServiceOptions, private readonly log: Logger) {
    this.pools = Array.isArray(pools) ? pools : [pools]
    this.pool = this.pools[0]
    this.hostSet = new HostSet(this.pools, log)
    this.stats = new StatsPoller(new Map(this.pools.map(p => [p.host, async (container: string) => await p.driver.stats(container)])))
    this.cap = new Capacity(this.hostSet, opts)
    this.recoverer = new Recovery(store, this.hostSet, {
      concurrency: opts.recoveryConcurrency ?? 8,
      ...(opts.isLive ? { isLive: opts.isLive } : {}),
      isTracked: (id) => this.live.has(id),
      track: (id, handle, record) => this.track(id, handle, record)
    }, log)
  }

  /** Start-up's re-adoption of stored sandboxes: its state and counts (/v1/ready, /v1/stats). */
  get recovery (): RecoveryState { return this.recoverer.state }

  /** Each host's state. */
  get hosts (): HostStatus[] {
    return this.pools.map(pool => {
      const used = this.cap.usedOn(pool.host)
      const stats = pool.stats
      return { name: pool.host, status: this.hostSet.isDown(pool.host) ? 'down' : 'up', live: used.live, memory_used_mb: used.memoryMb, warm: stats.warm, creating: stats.creating, queued: stats.queued, paused: used.paused, pause_mode: pool.containers.pauseInfo.mode, ...(pool.containers.pauseInfo.note ? { pause_note: pool.containers.pauseInfo.note } : {}) }
    })
  }

  /**
   * Starts the pool and the reaper; re-adopting the containers that stored sandboxes reference and removing orphans
   * runs in the background (however many containers a burst left, the server answers at once). `wait` waits for
   * both the recovery and the pool's first fill.
   */
  async start (wait = false): Promise<void> {
    await this.hostSet.check(true)
    if (this.hostSet.up().length) {
      this.recoverer.start()
    }
    if (wait) await this.recoverer.done
    await Promise.all(this.hostSet.up().map(p => p.start(wait)))
    // Idle sandboxes pause by default: each host finds out now how it pauses them (/v1/ready says so), not at the first.
    if (this.opts.idleAction === 'pause') for (const p of this.hostSet.up()) void p.containers.pauseMode()
    this.hostSet.watch(this.opts.hostCheckMs ?? 2000)
    this.reaper = setInterval(() => {
      this.sweep().catch(err => this.log.warn({ err: (err as Error).message }, 'reaper failed'))
    }, this.opts.reapIntervalMs ?? 5000)
    this.reaper.unref()
  }

  /** Resolves when start-up's recovery has finished (tests, benchmarks). */
  recovered (): Promise<void> { return this.recoverer.done }

  /** One reaper round: idle sandboxes, then (with a shared store) the containers of processes that died. */
  private async sweep (): Promise<void> {
    const records = await this.store.listSandboxes()
    this.cap.count(records)
    await this.reap(records)
    if (this.opts.isLive) await this.recoverer.removeOrphans(records)
  }

  private track (id: string, handle: SandboxHandle, record: SandboxRecord): void {
    this.live.set(id, handle)
    this.records.set(id, record)
    handle.agent.once('gone', () => { if (this.live.get(id) === handle) this.forget(id) })
    // Re-adopted (restart, another replica's sandbox): this process serves its egress proxy from now on.
    const { egress } = this.opts
    const dir = this.hostSet.pool(this.hostSet.hostOf(record))?.containers.agentDirOf(handle.containerId)
    if (record.network?.length && egress && dir && !egress.has(id)) {
      const rules = record.network.map((r, i) => parseRule(r, `network.allow[${i}]`))
      egress.open(id, dir, rules, record.network_trusted === true, { owner: record.owner, transforms: parseTransforms({ transforms: record.network_transforms ?? [] }, rules) })
        .catch((err: Error) => this.log.warn({ sandbox: id, err: err.message }, 'could not serve a sandbox\'s egress proxy'))
    }
  }

  private forget (id: string): void {
    void this.opts.egress?.close(id)
    this.live.delete(id)
    this.records.delete(id)
    clearTimeout(this.touches.get(id)?.timer)
    this.touches.delete(id)
  }

  /**
   * A new sandbox for `principal`, within the per-key limit (429), the host's sandbox count and memory budget (503),
   * and the start queue (503 when it cannot serve in time). An aborted `signal` (the client left) gives up.
   */
  async create (principal: Principal, spec: CreateSandbox, sessionId: string | null = null, signal?: AbortSignal, trustedNetwork = false, from?: KeptFiles): Promise<SandboxRecord> {
    if (this.opts.enabled === false) throw SandboxesDisabled()
    const timeoutS = spec.timeout_s ?? this.opts.defaultTimeoutS
    if (timeoutS > this.opts.maxTimeoutS) {
      throw new AppError(400, 'validation_error', `body/timeout_s must be at most ${this.opts.maxTimeoutS}`)
    }
    const rules = spec.network === undefined ? this.opts.networkDefault ?? [] : this.networkRules(principal, spec.network, trustedNetwork)
    const transforms = spec.network === undefined ? [] : await this.networkTransforms(principal, spec.network, rules)
    // An admin's policy (or the operator's default) is all that limits its sandbox; a user key's, and a session's
    // (whoever set it), also meets the wall.
    const networkTrusted = spec.network === undefined || principal.role === 'admin'
    if (spec.language) this.language(spec.language)
    const binds = await this.volumeBinds(principal.name, spec.volumes)
    const cpus = spec.resources?.cpus ?? this.opts.cpus
    const memoryMb = spec.resources?.memory_mb ?? this.opts.memoryMb
    // Started from kept files (a snapshot, a fork): on the host that keeps them, with their language unless one is given.
    const source = from ?? (spec.snapshot ? await this.snapshotFiles(principal, spec.snapshot) : undefined)
    const { release, pool } = this.cap.admit(principal.name, memoryMb, await this.store.listSandboxes(), source ? { pool: this.hostSet.poolOf(source) } : undefined)
    let handle: SandboxHandle
    try {
      // A sandbox with volumes starts a container of its own (a warm one has no mounts to give).
      handle = binds.length ? await pool.containers.create(binds) : await pool.acquire(signal)
    } catch (err) {
      release()
      throw err
    }
    try {
      const id = `sbx_${randomBytes(12).toString('base64url')}`
      await this.prepare(handle, id, pool, { cpus, memoryMb, rules, trusted: networkTrusted, env: spec.env ?? {}, owner: principal.name, transforms })
      if (source) await pool.containers.unpack(handle, source.volume)
      const now = new Date().toISOString()
      const record: SandboxRecord = {
        id,
        owner: principal.name,
        container_id: handle.containerId,
        language: spec.language ?? source?.language ?? 'python',
        created_at: now,
        last_used_at: now,
        timeout_s: timeoutS,
        cpus,
        memory_mb: memoryMb,
        metadata: spec.metadata ?? {},
        session_id: sessionId,
        ...(spec.on_timeout ? { on_timeout: spec.on_timeout } : {}),
        ...(spec.volumes?.length ? { volumes: spec.volumes } : {}),
        ...(rules.length ? { network: rules.map(r => r.text), network_trusted: networkTrusted } : {}),
        ...(transforms.length ? { network_transforms: transforms.map(({ rule: _rule, ...spec }) => spec) } : {}),
        ...(this.pools.length > 1 ? { host: pool.host } : {})
      }
      signal?.throwIfAborted()
      await this.store.saveSandbox(record)
      this.track(record.id, handle, record)
      this.cap.countOn(pool.host, 1, memoryMb)
      this.opts.audit?.('sandbox.create', record, { language: record.language, memory_mb: memoryMb, cpus, network: record.network?.join(' ').slice(0, 200) ?? 'none', source: record.metadata.source ?? null, host: pool.host })
      return record
    } catch (err) {
      handle.agent.close()
      await pool.containers.remove(handle.containerId).catch(() => {})
      throw err
    } finally {
      release()
    }
  }

  /** Where a new container mounts the key's volumes a sandbox asks for (404 for one it does not have). */
  private async volumeBinds (owner: string, mounts: VolumeMount[] | undefined): Promise<VolumeBind[]> {
    if (!mounts?.length) return []
    if (!this.opts.volumes) throw new AppError(400, 'volumes_unavailable', 'This server has no volumes')
    return await this.opts.volumes.binds(owner, mounts)
  }

  /** A key's snapshot's files, or a 404. */
  private async snapshotFiles (principal: Principal, name: string): Promise<KeptFiles> {
    const snapshot = await this.store.getNamed<SnapshotRecord>('snapshot', principal.name, name)
    if (!snapshot) throw new AppError(404, 'snapshot_not_found', `This key has no snapshot named ${name}`)
    return snapshot
  }

  /** The pool of a Docker host (absent: the first). */
  poolOn (host?: string): SandboxPool {
    return this.hostSet.poolOf({ host })
  }

  /** Gives a new container its sandbox's resources, egress proxy and environment (with the proxy's variables). */
  private async prepare (handle: SandboxHandle, id: string, pool: SandboxPool, setup: { cpus: number, memoryMb: number, rules: AllowRule[], trusted: boolean, env: Record<string, string>, owner: string, transforms: Transform[] }): Promise<void> {
    const { cpus, memoryMb, rules } = setup
    if (cpus !== this.opts.cpus || memoryMb !== this.opts.memoryMb) {
      await pool.driver.update(handle.containerId, { memoryMb, cpus }).catch((err: { statusCode?: number, json?: { message?: string } }) => {
        // Docker refuses what the host cannot give (more CPUs than it has): the client's 400, in our words.
        if (err.statusCode === 400) throw new AppError(400, 'validation_error', `body/resources: this Docker host cannot give ${cpus} CPUs and ${memoryMb} MB`)
        // gVisor's runsc cannot change a running container's limits (`runsc update` does not exist).
        if (this.pools[0].containers.runtime === 'runsc') throw new AppError(400, 'validation_error', `body/resources: under gVisor every sandbox has the server's ${this.opts.cpus} CPUs and ${this.opts.memoryMb} MB (SANDBOX_CPUS, SANDBOX_MEMORY_MB)`)
        throw err
      })
    }
    const env = rules.length ? { ...await this.openEgress(handle, id, pool, rules, setup), ...setup.env } : setup.env
    if (Object.keys(env).length) await handle.setEnv(env)
  }

  /** Serves a sandbox's egress proxy with these rules (replacing any it had), with the relay inside; the proxy's variables. */
  private async openEgress (handle: SandboxHandle, id: string, pool: SandboxPool, rules: AllowRule[], setup: { trusted: boolean, owner: string, transforms: Transform[] }): Promise<Record<string, string>> {
    const dir = pool.containers.agentDirOf(handle.containerId)
    if (!dir) throw new AppError(503, 'network_unavailable', `The Docker host ${pool.host} has no agent directories, so no egress proxy`, 'unavailable_error')
    await this.opts.egress!.open(id, dir, rules, setup.trusted, { owner: setup.owner, transforms: setup.transforms })
    await handle.enableEgress(this.opts.egressCa)
    const packages = this.opts.packages
    const indexes = packages?.rules.length && packages.rules.every(p => rules.some(r => r.text === p.text)) ? packages.env : {}
    return { ...PROXY_ENV, ...(this.opts.egressCa ? CA_ENV : {}), ...indexes }
  }

  /**
   * Gives a live sandbox a new network policy (the same checks as at creation, by the key asking): its proxy serves the
   * new rules at once (open connections are cut), `none` closes it. Processes and kernels started from now on get the
   * proxy's variables; running kernels keep their environment (restart one to give it the proxy).
   */
  async setNetwork (record: SandboxRecord, principal: Principal, network: unknown): Promise<SandboxRecord> {
    const rules = this.networkRules(principal, network)
    const transforms = await this.networkTransforms(principal, network, rules)
    const trusted = principal.role === 'admin'
    const handle = await this.handle(record)
    const fresh = await this.store.getSandbox(record.id)
    if (!fresh) throw SandboxNotFound()
    if (rules.length) {
      await handle.mergeEnv(await this.openEgress(handle, fresh.id, this.hostSet.poolOf(fresh), rules, { trusted, owner: fresh.owner, transforms }))
      fresh.network = rules.map(r => r.text)
      fresh.network_trusted = trusted
      if (transforms.length) fresh.network_transforms = transforms.map(({ rule: _rule, ...spec }) => spec)
      else delete fresh.network_transforms
    } else {
      await this.opts.egress?.close(fresh.id)
      await handle.mergeEnv({}, [...Object.keys(PROXY_ENV), ...Object.keys(CA_ENV), ...Object.keys(this.opts.packages?.env ?? {})])
      delete fresh.network
      delete fresh.network_trusted
      delete fresh.network_transforms
    }
    await this.store.saveSandbox(fresh)
    const cached = this.records.get(record.id)
    if (cached) {
      for (const key of ['network', 'network_trusted', 'network_transforms'] as const) delete cached[key]
      Object.assign(cached, { ...(fresh.network ? { network: fresh.network, network_trusted: fresh.network_trusted } : {}), ...(fresh.network_transforms ? { network_transforms: fresh.network_transforms } : {}) })
    }
    this.opts.audit?.('sandbox.policy', fresh, { network: fresh.network?.join(' ').slice(0, 200) ?? 'none', transforms: fresh.network_transforms?.length ?? 0 })
    return fresh
  }

  /**
   * The allow list a request asks for, within what the operator lets user keys allow (403 naming the host beyond it);
   * a 400 when this server cannot give sandboxes a network (agents over docker attach, or runsc without --host-uds).
   */
  networkRules (principal: Principal, raw: unknown, trusted = false): AllowRule[] {
    const { policy, packages } = withoutPreset(raw)
    const own = parsePolicy(policy)
    checkAllowed(own, this.opts.egressAllowed ?? [], trusted || principal.role === 'admin')
    if (packages && !this.opts.packages?.rules.length) throw new AppError(400, 'validation_error', 'network.allow: "packages" names the package indexes this server offers, and it offers none (SANDBOX_PACKAGE_INDEXES)')
    // The operator's own indexes: allowed whoever asks (the user wall still applies to the addresses they resolve to).
    const rules = packages ? [...own, ...this.opts.packages!.rules.filter(p => !own.some(r => r.text === p.text))] : own
    if (rules.length && !(this.opts.egress && this.pools.some(p => p.containers.hasAgentDirs))) {
      throw new AppError(400, 'network_unavailable', 'This server cannot give sandboxes a network: the egress proxy needs SANDBOX_AGENT_CHANNEL=socket (and, under runsc, runsc registered with --host-uds=all)')
    }
    return rules
  }

  /**
   * The transforms a policy asks for: each for a host of its allow list, each secret it names the key's (400 naming
   * the first that is not), and HTTPS ones only where the deployment CA is configured.
   */
  async networkTransforms (principal: Principal, policy: unknown, rules: AllowRule[]): Promise<Transform[]> {
    const transforms = parseTransforms(policy, rules)
    if (!transforms.length) return transforms
    const https = transforms.find(t => t.rule.port !== 80)
    if (https && !this.opts.egressCa) {
      throw new AppError(400, 'validation_error', `network.transforms: ${https.host} may be reached over HTTPS, and changing HTTPS requests needs the deployment CA (EGRESS_CA_DIR; npm run setup makes one); name the host as host:80 for plain HTTP only`)
    }
    if (!this.opts.checkSecrets) throw new AppError(400, 'validation_error', 'network.transforms: this server keeps no secrets (SECRETS_KEY)')
    await this.opts.checkSecrets(principal.name, templatesOf(transforms), 'network.transforms')
    return transforms
  }

  /**
   * Counts a creation against the per-key limit, the host's count and its memory budget (stored sandboxes plus the
   * creations under way here), or refuses it; the returned function gives the reservation back.
   */
  /** Sandboxes and the memory their limits take (read from the store at each creation and reaper round, kept since), plus creations under way. */
  get capacity (): { live: number, paused: number, max: number, memory_used_mb: number, memory_budget_mb: number, creating: number } {
    return this.cap.summary
  }

  /**
   * A sandbox's record. One this process is attached to comes from memory: its owner never changes, and if another
   * replica deletes it, that replica removes the container first, which ends the attachment (and the cache entry).
   */
  async get (id: string, principal: Principal, goneIs410 = false): Promise<SandboxRecord> {
    const cached = this.live.get(id)?.agent.alive ? this.records.get(id) : undefined
    const record = cached ?? await this.store.getSandbox(id)
    if (!record && goneIs410) {
      const owner = await this.store.removedSandboxOwner(id)
      if (owner !== null && canAccess(principal, owner)) throw sandboxLost('The sandbox was removed')
    }
    if (!record || !canAccess(principal, record.owner)) throw SandboxNotFound()
    return record
  }

  /** This key's sandboxes, newest first; with `all`, every key's (the caller checks the key may see them). */
  async list (principal: Principal, all = false): Promise<SandboxRecord[]> {
    const records = await this.store.listSandboxes(all ? undefined : principal.name)
    return records.sort((a, b) => b.created_at.localeCompare(a.created_at))
  }

  /** The live container of a sandbox, attaching to it when this process has not yet (restart, other replica). */
  async handle (record: SandboxRecord, inTransition = false): Promise<SandboxHandle> {
    const pool = this.hostSet.poolOf(record)
    // With several hosts, one that does not answer is not used even over a connection that still works (it cannot be
    // managed, and its sandboxes should fail alike from every replica); with one host, what still works is used.
    if (this.pools.length > 1 && this.hostSet.isDown(pool.host)) throw hostUnavailable(pool.host)
    const known = this.live.get(record.id)
    if (known?.agent.alive) return known
    // Not attached here: it may be being paused or resumed now, or have been since this record was read (its
    // container stopped at a checkpoint, or replaced): the stored record after any transition says which.
    if (!inTransition) await this.settled(record.id)
    const current = await this.store.getSandbox(record.id)
    if (!current) throw SandboxNotFound()
    if (!current.paused) delete record.paused
    Object.assign(record, current)
    if (current.paused) {
      const resumed = await this.resume(current)
      Object.assign(record, resumed.record)
      delete record.paused
      return resumed.handle
    }
    let handle: SandboxHandle | null
    try {
      handle = await pool.containers.adopt(record.container_id)
    } catch (err) {
      if (!(err instanceof DependencyError)) throw err
      this.hostSet.markDown(pool.host, err.message)
      throw hostUnavailable(pool.host)
    }
    if (!handle) {
      await this.store.deleteSandbox(record.id)
      this.log.warn({ sandbox: record.id, host: pool.host }, 'sandbox container was gone')
      throw new AppError(410, 'sandbox_lost', 'The sandbox is gone (its container stopped, or its host came back without it); its variables and files are lost', 'sandbox_error')
    }
    this.track(record.id, handle, record)
    return handle
  }

  /** The host directory where the sandbox's agent listens (its socket channel), if its host offers one. */
  agentDirOf (record: SandboxRecord): string | undefined {
    return this.hostSet.poolOf(record).containers.agentDirOf(record.container_id)
  }

  async destroy (record: SandboxRecord): Promise<void> {
    const handle = this.live.get(record.id)
    this.forget(record.id)
    this.freshKernels.delete(record.id)
    handle?.agent.close()
    // Container first: if Docker fails, the record stays and the reaper tries again, so nothing leaks.
    const { containers } = this.hostSet.poolOf(record)
    await containers.remove(record.container_id)
    if (record.paused?.volume) await containers.removeVolume(record.paused.volume)
    await this.store.deleteSandbox(record.id, record.owner)
    if (record.paused) this.cap.countOn(this.hostSet.hostOf(record), 0, 0, -1)
    else this.cap.countOn(this.hostSet.hostOf(record), -1, record.memory_mb)
    this.opts.audit?.('sandbox.delete', record, { paused: Boolean(record.paused) })
  }

  /** Resolves once no pause or resume of the sandbox is under way, here or (its lock in the store) elsewhere. */
  private async settled (id: string): Promise<void> {
    for (let pending = this.transitions.get(id); pending; pending = this.transitions.get(id)) await pending.catch(() => {})
    const until = Date.now() + 60_000
    while (Date.now() < until && await this.store.lockHolder(`sandbox-transition:${id}`)) await new Promise(resolve => setTimeout(resolve, 100))
  }

  /**
   * Runs one pause or resume of a sandbox at a time: in this process (a second caller waits for the first), and
   * across replicas (a lock in the store; waited for up to a minute).
   */
  private async transition<T> (id: string, fn: () => Promise<T>): Promise<T> {
    for (let pending = this.transitions.get(id); pending; pending = this.transitions.get(id)) await pending.catch(() => {})
    const run = (async () => {
      const name = `sandbox-transition:${id}`
      const owner = this.pool.instance
      const until = Date.now() + 60_000
      while (!await this.store.lock(name, owner, 120_000)) {
        if (Date.now() > until) throw new AppError(503, 'sandbox_busy', 'Another server is pausing or resuming this sandbox; try again', 'unavailable_error')
        await new Promise(resolve => setTimeout(resolve, 100))
      }
      try {
        return await fn()
      } finally {
        await this.store.unlock(name, owner).catch(() => {})
      }
    })()
    this.transitions.set(id, run)
    try {
      return await run
    } finally {
      if (this.transitions.get(id) === run) this.transitions.delete(id)
    }
  }

  /**
   * Pauses a sandbox: its memory and processes checkpointed where its host can (the container stops), else its
   * workspace files kept in a volume (the container goes). Either way it holds no memory or CPU until its next use.
   * Pausing a paused sandbox changes nothing. 409 while it runs code or when the checkpoint fails (it keeps running).
   */
  async pause (record: SandboxRecord): Promise<SandboxRecord> {
    return await this.transition(record.id, async () => {
      const fresh = await this.store.getSandbox(record.id)
      if (!fresh) throw SandboxNotFound()
      if (fresh.paused) return fresh
      const pool = this.hostSet.poolOf(fresh)
      const handle = await this.handle(fresh, true)
      if (handle.busy) throw new AppError(409, 'sandbox_busy', 'The sandbox is running code; pause it once the run ends')
      const mode = await pool.containers.pauseMode(fresh.restored === true)
      const began = Date.now()
      let volume: string | undefined
      let bytes = 0
      try {
        if (mode === 'memory') {
          await this.opts.egress?.close(fresh.id) // its host socket, like the agent's, may not cross a checkpoint
          await pool.containers.checkpoint(handle)
        } else {
          ;({ volume, bytes } = await pool.containers.pack(handle, 'paused', fresh.id))
        }
      } catch (err) {
        if (!(err instanceof PauseFailed)) throw err
        this.forget(fresh.id)
        if (!err.running) {
          await this.destroy(fresh).catch(() => {})
          throw sandboxLost(`The sandbox stopped while it was being paused (${err.message})`)
        }
        await this.handle(fresh, true).catch(() => {}) // attached again (its egress proxy too)
        throw new AppError(409, 'pause_failed', `The sandbox could not be paused (${err.message}); it keeps running`, 'sandbox_error')
      }
      this.forget(fresh.id)
      handle.agent.close()
      if (mode === 'files') await pool.containers.remove(handle.containerId)
      fresh.paused = { at: new Date().toISOString(), mode, ...(volume ? { volume } : {}) }
      await this.store.saveSandbox(fresh)
      this.cap.countOn(pool.host, -1, fresh.memory_mb, 1)
      this.opts.observePause?.({ action: 'pause', mode, seconds: (Date.now() - began) / 1000, bytes })
      this.log.info({ sandbox: fresh.id, mode, ms: Date.now() - began, bytes }, 'sandbox paused')
      return fresh
    })
  }

  /**
   * Resumes a paused sandbox on its own host, within its memory budget and sandbox count (503 when full): from its
   * checkpoint (variables and processes as they were), or a new container with its kept files (state_lost). A
   * sandbox that is not paused is returned as it is; one whose restore fails is removed (410 sandbox_lost).
   */
  async resume (record: SandboxRecord): Promise<{ record: SandboxRecord, handle: SandboxHandle, stateLost: boolean }> {
    return await this.transition(record.id, async () => {
      const fresh = await this.store.getSandbox(record.id)
      if (!fresh) throw sandboxLost('The sandbox was removed')
      if (!fresh.paused) return { record: fresh, handle: await this.handle(fresh, true), stateLost: false }
      const { mode, volume } = fresh.paused
      const pool = this.hostSet.poolOf(fresh)
      if (this.hostSet.isDown(pool.host)) throw hostUnavailable(pool.host)
      const { release } = this.cap.admit(fresh.owner, fresh.memory_mb, await this.store.listSandboxes(), { pool, resuming: true })
      const began = Date.now()
      let handle: SandboxHandle
      try {
        if (mode === 'memory') {
          handle = await pool.containers.restore(fresh.container_id).catch(async (err: Error) => {
            if (err instanceof DependencyError) throw err // its host is down: still paused there
            this.log.warn({ sandbox: fresh.id, err: err.message }, 'a paused sandbox could not be restored')
            await this.destroy(fresh).catch(() => {})
            throw sandboxLost(`The sandbox could not be restored from its checkpoint (${err.message})`)
          })
        } else {
          const binds = await this.volumeBinds(fresh.owner, fresh.volumes)
          handle = binds.length ? await pool.containers.create(binds) : await pool.acquire()
          try {
            await pool.containers.unpack(handle, volume!)
            // Its resources and network again; the environment given at creation is not kept (the store never holds it).
            const rules = (fresh.network ?? []).map((r, i) => parseRule(r, `network.allow[${i}]`))
            const transforms = parseTransforms({ transforms: fresh.network_transforms ?? [] }, rules)
            await this.prepare(handle, fresh.id, pool, { cpus: fresh.cpus, memoryMb: fresh.memory_mb, rules, trusted: fresh.network_trusted === true, env: {}, owner: fresh.owner, transforms })
          } catch (err) {
            handle.agent.close()
            await pool.containers.remove(handle.containerId).catch(() => {})
            throw err
          }
          fresh.container_id = handle.containerId
        }
        delete fresh.paused
        if (mode === 'memory') fresh.restored = true
        else delete fresh.restored
        fresh.last_used_at = new Date().toISOString()
        await this.store.saveSandbox(fresh)
        this.track(fresh.id, handle, fresh)
        this.cap.countOn(pool.host, 1, fresh.memory_mb, -1)
      } finally {
        release()
      }
      if (volume) await pool.containers.removeVolume(volume).catch((err: Error) => this.log.warn({ sandbox: fresh.id, err: err.message }, 'could not remove a resumed sandbox\'s volume'))
      if (mode === 'files') this.freshKernels.add(fresh.id)
      this.opts.observePause?.({ action: 'resume', mode, seconds: (Date.now() - began) / 1000, bytes: 0 })
      this.log.info({ sandbox: fresh.id, mode, ms: Date.now() - began }, 'sandbox resumed')
      return { record: fresh, handle, stateLost: mode === 'files' }
    })
  }

  /** Recounts sandboxes per host from the store (every replica's): what /v1/ready and /v1/stats show. */
  async refreshCounts (records?: SandboxRecord[]): Promise<void> {
    this.cap.count(records ?? await this.store.listSandboxes())
  }

  /**
   * Changes a sandbox's idle timeout (counted from now: its expiry moves either way; 400 over the maximum) and what
   * it becomes once idle (on_timeout).
   */
  /** A 400 for a change update() would refuse: checked before any part of a PATCH is applied. */
  checkUpdate (change: { timeout_s?: number }): void {
    if (change.timeout_s !== undefined && change.timeout_s > this.opts.maxTimeoutS) {
      throw new AppError(400, 'validation_error', `body/timeout_s must be at most ${this.opts.maxTimeoutS}`)
    }
  }

  async update (record: SandboxRecord, change: { timeout_s?: number, on_timeout?: 'remove' | 'pause' }): Promise<SandboxRecord> {
    this.checkUpdate(change)
    const fresh = await this.store.getSandbox(record.id)
    if (!fresh) throw SandboxNotFound()
    if (change.timeout_s !== undefined) {
      fresh.timeout_s = change.timeout_s
      fresh.last_used_at = new Date().toISOString()
    }
    if (change.on_timeout) fresh.on_timeout = change.on_timeout
    await this.store.saveSandbox(fresh)
    const cached = this.records.get(record.id)
    if (cached) Object.assign(cached, { timeout_s: fresh.timeout_s, last_used_at: fresh.last_used_at, on_timeout: fresh.on_timeout })
    return fresh
  }

  /**
   * Records a use. Busy sandboxes would write on every execution, so writes to the store are spaced by a tenth of the
   * idle timeout (at most 1 s); a use in between is written when that time is up, so the store is never later than that.
   */
  async touch (record: SandboxRecord): Promise<void> {
    const now = Date.now()
    record.last_used_at = new Date(now).toISOString()
    const gap = Math.min(1000, record.timeout_s * 100)
    const last = this.touches.get(record.id)
    if (last && now - last.at < gap) {
      last.timer ??= setTimeout(() => {
        last.timer = undefined
        last.at = Date.now()
        this.store.touchSandbox(record.id, record.last_used_at).catch(() => {})
      }, gap - (now - last.at))
      return
    }
    this.touches.set(record.id, { at: now })
    await this.store.touchSandbox(record.id, record.last_used_at)
  }

  /** A language this server's image runs, or a 400 naming those it does. */
  language (name: string): LanguageSpec {
    const spec = findLanguage(name)
    if (!spec || !this.languages().includes(spec)) {
      throw new AppError(400, 'unsupported_language', `Unsupported language: ${name} (this server runs ${this.languages().map(l => l.id).join(', ')})`)
    }
    return spec
  }

  /** The languages of this server's image profile. */
  languages (): LanguageSpec[] {
    return languagesOf(this.opts.imageProfile ?? 'full')
  }

  /** The default per-execution timeout, changed at run time by an admin. */
  setExecutionTimeout (ms: number): void {
    this.opts.executionTimeoutMs = ms
  }

  timeoutFor (requested: number | undefined): number {
    const ms = requested ?? this.opts.executionTimeoutMs
    if (ms > this.opts.maxExecutionTimeoutMs) {
      throw new AppError(400, 'validation_error', `body/timeout_ms must be at most ${this.opts.maxExecutionTimeoutMs}`)
    }
    return ms
  }

  /**
   * Runs code in a sandbox: every protocol's executions come through here, and each is observed once (by language,
   * outcome and the protocol that asked, `via`; `label` names the language when the code is a wrapper around it).
   */
  async execute (record: SandboxRecord, req: { code: string, language?: Language, timeout_ms?: number, kernel?: string }, onEvent?: (e: ExecutionEvent) => void, context: { via: Protocol, label?: string } = { via: 'rest' }): Promise<Execution> {
    if (Buffer.byteLength(req.code) > this.opts.maxCodeSize) {
      throw new AppError(413, 'code_too_large', `Code is limited to ${this.opts.maxCodeSize} bytes`)
    }
    const timeoutMs = this.timeoutFor(req.timeout_ms)
    const language = req.language ?? record.language
    const spec = this.language(language)
    const handle = await this.handle(record)
    // Touched when the run ends, and meanwhile every half idle timeout, so that no reaper (of any replica) takes it.
    const renewal = setInterval(() => { this.touch(record).catch(() => {}) }, Math.max(1000, record.timeout_s * 500))
    const began = Date.now()
    const observe = (status: ExecutionObservation['status'], exitCode?: number) =>
      this.opts.observeExecution?.({ language: context.label ?? language, status, protocol: context.via, seconds: (Date.now() - began) / 1000, sandbox_id: record.id, code: req.code, ...(exitCode !== undefined ? { exit_code: exitCode } : {}) })
    try {
      const result = await handle.execute({
        kernel: spec.kernel ?? 'shell',
        language,
        code: spec.kernel ? req.code : freshProcess(spec, req.code),
        timeoutMs,
        maxOutputBytes: this.opts.outputLimit,
        ...(req.kernel ? { named: req.kernel } : {})
      }, onEvent)
      observe(result.error ? 'error' : 'ok', result.exit_code)
      // The first run after a resume that kept only the files: its kernel started afresh.
      if (this.freshKernels.delete(record.id)) result.state_lost = true
      return { sandbox_id: record.id, ...result }
    } catch (err) {
      observe('failed')
      if (err instanceof AgentGone) throw await this.lost(record)
      throw err
    } finally {
      clearInterval(renewal)
      await this.touch(record).catch(() => {})
    }
  }

  /**
   * The sandbox's container stopped under a running execution (out of memory under gVisor, where the whole sandbox is
   * one process to the host; killed by hand; Docker restarted): its record goes, and the caller learns why.
   */
  private async lost (record: SandboxRecord): Promise<AppError> {
    // The agent's stream can end a moment before Docker records the container's end: wait for it (3 s at most).
    const pool = this.hostSet.poolOf(record)
    let end = await pool.containers.endState(record.container_id)
    for (let i = 0; i < 20 && !end; i++) {
      await new Promise(resolve => setTimeout(resolve, 150))
      end = await pool.containers.endState(record.container_id)
    }
    await this.destroy(record).catch((err: Error) => this.log.warn({ sandbox: record.id, err: err.message }, 'could not remove a stopped sandbox'))
    const oom = end?.oomKilled === true
    this.log.warn({ sandbox: record.id, oom, exit_code: end?.exitCode }, 'a sandbox stopped during an execution')
    return new AppError(410, 'sandbox_lost', oom
      ? `The sandbox ran out of memory (its limit is ${record.memory_mb} MB) and was stopped; its variables and files are gone`
      : 'The sandbox stopped during the execution; its variables and files are gone', 'sandbox_error', { reason: oom ? 'out_of_memory' : 'stopped' })
  }

  view (record: SandboxRecord): Sandbox {
    const { paused } = record
    const expires = paused ? Date.parse(paused.at) + this.pausedTtlS * 1000 : Date.parse(record.last_used_at) + record.timeout_s * 1000
    return {
      id: record.id,
      object: 'sandbox',
      owner: record.owner,
      language: record.language,
      status: paused ? 'paused' : this.live.get(record.id)?.busy ? 'busy' : 'ready',
      created_at: record.created_at,
      last_used_at: record.last_used_at,
      expires_at: new Date(expires).toISOString(),
      timeout_s: record.timeout_s,
      resources: { cpus: record.cpus, memory_mb: record.memory_mb },
      metadata: record.metadata,
      session_id: record.session_id,
      network: record.network?.length ? { allow: record.network, ...(record.network_transforms?.length ? { transforms: record.network_transforms } : {}) } : 'none',
      ...(record.volumes?.length ? { volumes: record.volumes } : {}),
      on_timeout: this.idleActionOf(record),
      ...(paused ? { paused_at: paused.at, pause_mode: paused.mode } : {})
    }
  }

  private idleActionOf (record: SandboxRecord): 'remove' | 'pause' {
    return record.on_timeout ?? this.opts.idleAction ?? 'remove'
  }

  private get pausedTtlS (): number { return this.opts.pausedTtlS ?? 86400 }

  /**
   * Removes, or pauses (on_timeout), the sandboxes of `records` idle past their timeout (never one running code),
   * and removes those paused longer than SANDBOX_PAUSED_TTL_S.
   */
  private async reap (records: SandboxRecord[]): Promise<void> {
    const now = Date.now()
    for (const record of records) {
      const warn = (what: string) => (err: Error) => this.log.warn({ sandbox: record.id, err: err.message }, `could not ${what}`)
      if (record.paused) {
        if (now - Date.parse(record.paused.at) < this.pausedTtlS * 1000) continue
        await this.destroy(record).then(() => this.log.info({ sandbox: record.id }, 'paused sandbox removed after SANDBOX_PAUSED_TTL_S'), warn('remove a paused sandbox'))
        continue
      }
      const idleMs = now - Date.parse(record.last_used_at)
      if (idleMs < record.timeout_s * 1000 || this.live.get(record.id)?.busy) continue
      if (this.idleActionOf(record) === 'pause') {
        await this.pause(record).catch(warn('pause an idle sandbox'))
        continue
      }
      await this.destroy(record).then(() => this.log.info({ sandbox: record.id, idleMs }, 'idle sandbox removed'), warn('remove an idle sandbox'))
    }
  }

  get counts (): { live: number, busy: number } {
    let busy = 0
    for (const handle of this.live.values()) if (handle.busy) busy++
    return { live: this.live.size, busy }
  }

  /** Detaches from (keep) or removes every sandbox this process knows, then empties the warm pool. */
  /**
   * The live CPU and memory of these sandboxes (the paused hold none), from one poller per host: the readings so far,
   * and the pollers kept going for a minute more.
   */
  liveStats (records: SandboxRecord[]): Map<string, LiveStat> {
    const targets = new Map<string, StatsTarget[]>()
    for (const r of records) {
      if (r.paused) continue
      const host = this.hostSet.hostOf(r)
      targets.set(host, [...targets.get(host) ?? [], { sandbox: r.id, container: r.container_id }])
    }
    return this.stats.read(targets)
  }

  /** Engine stats pollers running now (one per host at most, whatever the number of monitors open). */
  get statsPollers (): number { return this.stats.running }

  async close (): Promise<void> {
    this.stats.close()
    if (this.reaper) clearInterval(this.reaper)
    this.hostSet.stop()
    await this.opts.egress?.closeAll()
    await this.recoverer.done
    const keep = this.opts.keepOnClose && this.store.kind === 'redis'
    for (const [id, handle] of [...this.live]) {
      const pool = this.hostSet.pool(this.hostSet.hostOf(this.records.get(id) ?? {})) ?? this.pool // read before close() forgets it
      handle.agent.close()
      if (!keep) {
        await pool.containers.remove(handle.containerId).catch(() => {})
        await this.store.deleteSandbox(id).catch(() => {})
      }
    }
    for (const id of [...this.live.keys()]) this.forget(id)
    await Promise.all(this.pools.map(p => p.close()))
  }
}
