// Live CPU and memory of sandboxes for the monitor's Sandboxes page, read from the engine by one poller per Docker
// host, whatever the number of pages open: a page's read keeps the pollers going for a minute more, then they stop.
// What they keep is the last reading per live sandbox (pruned as sandboxes go), so an open monitor costs no memory
// over time.
import type { ContainerStats } from './driver.js'

export interface LiveStat { cpu_percent: number | null, memory_bytes: number, memory_limit_bytes: number, at: string }
export interface StatsTarget { sandbox: string, container: string }

export const POLL_MS = 5000
const KEEP_POLLING_MS = 60_000

export class StatsPoller {
  private readonly latest = new Map<string, LiveStat>()
  private readonly previous = new Map<string, ContainerStats>()
  private readonly loops = new Map<string, Promise<void>>()
  private targets = new Map<string, StatsTarget[]>()
  private until = 0
  private closed = false

  constructor (private readonly readers: Map<string, (container: string) => Promise<ContainerStats | null>>, private readonly pollMs = POLL_MS) {}

  /** The latest readings of these sandboxes (by host); the pollers go on for another minute. */
  read (targets: Map<string, StatsTarget[]>): Map<string, LiveStat> {
    this.targets = targets
    const live = new Set([...targets.values()].flat().map(t => t.sandbox))
    for (const id of this.latest.keys()) if (!live.has(id)) { this.latest.delete(id); this.previous.delete(id) }
    this.until = Date.now() + KEEP_POLLING_MS
    for (const host of targets.keys()) if (!this.loops.has(host) && this.readers.has(host)) this.loops.set(host, this.loop(host).finally(() => this.loops.delete(host)))
    return this.latest
  }

  /** Pollers running now (one per host at most). */
  get running (): number { return this.loops.size }

  private async loop (host: string): Promise<void> {
    const reader = this.readers.get(host)!
    while (!this.closed && Date.now() < this.until) {
      for (const target of this.targets.get(host) ?? []) {
        if (this.closed) return
        const now = await reader(target.container).catch(() => null)
        if (!now) continue
        const before = this.previous.get(target.sandbox)
        const system = before ? now.systemNs - before.systemNs : 0
        this.previous.set(target.sandbox, now)
        this.latest.set(target.sandbox, {
          cpu_percent: before && system > 0 ? Math.round((now.cpuNs - before.cpuNs) / system * now.cpus * 1000) / 10 : null,
          memory_bytes: now.memoryBytes,
          memory_limit_bytes: now.memoryLimitBytes,
          at: new Date().toISOString()
        })
      }
      await new Promise(resolve => setTimeout(resolve, this.pollMs).unref())
    }
  }

  close (): void { this.closed = true }
}
