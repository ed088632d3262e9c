import { randomBytes } from 'node:crypto'
import { AgentGone } from './agent-client.js'
import { PROXY_URL_IN_SANDBOX, checkAllowed, parsePolicy, parseRule, type AllowRule, type EgressProxy } from './egress.js'
import type { Store } from '../store/types.js'
import type { Principal } from '../auth.js'
import { canAccess } from '../auth.js'
import { AppError, CapacityExhausted, DependencyError, SandboxNotFound, SandboxesDisabled } from '../errors.js'
import type { SandboxPool, Logger } from './pool.js'
import type { SandboxHandle } from './sandbox.js'
import type { ImageProfile } from './image.js'
import { findLanguage, freshProcess, languagesOf, type LanguageSpec } from './languages.js'
import type { CreateSandbox, Execution, ExecutionEvent, Language, Sandbox, SandboxRecord } from '../../schemas/sandboxes.js'

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
  PIP_DISABLE_PIP_VERSION_CHECK: '1'
}

/** The ways in: each execution is counted under the protocol that asked for it. */
export const PROTOCOLS = ['rest', 'chat', 'websocket', 'openai', 'librechat', 'mcp', 'jupyter'] as const
export type Protocol = typeof PROTOCOLS[number]
export interface ExecutionObservation {
  language: string
  /** ok: the code ran (whatever it printed); error: it raised, timed out or was interrupted; failed: no result. */
  status: 'ok' | 'error' | 'failed'
  protocol: Protocol
  seconds: number
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
}

/** Sandboxes as the API sees them: owned by a key, recorded in the store, backed by pool containers. */
export interface RecoveryState { state: 'pending' | 'running' | 'done' | 'failed', total: number, adopted: number, removed: number, orphans_removed: number }

/** Creations under way in this process, counted against the limits before their records exist. */
interface Reserved { count: number, memoryMb: number, byOwner: Map<string, number>, byHost: Map<string, { count: number, memoryMb: number }> }

/** Each Docker host's state, for /v1/ready, /v1/stats and the metrics. */
export interface HostStatus { name: string, status: 'up' | 'down', live: number, memory_used_mb: number, warm: number, creating: number, queued: number }

function hostUnavailable (host: string): AppError {
  return new AppError(503, 'sandbox_host_unavailable', `The Docker host of this sandbox (${host}) cannot be reached; its sandboxes come back when it does`, 'unavailable_error', { retry_after: 5 })
}

export class SandboxService {
  private readonly live = new Map<string, SandboxHandle>()
  /** The records of the sandboxes in `live`. */
  private readonly records = new Map<string, SandboxRecord>()
  /** When each sandbox's use was last written to the store, and a pending write of a later one. */
  private readonly touches = new Map<string, { at: number, timer?: NodeJS.Timeout }>()
  private reaper: NodeJS.Timeout | null = null
  private readonly reserved: Reserved = { count: 0, memoryMb: 0, byOwner: new Map(), byHost: new Map() }
  /** Sandboxes and memory per host, as of the last listing. */
  private usageByHost = new Map<string, { live: number, memoryMb: number }>()
  /** Hosts whose Docker daemon does not answer: their sandboxes are 503 sandbox_host_unavailable, new ones go elsewhere. */
  private readonly down = new Set<string>()
  private hostCheck: NodeJS.Timeout | null = null
  private readonly misses = new Map<string, number>()
  readonly pools: SandboxPool[]
  /** The first host's pool (the only one with one host). */
  readonly pool: SandboxPool
  private readonly byHost: Map<string, SandboxPool>
  readonly recovery: RecoveryState = { state: 'pending', total: 0, adopted: 0, removed: 0, orphans_removed: 0 }
  private recovering: Promise<void> = Promise.resolve()

  constructor (pools: SandboxPool | SandboxPool[], private readonly store: Store, private readonly opts: SandboxServiceOptions, private readonly log: Logger) {
    this.pools = Array.isArray(pools) ? pools : [pools]
    this.pool = this.pools[0]
    this.byHost = new Map(this.pools.map(p => [p.host, p]))
  }

  /** The name of the host a sandbox lives on (records from before several hosts live on the first). */
  private hostOf (record: Pick<SandboxRecord, 'host'>): string {
    return record.host ?? this.pool.host
  }

  /** The pool of the host a sandbox lives on. */
  private poolOf (record: SandboxRecord): SandboxPool {
    const name = this.hostOf(record)
    const pool = this.byHost.get(name)
    if (!pool) throw hostUnavailable(`${name}, not in SANDBOX_DOCKER_HOSTS`)
    return pool
  }

  /**
   * Pings every host; a host that fails two pings in a row (3 s each) is marked down, and up again when it answers.
   * (At start-up one failed ping is enough.)
   */
  private async checkHosts (first = false): Promise<void> {
    await Promise.all(this.pools.map(async (pool) => {
      const up = await Promise.race([
        pool.driver.ping().then(() => true, () => false),
        new Promise<boolean>(resolve => setTimeout(() => resolve(false), 3000).unref())
      ])
      const misses = up ? 0 : (this.misses.get(pool.host) ?? 0) + 1
      this.misses.set(pool.host, misses)
      if (up && this.down.delete(pool.host)) this.log.info({ host: pool.host }, 'docker host is back')
      if (!up && (misses >= 2 || first)) this.markDown(pool.host)
    }))
  }

  /** A host that does not answer: its sandboxes are 503s and new ones go elsewhere until a ping succeeds. */
  private markDown (host: string, err?: string): void {
    if (this.down.has(host)) return
    this.down.add(host)
    this.log.warn({ host, ...(err ? { err } : {}) }, 'docker host unreachable')
  }

  /** Each host's state. */
  get hosts (): HostStatus[] {
    return this.pools.map(pool => {
      const used = this.usageByHost.get(pool.host) ?? { live: 0, memoryMb: 0 }
      const stats = pool.stats
      return { name: pool.host, status: this.down.has(pool.host) ? 'down' : 'up', live: used.live, memory_used_mb: used.memoryMb, warm: stats.warm, creating: stats.creating, queued: stats.queued }
    })
  }

  private countByHost (records: SandboxRecord[]): void {
    const by = new Map<string, { live: number, memoryMb: number }>()
    for (const r of records) {
      const name = this.hostOf(r)
      const u = by.get(name) ?? { live: 0, memoryMb: 0 }
      u.live++
      u.memoryMb += r.memory_mb
      by.set(name, u)
    }
    this.usageByHost = by
  }

  /**
   * Starts the pool and the reaper; re-adopting the containers that stored sandboxes reference and removing orphans
   * runs in the background (however many containers a burst left, the server answers at once). `wait` waits for
   * both the recovery and the pool's first fill.
   */
  async start (wait = false): Promise<void> {
    await this.checkHosts(true)
    if (this.down.size < this.pools.length) {
      this.recovering = this.recover().catch((err: Error) => {
        this.recovery.state = 'failed'
        this.log.warn({ err: err.message }, 'could not recover sandboxes at start-up')
      })
    }
    if (wait) await this.recovering
    await Promise.all(this.pools.filter(p => !this.down.has(p.host)).map(p => p.start(wait)))
    this.hostCheck = setInterval(() => { void this.checkHosts() }, this.opts.hostCheckMs ?? 2000)
    this.hostCheck.unref()
    this.reaper = setInterval(() => {
      this.sweep().catch(err => this.log.warn({ err: (err as Error).message }, 'reaper failed'))
    }, this.opts.reapIntervalMs ?? 5000)
    this.reaper.unref()
  }

  /** Resolves when start-up's recovery has finished (tests, benchmarks). */
  recovered (): Promise<void> { return this.recovering }

  /** Re-adopts the containers that stored sandboxes reference and removes this namespace's orphans, a few at a time. */
  private async recover (): Promise<void> {
    const records = await this.store.listSandboxes()
    Object.assign(this.recovery, { state: 'running', total: records.length })
    await eachLimited(records, this.opts.recoveryConcurrency ?? 8, async (record) => {
      if (this.live.has(record.id)) return // a request already attached to it
      const pool = this.byHost.get(this.hostOf(record))
      if (!pool || this.down.has(pool.host)) return // kept: it is re-adopted when its host answers
      let handle: SandboxHandle | null
      try {
        handle = await pool.adopt(record.container_id)
      } catch {
        return // the host failed meanwhile: kept as well
      }
      if (handle) {
        this.track(record.id, handle, record)
        this.recovery.adopted++
      } else {
        await this.store.deleteSandbox(record.id)
        this.recovery.removed++
      }
    })
    this.recovery.orphans_removed = await this.removeOrphans(records)
    await this.pool.removeStaleAgentDirs().catch((err: Error) => this.log.warn({ err: err.message }, 'could not remove stale agent directories'))
    this.recovery.state = 'done'
    this.log.info({ ...this.recovery }, 'sandboxes recovered')
  }

  /** One reaper round: idle sandboxes, then (with a shared store) the containers of processes that died. */
  private async sweep (): Promise<void> {
    const records = await this.store.listSandboxes()
    this.countByHost(records)
    await this.reap(records)
    if (this.opts.isLive) await this.removeOrphans(records)
  }

  /**
   * Removes the containers none of `records` references, unless this process or another live one made them.
   * (A record removed since it was listed only spares a container that is being removed anyway.)
   */
  private async removeOrphans (records: SandboxRecord[]): Promise<number> {
    const referenced = new Set(records.map(r => r.container_id))
    const live = new Map<string, Promise<boolean>>() // one lookup per process per round
    const isLive = (instance: string) => {
      if (!live.has(instance)) live.set(instance, this.opts.isLive?.(instance) ?? Promise.resolve(false))
      return live.get(instance)!
    }
    let removed = 0
    for (const pool of this.pools.filter(p => !this.down.has(p.host))) {
      const containers = await pool.containers().catch(() => [])
      await eachLimited(containers, this.opts.recoveryConcurrency ?? 8, async ({ id, instance, dir }) => {
        if (referenced.has(id) || instance === pool.instance) return
        if (instance && await isLive(instance)) return
        await pool.remove(id, dir).catch(() => {})
        removed++
      })
    }
    if (removed) this.log.info({ removed }, 'orphan containers removed')
    return removed
  }

  private track (id: string, handle: SandboxHandle, record: SandboxRecord): void {
    this.live.set(id, handle)
    this.records.set(id, record)
    handle.agent.once('gone', () => { if (this.live.get(id) === handle) this.forget(id) })
    // Re-adopted (restart, another replica's sandbox): this process serves its egress proxy from now on.
    const { egress } = this.opts
    const dir = this.byHost.get(this.hostOf(record))?.agentDirOf(handle.containerId)
    if (record.network?.length && egress && dir && !egress.has(id)) {
      egress.open(id, dir, record.network.map((r, i) => parseRule(r, `network.allow[${i}]`)), record.network_trusted === true)
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
  async create (principal: Principal, spec: CreateSandbox, sessionId: string | null = null, signal?: AbortSignal, trustedNetwork = false): Promise<SandboxRecord> {
    if (this.opts.enabled === false) throw SandboxesDisabled()
    const timeoutS = spec.timeout_s ?? this.opts.defaultTimeoutS
    if (timeoutS > this.opts.maxTimeoutS) {
      throw new AppError(400, 'validation_error', `body/timeout_s must be at most ${this.opts.maxTimeoutS}`)
    }
    const rules = spec.network === undefined ? this.opts.networkDefault ?? [] : this.networkRules(principal, spec.network, trustedNetwork)
    // An admin's policy (or the operator's default) is all that limits its sandbox; a user key's, and a session's
    // (whoever set it), also meets the wall.
    const networkTrusted = spec.network === undefined || principal.role === 'admin'
    if (spec.language) this.language(spec.language)
    const cpus = spec.resources?.cpus ?? this.opts.cpus
    const memoryMb = spec.resources?.memory_mb ?? this.opts.memoryMb
    const { release, pool } = this.admit(principal.name, memoryMb, await this.store.listSandboxes())
    let handle: SandboxHandle
    try {
      handle = await pool.acquire(signal)
    } catch (err) {
      release()
      throw err
    }
    try {
      if (cpus !== this.opts.cpus || memoryMb !== this.opts.memoryMb) {
        await pool.driver.update(handle.containerId, { memoryMb, cpus }).catch((err: { statusCode?: number, json?: { message?: string } }) => {
          // Docker refuses what the host cannot give (more CPUs than it has): the client's 400, in our words.
          if (err.statusCode === 400) throw new AppError(400, 'validation_error', `body/resources: this Docker host cannot give ${cpus} CPUs and ${memoryMb} MB`)
          throw err
        })
      }
      const id = `sbx_${randomBytes(12).toString('base64url')}`
      let env = spec.env ?? {}
      if (rules.length) {
        const dir = pool.agentDirOf(handle.containerId)
        if (!dir) throw new AppError(503, 'network_unavailable', `The Docker host ${pool.host} has no agent directories, so no egress proxy`, 'unavailable_error')
        await this.opts.egress!.open(id, dir, rules, networkTrusted)
        await handle.enableEgress()
        env = { ...PROXY_ENV, ...env }
      }
      if (Object.keys(env).length) await handle.setEnv(env)
      const now = new Date().toISOString()
      const record: SandboxRecord = {
        id,
        owner: principal.name,
        container_id: handle.containerId,
        language: spec.language ?? 'python',
        created_at: now,
        last_used_at: now,
        timeout_s: timeoutS,
        cpus,
        memory_mb: memoryMb,
        metadata: spec.metadata ?? {},
        session_id: sessionId,
        ...(rules.length ? { network: rules.map(r => r.text), network_trusted: networkTrusted } : {}),
        ...(this.pools.length > 1 ? { host: pool.host } : {})
      }
      signal?.throwIfAborted()
      await this.store.saveSandbox(record)
      this.track(record.id, handle, record)
      this.countOn(pool.host, 1, memoryMb)
      return record
    } catch (err) {
      handle.agent.close()
      await pool.remove(handle.containerId).catch(() => {})
      throw err
    } finally {
      release()
    }
  }

  /**
   * The allow list a request asks for, within what the operator lets user keys allow (403 naming the host beyond it);
   * a 400 when this server cannot give sandboxes a network (agents over docker attach, or runsc without --host-uds).
   */
  networkRules (principal: Principal, policy: unknown, trusted = false): AllowRule[] {
    const rules = parsePolicy(policy)
    checkAllowed(rules, this.opts.egressAllowed ?? [], trusted || principal.role === 'admin')
    if (rules.length && !(this.opts.egress && this.pools.some(p => p.hasAgentDirs))) {
      throw new AppError(400, 'network_unavailable', 'This server cannot give sandboxes a network: the egress proxy needs SANDBOX_AGENT_CHANNEL=socket (and, under runsc, runsc registered with --host-uds=all)')
    }
    return rules
  }

  /**
   * Counts a creation against the per-key limit, the host's count and its memory budget (stored sandboxes plus the
   * creations under way here), or refuses it; the returned function gives the reservation back.
   */
  private admit (owner: string, memoryMb: number, records: SandboxRecord[]): { release: () => void, pool: SandboxPool } {
    const r = this.reserved
    const own = records.filter(x => x.owner === owner).length + (r.byOwner.get(owner) ?? 0)
    if (own >= this.opts.maxPerKey) {
      throw new AppError(429, 'sandbox_limit_reached', `This key already has ${own} sandboxes (the limit is ${this.opts.maxPerKey}); delete one first`)
    }
    this.countByHost(records)
    // Placement: the host (that answers) with the most free sandbox slots, then the most free memory budget.
    // MAX_SANDBOXES and SANDBOX_MEMORY_BUDGET_MB are per host; the counts come from the store, so replicas agree.
    const up = this.pools.filter(p => !this.down.has(p.host))
    if (!up.length) throw new DependencyError('docker', `no Docker host answers (${this.pools.map(p => p.host).join(', ')})`)
    let best: { pool: SandboxPool, slots: number, memory: number } | null = null
    let full: 'max_sandboxes' | 'memory_budget' = 'max_sandboxes'
    for (const pool of up) {
      const used = this.usageByHost.get(pool.host) ?? { live: 0, memoryMb: 0 }
      const reserved = r.byHost.get(pool.host) ?? { count: 0, memoryMb: 0 }
      const slots = this.opts.maxSandboxes - used.live - reserved.count
      const memory = this.opts.memoryBudgetMb - used.memoryMb - reserved.memoryMb
      if (slots <= 0) continue
      if (memory < memoryMb) {
        full = 'memory_budget'
        continue
      }
      if (!best || slots > best.slots || (slots === best.slots && memory > best.memory)) best = { pool, slots, memory }
    }
    if (!best) {
      const used = [...this.usageByHost.values()].reduce((n, u) => Math.max(n, u.memoryMb), 0)
      const memoryText = this.pools.length > 1 ? `${this.opts.memoryBudgetMb} MB on each Docker host` : `${used + r.memoryMb} of ${this.opts.memoryBudgetMb} MB`
      this.opts.onRejected?.(full)
      throw CapacityExhausted(full === 'max_sandboxes'
        ? `This server holds its most sandboxes (${this.opts.maxSandboxes}${this.pools.length > 1 ? ' on each Docker host' : ''}); try again later`
        : `The sandboxes' memory budget is used (${memoryText}; this one needs ${memoryMb} MB); try again later`, nextExpiry(records))
    }
    const host = best.pool.host
    const onHost = r.byHost.get(host) ?? { count: 0, memoryMb: 0 }
    r.byHost.set(host, { count: onHost.count + 1, memoryMb: onHost.memoryMb + memoryMb })
    r.count++
    r.memoryMb += memoryMb
    r.byOwner.set(owner, (r.byOwner.get(owner) ?? 0) + 1)
    let released = false
    const release = () => {
      if (released) return
      released = true
      r.count--
      r.memoryMb -= memoryMb
      const h = r.byHost.get(host)!
      if (h.count <= 1) r.byHost.delete(host)
      else r.byHost.set(host, { count: h.count - 1, memoryMb: h.memoryMb - memoryMb })
      const left = (r.byOwner.get(owner) ?? 1) - 1
      if (left > 0) r.byOwner.set(owner, left)
      else r.byOwner.delete(owner)
    }
    return { release, pool: best.pool }
  }

  /** Sandboxes and the memory their limits take (read from the store at each creation and reaper round, kept since), plus creations under way. */
  get capacity (): { live: number, max: number, memory_used_mb: number, memory_budget_mb: number, creating: number } {
    return {
      live: this.usage.live,
      max: this.opts.maxSandboxes,
      memory_used_mb: this.usage.memoryMb + this.reserved.memoryMb,
      memory_budget_mb: this.opts.memoryBudgetMb,
      creating: this.reserved.count
    }
  }

  /**
   * A sandbox's record. One this process is attached to comes from memory: its owner never changes, and if another
   * replica deletes it, that replica removes the container first, which ends the attachment (and the cache entry).
   */
  async get (id: string, principal: Principal): Promise<SandboxRecord> {
    const cached = this.live.get(id)?.agent.alive ? this.records.get(id) : undefined
    const record = cached ?? await this.store.getSandbox(id)
    if (!record || !canAccess(principal, record.owner)) throw SandboxNotFound()
    return record
  }

  /** This key's sandboxes, newest first; with `all`, every key's (the caller checks the key may see them). */
  async list (principal: Principal, all = false): Promise<SandboxRecord[]> {
    const records = await this.store.listSandboxes(all ? undefined : principal.name)
    return records.sort((a, b) => b.created_at.localeCompare(a.created_at))
  }

  /** The live container of a sandbox, attaching to it when this process has not yet (restart, other replica). */
  async handle (record: SandboxRecord): Promise<SandboxHandle> {
    const pool = this.poolOf(record)
    // With several hosts, one that does not answer is not used even over a connection that still works (it cannot be
    // managed, and its sandboxes should fail alike from every replica); with one host, what still works is used.
    if (this.pools.length > 1 && this.down.has(pool.host)) throw hostUnavailable(pool.host)
    const known = this.live.get(record.id)
    if (known?.agent.alive) return known
    let handle: SandboxHandle | null
    try {
      handle = await pool.adopt(record.container_id)
    } catch (err) {
      if (!(err instanceof DependencyError)) throw err
      this.markDown(pool.host, err.message)
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

  async destroy (record: SandboxRecord): Promise<void> {
    const handle = this.live.get(record.id)
    this.forget(record.id)
    handle?.agent.close()
    // Container first: if Docker fails, the record stays and the reaper tries again, so nothing leaks.
    await this.poolOf(record).remove(record.container_id)
    await this.store.deleteSandbox(record.id)
    this.countOn(this.hostOf(record), -1, record.memory_mb)
  }

  /** Recounts sandboxes per host from the store (every replica's): what /v1/ready and /v1/stats show. */
  async refreshCounts (records?: SandboxRecord[]): Promise<void> {
    this.countByHost(records ?? await this.store.listSandboxes())
  }

  /** Sandboxes and their memory limits on every host: the sum of the per-host counts. */
  private get usage (): { live: number, memoryMb: number } {
    let live = 0
    let memoryMb = 0
    for (const u of this.usageByHost.values()) { live += u.live; memoryMb += u.memoryMb }
    return { live, memoryMb }
  }

  /** Keeps a host's counts current between listings (creations and removals of this process). */
  private countOn (host: string, sandboxes: number, memoryMb: number): void {
    const u = this.usageByHost.get(host) ?? { live: 0, memoryMb: 0 }
    this.usageByHost.set(host, { live: Math.max(0, u.live + sandboxes), memoryMb: Math.max(0, u.memoryMb + sandboxes * memoryMb) })
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
  async execute (record: SandboxRecord, req: { code: string, language?: Language, timeout_ms?: number }, onEvent?: (e: ExecutionEvent) => void, context: { via: Protocol, label?: string } = { via: 'rest' }): Promise<Execution> {
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
    const observe = (status: ExecutionObservation['status']) =>
      this.opts.observeExecution?.({ language: context.label ?? language, status, protocol: context.via, seconds: (Date.now() - began) / 1000 })
    try {
      const result = await handle.execute({
        kernel: spec.kernel ?? 'shell',
        language,
        code: spec.kernel ? req.code : freshProcess(spec, req.code),
        timeoutMs,
        maxOutputBytes: this.opts.outputLimit
      }, onEvent)
      observe(result.error ? 'error' : 'ok')
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
    const pool = this.poolOf(record)
    let end = await pool.endState(record.container_id)
    for (let i = 0; i < 20 && !end; i++) {
      await new Promise(resolve => setTimeout(resolve, 150))
      end = await pool.endState(record.container_id)
    }
    await this.destroy(record).catch((err: Error) => this.log.warn({ sandbox: record.id, err: err.message }, 'could not remove a stopped sandbox'))
    const oom = end?.oomKilled === true
    this.log.warn({ sandbox: record.id, oom, exit_code: end?.exitCode }, 'a sandbox stopped during an execution')
    return new AppError(410, 'sandbox_lost', oom
      ? `The sandbox ran out of memory (its limit is ${record.memory_mb} MB) and was stopped; its variables and files are gone`
      : 'The sandbox stopped during the execution; its variables and files are gone', 'sandbox_error', { reason: oom ? 'out_of_memory' : 'stopped' })
  }

  view (record: SandboxRecord): Sandbox {
    const expires = Date.parse(record.last_used_at) + record.timeout_s * 1000
    return {
      id: record.id,
      object: 'sandbox',
      language: record.language,
      status: this.live.get(record.id)?.busy ? 'busy' : 'ready',
      created_at: record.created_at,
      last_used_at: record.last_used_at,
      expires_at: new Date(expires).toISOString(),
      timeout_s: record.timeout_s,
      resources: { cpus: record.cpus, memory_mb: record.memory_mb },
      metadata: record.metadata,
      session_id: record.session_id,
      network: record.network?.length ? { allow: record.network } : 'none'
    }
  }

  /** Removes the sandboxes of `records` idle past their timeout (never one that is running code). */
  private async reap (records: SandboxRecord[]): Promise<number> {
    let removed = 0
    for (const record of records) {
      const idleMs = Date.now() - Date.parse(record.last_used_at)
      if (idleMs < record.timeout_s * 1000 || this.live.get(record.id)?.busy) continue
      await this.destroy(record).catch(err => this.log.warn({ sandbox: record.id, err: (err as Error).message }, 'could not remove an idle sandbox'))
      this.log.info({ sandbox: record.id, idleMs }, 'idle sandbox removed')
      removed++
    }
    return removed
  }

  get counts (): { live: number, busy: number } {
    let busy = 0
    for (const handle of this.live.values()) if (handle.busy) busy++
    return { live: this.live.size, busy }
  }

  /** Detaches from (keep) or removes every sandbox this process knows, then empties the warm pool. */
  async close (): Promise<void> {
    if (this.reaper) clearInterval(this.reaper)
    if (this.hostCheck) clearInterval(this.hostCheck)
    await this.opts.egress?.closeAll()
    await this.recovering
    const keep = this.opts.keepOnClose && this.store.kind === 'redis'
    for (const [id, handle] of [...this.live]) {
      const pool = this.byHost.get(this.hostOf(this.records.get(id) ?? {})) ?? this.pool // read before close() forgets it
      handle.agent.close()
      if (!keep) {
        await pool.remove(handle.containerId).catch(() => {})
        await this.store.deleteSandbox(id).catch(() => {})
      }
    }
    for (const id of [...this.live.keys()]) this.forget(id)
    await Promise.all(this.pools.map(p => p.close()))
  }
}

/** Seconds until the first of `records` expires for idleness (when a slot may free up by itself), 1 to 300. */
function nextExpiry (records: SandboxRecord[]): number {
  const first = Math.min(...records.map(r => Date.parse(r.last_used_at) + r.timeout_s * 1000))
  return Number.isFinite(first) ? Math.min(300, Math.max(1, (first - Date.now()) / 1000)) : 30
}

/** Runs `fn` over `items`, at most `limit` at once. */
async function eachLimited<T> (items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async () => { while (next < items.length) await fn(items[next++]) }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}
