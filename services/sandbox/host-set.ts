// The Docker hosts sandboxes run on, and whether each answers: a host that fails two pings in a row (3 s each) is
// down (its sandboxes are 503s, new ones go elsewhere) until a ping succeeds again.
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { AppError } from '../errors.js'
import type { Logger, SandboxPool } from './pool.js'

export const hostUnavailable = (host: string): AppError =>
  new AppError(503, 'sandbox_host_unavailable', `The Docker host of this sandbox (${host}) cannot be reached; its sandboxes come back when it does`, 'unavailable_error', { retry_after: 5 })

export class HostSet {
  readonly pools: SandboxPool[]
  private readonly byHost: Map<string, SandboxPool>
  private readonly down = new Set<string>()
  private readonly misses = new Map<string, number>()
  private timer: NodeJS.Timeout | null = null

  constructor (pools: SandboxPool[], private readonly log: Logger) {
    this.pools = pools
    this.byHost = new Map(pools.map(p => [p.host, p]))
  }

  /** The first host's pool: where records from before several hosts live. */
  get first (): SandboxPool { return this.pools[0] }

  /** The name of the host a sandbox lives on (records from before several hosts live on the first). */
  hostOf (record: Pick<SandboxRecord, 'host'>): string {
    return record.host ?? this.first.host
  }

  /** The pool of a host by name, if it is configured. */
  pool (name: string): SandboxPool | undefined {
    return this.byHost.get(name)
  }

  /** The pool of the host a sandbox lives on; 503 when that host is not configured. */
  poolOf (record: Pick<SandboxRecord, 'host'>): SandboxPool {
    const name = this.hostOf(record)
    const pool = this.byHost.get(name)
    if (!pool) throw hostUnavailable(`${name}, not in SANDBOX_DOCKER_HOSTS`)
    return pool
  }

  isDown (host: string): boolean { return this.down.has(host) }

  /** The pools of the hosts that answer. */
  up (): SandboxPool[] { return this.pools.filter(p => !this.down.has(p.host)) }

  /** Pings every host; at start-up (`first`) one failed ping is enough to mark it down. */
  async check (first = false): Promise<void> {
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
  markDown (host: string, err?: string): void {
    if (this.down.has(host)) return
    this.down.add(host)
    this.log.warn({ host, ...(err ? { err } : {}) }, 'docker host unreachable')
  }

  /** Pings every `intervalMs` until stop(). */
  watch (intervalMs: number): void {
    this.timer = setInterval(() => { void this.check() }, intervalMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer) clearInterval(this.timer)
  }
}
