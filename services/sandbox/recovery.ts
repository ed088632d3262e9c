// Start-up's recovery, and the orphan sweep: re-adopting the containers that stored sandboxes reference (after a
// restart, or another replica's), removing the records of those that are gone, then the containers no record
// references that no live process made, then stale agent directories.
import type { Store } from '../store/types.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import type { SandboxHandle } from './sandbox.js'
import type { HostSet } from './host-set.js'
import type { Logger } from './pool.js'

export interface RecoveryState { state: 'pending' | 'running' | 'done' | 'failed', total: number, adopted: number, removed: number, orphans_removed: number }

export interface RecoveryDeps {
  /** Containers re-adopted (or removed) at once. */
  concurrency: number
  /** Whether another server process still lives (with a shared store): its containers are never orphans. */
  isLive?: (instance: string) => Promise<boolean>
  /** Whether this process already serves the sandbox (a request attached to it first). */
  isTracked: (id: string) => boolean
  /** Hands a re-adopted sandbox to the service. */
  track: (id: string, handle: SandboxHandle, record: SandboxRecord) => void
}

export class Recovery {
  readonly state: RecoveryState = { state: 'pending', total: 0, adopted: 0, removed: 0, orphans_removed: 0 }
  /** Settles when start-up's recovery has finished (or failed). */
  done: Promise<void> = Promise.resolve()

  constructor (private readonly store: Store, private readonly hosts: HostSet, private readonly deps: RecoveryDeps, private readonly log: Logger) {}

  /** Runs the recovery in the background (however many containers a burst left, the server answers at once). */
  start (): void {
    this.done = this.run().catch((err: Error) => {
      this.state.state = 'failed'
      this.log.warn({ err: err.message }, 'could not recover sandboxes at start-up')
    })
  }

  private async run (): Promise<void> {
    const records = await this.store.listSandboxes()
    Object.assign(this.state, { state: 'running', total: records.length })
    await eachLimited(records, this.deps.concurrency, async (record) => {
      if (this.deps.isTracked(record.id) || record.paused) return // a request already attached to it; or its container sleeps
      const pool = this.hosts.pool(this.hosts.hostOf(record))
      if (!pool || this.hosts.isDown(pool.host)) return // kept: it is re-adopted when its host answers
      let handle: SandboxHandle | null
      try {
        handle = await pool.containers.adopt(record.container_id)
      } catch {
        return // the host failed meanwhile: kept as well
      }
      if (handle) {
        this.deps.track(record.id, handle, record)
        this.state.adopted++
      } else {
        await this.store.deleteSandbox(record.id)
        this.state.removed++
      }
    })
    this.state.orphans_removed = await this.removeOrphans(records)
    await Promise.all(this.hosts.up().map(pool => pool.containers.removeStaleAgentDirs()
      .catch((err: Error) => this.log.warn({ host: pool.host, err: err.message }, 'could not remove stale agent directories'))))
    this.state.state = 'done'
    this.log.info({ ...this.state }, 'sandboxes recovered')
  }

  /**
   * Removes the containers none of `records` references, unless this process or another live one made them.
   * (A record removed since it was listed only spares a container that is being removed anyway.)
   */
  async removeOrphans (records: SandboxRecord[]): Promise<number> {
    const referenced = new Set(records.map(r => r.container_id))
    const live = new Map<string, Promise<boolean>>() // one lookup per process per round
    const isLive = (instance: string) => {
      if (!live.has(instance)) live.set(instance, this.deps.isLive?.(instance) ?? Promise.resolve(false))
      return live.get(instance)!
    }
    const kept = new Set(records.map(r => r.paused?.volume))
    let removed = 0
    for (const pool of this.hosts.up()) {
      // Volumes that kept the files of a sandbox no longer paused (a pause or resume cut short), and those of forks
      // whose process died (snapshots stay until deleted).
      const volumes = await pool.containers.keptVolumes().catch(() => [])
      for (const { name, purpose, instance } of volumes) {
        if (purpose === 'snapshot' || kept.has(name) || instance === pool.instance || (instance && await isLive(instance))) continue
        await pool.containers.removeVolume(name).catch(() => {})
      }
      const containers = await pool.containers.list().catch(() => [])
      await eachLimited(containers, this.deps.concurrency, async ({ id, instance, dir }) => {
        if (referenced.has(id) || instance === pool.instance) return
        if (instance && await isLive(instance)) return
        await pool.containers.remove(id, dir).catch(() => {})
        removed++
      })
    }
    if (removed) this.log.info({ removed }, 'orphan containers removed')
    return removed
  }
}

/** Runs `fn` over `items`, at most `limit` at once. */
async function eachLimited<T> (items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async () => { while (next < items.length) await fn(items[next++]) }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}
