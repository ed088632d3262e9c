// Snapshots and forks: a sandbox's workspace kept in a volume of its host (the way a pause that keeps files keeps it),
// under a name of its key that outlives the sandbox, or for as long as a fork takes to start its copies. A sandbox
// started from either gets the files; its kernels start afresh. (Memory is not kept: Docker 20.10 restores a
// checkpoint only into the container it came from, and runsc only once; docs/sandboxes.md, "Pausing".)
import { randomBytes } from 'node:crypto'
import type { Principal } from '../auth.js'
import { AppError } from '../errors.js'
import type { Store } from '../store/types.js'
import { PauseFailed } from './containers.js'
import type { SandboxService } from './service.js'
import type { Logger } from './pool.js'
import type { SandboxRecord, SnapshotRecord } from '../../schemas/sandboxes.js'

const KIND = 'snapshot'

export interface SnapshotOptions {
  /** Snapshots one key may keep (SANDBOX_MAX_SNAPSHOTS_PER_KEY). */
  maxPerKey: number
  /** Sandboxes one fork may make (SANDBOX_MAX_FORK). */
  maxFork: number
}

export class Snapshots {
  constructor (private readonly sandboxes: SandboxService, private readonly store: Store, private readonly opts: SnapshotOptions, private readonly log: Logger) {}

  /** Keeps the sandbox's workspace as the key's snapshot `name` (409 when the name is taken or the sandbox runs code). */
  async take (record: SandboxRecord, name: string): Promise<SnapshotRecord> {
    const owner = record.owner
    if (await this.store.getNamed(KIND, owner, name)) throw new AppError(409, 'snapshot_exists', `This key already has a snapshot named ${name}; delete it first or choose another name`)
    const count = (await this.store.listNamed(KIND, owner)).length
    if (count >= this.opts.maxPerKey) throw new AppError(429, 'snapshot_limit_reached', `This key already has ${count} snapshots (the limit is ${this.opts.maxPerKey}); delete one first`)
    const { volume, bytes } = await this.keep(record, 'snapshot')
    const snapshot: SnapshotRecord = {
      name,
      owner,
      ...(record.host ? { host: record.host } : {}),
      volume,
      created_at: new Date().toISOString(),
      size_bytes: bytes,
      language: record.language,
      source_sandbox: record.id
    }
    await this.store.saveNamed(KIND, snapshot)
    this.log.info({ sandbox: record.id, snapshot: name, bytes }, 'snapshot taken')
    return snapshot
  }

  async list (principal: Principal): Promise<SnapshotRecord[]> {
    const list = await this.store.listNamed<SnapshotRecord>(KIND, principal.name)
    return list.sort((a, b) => b.created_at.localeCompare(a.created_at))
  }

  async get (principal: Principal, name: string): Promise<SnapshotRecord> {
    const snapshot = await this.store.getNamed<SnapshotRecord>(KIND, principal.name, name)
    if (!snapshot) throw new AppError(404, 'snapshot_not_found', `This key has no snapshot named ${name}`)
    return snapshot
  }

  /** Deletes a snapshot and its volume (a sandbox started from it keeps its own copy of the files). */
  async delete (principal: Principal, name: string): Promise<void> {
    const snapshot = await this.get(principal, name)
    await this.sandboxes.poolOn(snapshot.host).containers.removeVolume(snapshot.volume)
    await this.store.deleteNamed(KIND, principal.name, name)
  }

  /**
   * `count` new sandboxes of the key with the sandbox's workspace, from one copy of it: each answered with its record
   * or its own error (the key's limit, the host's capacity), in order. Each counts like any new sandbox.
   */
  async fork (record: SandboxRecord, count: number, principal: Principal): Promise<Array<{ record: SandboxRecord } | { error: unknown }>> {
    if (count > this.opts.maxFork) throw new AppError(400, 'validation_error', `body/count must be at most ${this.opts.maxFork}`)
    const { volume } = await this.keep(record, 'fork')
    try {
      const spec = {
        language: record.language,
        resources: { cpus: record.cpus, memory_mb: record.memory_mb },
        timeout_s: record.timeout_s,
        ...(record.on_timeout ? { on_timeout: record.on_timeout } : {}),
        metadata: record.metadata,
        network: record.network?.length ? { allow: record.network } : 'none' as const,
        ...(record.volumes?.length ? { volumes: record.volumes } : {})
      }
      const from = { volume, ...(record.host ? { host: record.host } : {}) }
      return await Promise.all(Array.from({ length: count }, async () => {
        try {
          return { record: await this.sandboxes.create(principal, spec, null, undefined, record.network_trusted === true, from) }
        } catch (error) {
          return { error }
        }
      }))
    } finally {
      await this.sandboxes.poolOn(record.host).containers.removeVolume(volume)
        .catch((err: Error) => this.log.warn({ sandbox: record.id, volume, err: err.message }, 'could not remove a fork\'s volume'))
    }
  }

  /** Packs a sandbox's workspace into a new volume on its host (resuming it first when paused). */
  private async keep (record: SandboxRecord, purpose: 'snapshot' | 'fork'): Promise<{ volume: string, bytes: number }> {
    const handle = await this.sandboxes.handle(record)
    if (handle.busy) throw new AppError(409, 'sandbox_busy', `The sandbox is running code; take the ${purpose} once the run ends`)
    try {
      return await this.sandboxes.poolOn(record.host).containers.pack(handle, purpose, record.id, randomBytes(9).toString('base64url'))
    } catch (err) {
      if (!(err instanceof PauseFailed)) throw err
      throw new AppError(409, `${purpose}_failed`, `The sandbox's workspace could not be kept (${err.message})`, 'sandbox_error')
    }
  }
}
