// The last hour of the server's vital signs, for the monitor's charts: one sample every 10 s per replica (a ring of
// 360), shared through Redis (each replica's ring as a capped list that expires with it) so that any replica answers
// with the whole deployment's series. Requests and their latency come from this process's own responses; executions
// (by protocol), starts and capacity from the counters and the sandbox service. Memory is fixed: 360 small samples
// per replica, and a window of at most WINDOW_CAP request durations.
import type { Redis } from 'ioredis'

export interface Sample {
  /** The start of the 10 s window, ms since the epoch. */
  t: number
  requests: number
  p50_ms: number | null
  p99_ms: number | null
  executions: Record<string, number>
  live: number
  warm: number
  paused: number
  queued: number
  /** Container starts in the window, and their mean time. */
  starts: number
  start_ms: number | null
  memory_used_mb: number
  memory_budget_mb: number
  /** Live sandboxes per Docker host. */
  hosts: Record<string, number>
}

export interface Gauges { live: number, warm: number, paused: number, queued: number, memory_used_mb: number, memory_budget_mb: number, hosts: Record<string, number> }
/** Running totals the samples take differences of: executions by protocol, container starts (count, seconds). */
export interface Totals { executions: Record<string, number>, starts: { count: number, sum: number } }

export const INTERVAL_MS = 10_000
export const KEEP = 360
const WINDOW_CAP = 20_000
const KEY = 'timeseries:'

const quantile = (sorted: number[], q: number): number | null => sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : null

/** Adds one window's traffic to another's: requests, executions and starts summed, latency the slower one's. */
function addTraffic (into: Sample, from: Sample): void {
  into.requests += from.requests
  into.p50_ms = Math.max(into.p50_ms ?? 0, from.p50_ms ?? 0) || null
  into.p99_ms = Math.max(into.p99_ms ?? 0, from.p99_ms ?? 0) || null
  for (const [p, n] of Object.entries(from.executions)) into.executions[p] = (into.executions[p] ?? 0) + n
  const starts = into.starts + from.starts
  into.start_ms = starts ? Math.round(((into.start_ms ?? 0) * into.starts + (from.start_ms ?? 0) * from.starts) / starts) : null
  into.starts = starts
}

export class TimeSeries {
  private readonly ring: Sample[] = []
  private durations: number[] = []
  private requests = 0
  private last: Totals | null = null
  private timer: NodeJS.Timeout | null = null

  constructor (
    private readonly replica: string,
    private readonly redis: Redis | null,
    private readonly gauges: () => Gauges,
    private readonly totals: () => Promise<Totals>
  ) {}

  /** A response of this process (its duration in ms). */
  request (ms: number): void {
    this.requests++
    if (this.durations.length < WINDOW_CAP) this.durations.push(ms)
  }

  start (): void {
    void this.totals().then(t => { this.last ??= t }).catch(() => {})
    const tick = () => { void this.sample().catch(() => {}) }
    // Aligned to the 10 s grid, so that the replicas' samples add up by time.
    this.timer = setTimeout(() => { tick(); this.timer = setInterval(tick, INTERVAL_MS); this.timer.unref() }, INTERVAL_MS - (Date.now() % INTERVAL_MS))
    this.timer.unref()
  }

  stop (): void { if (this.timer) clearTimeout(this.timer) }

  /** Closes the current window into a sample (the timer does; tests call it to move time on). */
  async sample (now = Date.now()): Promise<Sample> {
    const sorted = this.durations.sort((a, b) => a - b)
    const totals = await this.totals().catch(() => this.last ?? { executions: {}, starts: { count: 0, sum: 0 } })
    const last = this.last ?? totals
    const started = totals.starts.count - last.starts.count
    const executions: Record<string, number> = {}
    for (const [protocol, n] of Object.entries(totals.executions)) {
      const delta = n - (last.executions[protocol] ?? 0)
      if (delta > 0) executions[protocol] = delta
    }
    const g = this.gauges()
    const sample: Sample = {
      t: now - (now % INTERVAL_MS),
      requests: this.requests,
      p50_ms: quantile(sorted, 0.5),
      p99_ms: quantile(sorted, 0.99),
      executions,
      live: g.live,
      warm: g.warm,
      paused: g.paused,
      queued: g.queued,
      starts: started,
      start_ms: started > 0 ? Math.round((totals.starts.sum - last.starts.sum) / started * 1000) : null,
      memory_used_mb: g.memory_used_mb,
      memory_budget_mb: g.memory_budget_mb,
      hosts: g.hosts
    }
    this.last = totals
    this.durations = []
    this.requests = 0
    // A second sample of the same window (one asked for between two ticks) is folded into the first: one per window.
    const prior = this.ring[this.ring.length - 1]
    const folded = prior?.t === sample.t
    if (folded) {
      addTraffic(prior, sample)
      Object.assign(prior, { live: sample.live, warm: sample.warm, paused: sample.paused, queued: sample.queued, memory_used_mb: sample.memory_used_mb, memory_budget_mb: sample.memory_budget_mb, hosts: sample.hosts })
    } else {
      this.ring.push(sample)
      if (this.ring.length > KEEP) this.ring.splice(0, this.ring.length - KEEP)
    }
    if (this.redis) {
      const key = `${KEY}${this.replica}`
      const kept = folded ? prior : sample
      const replaced = folded && await this.redis.lset(key, -1, JSON.stringify(kept)).then(() => true, () => false)
      const write = this.redis.multi()
      if (!replaced) write.rpush(key, JSON.stringify(kept))
      await write.ltrim(key, -KEEP, -1).expire(key, 2 * 3600).sadd(`${KEY}replicas`, this.replica).expire(`${KEY}replicas`, 2 * 3600).exec()
    }
    return folded ? prior : sample
  }

  /**
   * The deployment's samples of the last `minutes`, oldest first: every replica's added up by time (requests,
   * executions, starts, warm containers and queued starts summed; latency the slowest replica's; the rest the largest
   * reading, since each replica reads the same shared hosts).
   */
  async series (minutes: number, now = Date.now()): Promise<{ replicas: number, samples: Sample[] }> {
    const since = now - minutes * 60_000
    let rings: Sample[][] = [this.ring]
    if (this.redis) {
      const replicas = await this.redis.smembers(`${KEY}replicas`)
      rings = await Promise.all(replicas.map(async r => (await this.redis!.lrange(`${KEY}${r}`, 0, -1)).map(s => JSON.parse(s) as Sample)))
      rings = rings.filter(r => r.length)
      if (!rings.length) rings = [this.ring]
    }
    const byTime = new Map<number, Sample>()
    for (const ring of rings) {
      for (const s of ring) {
        if (s.t < since) continue
        const m = byTime.get(s.t)
        if (!m) { byTime.set(s.t, structuredClone(s)); continue }
        addTraffic(m, s)
        // Warm containers and queued starts are each replica's own; the rest is read from the shared hosts.
        m.warm += s.warm
        m.queued += s.queued
        for (const k of ['live', 'paused', 'memory_used_mb', 'memory_budget_mb'] as const) m[k] = Math.max(m[k], s[k])
        for (const [h, n] of Object.entries(s.hosts)) m.hosts[h] = Math.max(m.hosts[h] ?? 0, n)
      }
    }
    return { replicas: rings.length, samples: [...byTime.values()].sort((a, b) => a.t - b.t) }
  }
}
