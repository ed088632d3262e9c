// One persistent sandbox per named context of a key (a chat of Open WebUI, a conversation of LibreChat, a user and
// chat of an Open Terminal client): made on first use, paused when idle (on_timeout: pause), found again by name from
// any replica, made afresh once it was removed. Every adapter that keeps "a workspace per conversation" asks here, so
// the rule (who may see it, what is made, when a new one replaces the old) is written once.
import type { Principal } from '../auth.js'
import type { CreateSandbox, SandboxRecord } from '../../schemas/sandboxes.js'
import type { SandboxService } from './service.js'
import type { Store } from '../store/types.js'

interface ContextRecord { owner: string, name: string, sandbox_id: string }

/** Past this many records of one kind, a key's records whose sandbox is gone are dropped (contexts come and go). */
export const PRUNE_ABOVE = 64

export class ContextSandboxes {
  /** First uses in flight in this process: two calls of one new context wait for one sandbox, not two. */
  private readonly making = new Map<string, Promise<SandboxRecord>>()

  constructor (private readonly sandboxes: SandboxService, private readonly store: Store) {}

  /** The context's sandbox, or null when it has none (never made, or removed since). */
  async find (principal: Principal, kind: string, name: string): Promise<SandboxRecord | null> {
    const known = await this.store.getNamed<ContextRecord>(kind, principal.name, name)
    return known ? await this.store.getSandbox(known.sandbox_id) : null
  }

  /**
   * The context's sandbox, made with `spec` (on_timeout pause unless it says otherwise) when it has none. `status`
   * says which: clients that keep state across calls (LibreChat's runtime status) report it.
   */
  async get (principal: Principal, kind: string, name: string, spec: CreateSandbox, signal?: AbortSignal): Promise<{ record: SandboxRecord, status: 'new' | 'reused' }> {
    const existing = await this.find(principal, kind, name)
    if (existing) return { record: existing, status: 'reused' }
    const key = `${kind}\0${principal.name}\0${name}`
    const pending = this.making.get(key)
    if (pending) return { record: await pending, status: 'reused' }
    const made = (async () => {
      const record = await this.sandboxes.create(principal, { on_timeout: 'pause', ...spec }, null, signal)
      await this.store.saveNamed<ContextRecord>(kind, { owner: principal.name, name, sandbox_id: record.id })
      void this.prune(principal, kind).catch(() => {})
      return record
    })()
    this.making.set(key, made)
    try {
      return { record: await made, status: 'new' }
    } finally {
      this.making.delete(key)
    }
  }

  /**
   * Drops a key's records of `kind` that name a removed sandbox, once it has more than PRUNE_ABOVE: every chat or
   * conversation leaves one, and their sandboxes go (idle, paused past their TTL), so the records would only grow.
   * `sandboxOf` reads a record's sandbox id (other kinds keyed by sandbox, like Open Terminal's working directories).
   */
  async prune (principal: Principal, kind: string, sandboxOf: (record: Record<string, unknown>) => string = r => String(r.sandbox_id)): Promise<number> {
    const records = await this.store.listNamed<ContextRecord & Record<string, unknown>>(kind, principal.name)
    if (records.length <= PRUNE_ABOVE) return 0
    let dropped = 0
    for (const record of records) {
      if (await this.store.getSandbox(sandboxOf(record))) continue
      if (await this.store.deleteNamed(kind, principal.name, record.name)) dropped++
    }
    return dropped
  }
}
