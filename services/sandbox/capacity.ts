// What the hosts may still take: sandboxes per key (429), and per host MAX_SANDBOXES and the memory budget (503),
// counted from the store (so replicas agree) plus this process's creations under way; and where a new sandbox goes.
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { AppError, CapacityExhausted, DependencyError } from '../errors.js'
import type { HostSet } from './host-set.js'
import type { SandboxPool } from './pool.js'

export interface CapacityLimits {
  maxPerKey: number
  /** Sandboxes on each Docker host, all keys together. */
  maxSandboxes: number
  /** The sum of live sandboxes' memory limits on each host may not pass this. */
  memoryBudgetMb: number
  onRejected?: (reason: 'max_sandboxes' | 'memory_budget') => void
}

interface Usage { live: number, memoryMb: number, paused: number }

export class Capacity {
  /** Creations under way in this process (admitted, container not yet recorded). */
  private readonly reserved = { count: 0, memoryMb: 0, byOwner: new Map<string, number>(), byHost: new Map<string, { count: number, memoryMb: number }>() }
  private usageByHost = new Map<string, Usage>()

  constructor (private readonly hosts: HostSet, private readonly limits: CapacityLimits) {}

  /** Counts each host's sandboxes and their memory limits from a listing of the store. */
  count (records: SandboxRecord[]): void {
    const by = new Map<string, Usage>()
    for (const r of records) {
      const name = this.hosts.hostOf(r)
      const u = by.get(name) ?? { live: 0, memoryMb: 0, paused: 0 }
      if (r.paused) {
        u.paused++ // holds no memory on its host
      } else {
        u.live++
        u.memoryMb += r.memory_mb
      }
      by.set(name, u)
    }
    this.usageByHost = by
  }

  /** Keeps a host's counts current between listings (creations and removals of this process). */
  countOn (host: string, sandboxes: number, memoryMb: number, paused = 0): void {
    const u = this.usageByHost.get(host) ?? { live: 0, memoryMb: 0, paused: 0 }
    this.usageByHost.set(host, { live: Math.max(0, u.live + sandboxes), memoryMb: Math.max(0, u.memoryMb + sandboxes * memoryMb), paused: Math.max(0, u.paused + paused) })
  }

  usedOn (host: string): Usage {
    return this.usageByHost.get(host) ?? { live: 0, memoryMb: 0, paused: 0 }
  }

  /** Sandboxes and their memory limits on every host: the sum of the per-host counts. */
  private get usage (): Usage {
    let live = 0
    let memoryMb = 0
    let paused = 0
    for (const u of this.usageByHost.values()) { live += u.live; memoryMb += u.memoryMb; paused += u.paused }
    return { live, memoryMb, paused }
  }

  get summary (): { live: number, paused: number, max: number, memory_used_mb: number, memory_budget_mb: number, creating: number } {
    const usage = this.usage
    return {
      live: usage.live,
      paused: usage.paused,
      max: this.limits.maxSandboxes,
      memory_used_mb: usage.memoryMb + this.reserved.memoryMb,
      memory_budget_mb: this.limits.memoryBudgetMb,
      creating: this.reserved.count
    }
  }

  /**
   * Admits a new sandbox of `owner` needing `memoryMb`, or refuses it (429 over the key's limit, 503 when no host
   * that answers has a slot and the memory): the pool of the host it goes to, and `release` for when the creation
   * ends (recorded or failed).
   */
  admit (owner: string, memoryMb: number, records: SandboxRecord[], home?: { pool: SandboxPool, resuming?: boolean }): { release: () => void, pool: SandboxPool } {
    const r = this.reserved
    // A paused sandbox still counts against its key (its checkpoint or files take the host's disk); one resuming is
    // counted already. `home`: the host it must go to (its own, or its snapshot's).
    const own = home?.resuming ? 0 : records.filter(x => x.owner === owner).length + (r.byOwner.get(owner) ?? 0)
    if (own >= this.limits.maxPerKey) {
      throw new AppError(429, 'sandbox_limit_reached', `This key already has ${own} sandboxes (the limit is ${this.limits.maxPerKey}); delete one first`)
    }
    this.count(records)
    // Placement: the host (that answers) with the most free sandbox slots, then the most free memory budget.
    // MAX_SANDBOXES and SANDBOX_MEMORY_BUDGET_MB are per host; the counts come from the store, so replicas agree.
    const pools = this.hosts.pools
    const up = home ? [home.pool] : this.hosts.up()
    if (!up.length) throw new DependencyError('docker', `no Docker host answers (${pools.map(p => p.host).join(', ')})`)
    let best: { pool: SandboxPool, slots: number, memory: number } | null = null
    let full: 'max_sandboxes' | 'memory_budget' = 'max_sandboxes'
    for (const pool of up) {
      const used = this.usedOn(pool.host)
      const reserved = r.byHost.get(pool.host) ?? { count: 0, memoryMb: 0 }
      const slots = this.limits.maxSandboxes - used.live - reserved.count
      const memory = this.limits.memoryBudgetMb - used.memoryMb - reserved.memoryMb
      if (slots <= 0) continue
      if (memory < memoryMb) {
        full = 'memory_budget'
        continue
      }
      if (!best || slots > best.slots || (slots === best.slots && memory > best.memory)) best = { pool, slots, memory }
    }
    if (!best) {
      const used = [...this.usageByHost.values()].reduce((n, u) => Math.max(n, u.memoryMb), 0)
      const memoryText = pools.length > 1 ? `${this.limits.memoryBudgetMb} MB on each Docker host` : `${used + r.memoryMb} of ${this.limits.memoryBudgetMb} MB`
      this.limits.onRejected?.(full)
      throw CapacityExhausted(full === 'max_sandboxes'
        ? `This server holds its most sandboxes (${this.limits.maxSandboxes}${pools.length > 1 ? ' on each Docker host' : ''}); try again later`
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
}

/** Seconds until the first of `records` expires for idleness (when a slot may free up by itself), 1 to 300. */
function nextExpiry (records: SandboxRecord[]): number {
  const first = Math.min(...records.filter(r => !r.paused).map(r => Date.parse(r.last_used_at) + r.timeout_s * 1000))
  return Number.isFinite(first) ? Math.min(300, Math.max(1, (first - Date.now()) / 1000)) : 30
}
