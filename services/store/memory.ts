import { randomBytes } from 'node:crypto'
import type { Session, Message } from '../../schemas/sessions.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { pageOf, REMOVED_TTL_S, type Named, type Page, type PageRequest, type Store } from './types.js'

interface Entry { session: Session, messages: Message[], expiresAt: number }

/** The in-process store for a single server without Redis: same behaviour, nothing survives a restart. */
export class MemoryStore implements Store {
  readonly kind = 'memory'
  private readonly sessions = new Map<string, Entry>()
  private readonly sandboxes = new Map<string, SandboxRecord>()
  private sweptAt = Date.now()

  constructor (private readonly ttlMs: number, private readonly maxMessageBytes = 16 * 1024 * 1024) {}

  /** Drops expired sessions nobody asks for again (as Redis's TTL would), at most once per sweep interval. */
  private sweep (): void {
    const now = Date.now()
    if (now - this.sweptAt < Math.min(60_000, this.ttlMs)) return
    this.sweptAt = now
    for (const [id, entry] of this.sessions) if (entry.expiresAt <= now) this.sessions.delete(id)
  }

  async ping (): Promise<void> {}

  private live (id: string): Entry | null {
    const entry = this.sessions.get(id)
    if (!entry) return null
    if (entry.expiresAt <= Date.now()) {
      this.sessions.delete(id)
      return null
    }
    entry.expiresAt = Date.now() + this.ttlMs
    return entry
  }

  async saveSession (session: Session): Promise<void> {
    this.sweep()
    const messages = this.live(session.id)?.messages ?? []
    this.sessions.set(session.id, { session: structuredClone(session), messages, expiresAt: Date.now() + this.ttlMs })
  }

  async getSession (id: string): Promise<Session | null> {
    const entry = this.live(id)
    return entry ? structuredClone(entry.session) : null
  }

  async deleteSession (session: Session): Promise<void> {
    this.sessions.delete(session.id)
  }

  async listSessions (owner: string | null, page: PageRequest): Promise<Page<Session>> {
    const now = Date.now()
    const own = [...this.sessions.values()]
      .filter(e => (owner === null || e.session.owner === owner) && e.expiresAt > now)
      .map(e => structuredClone(e.session))
      .sort((a, b) => b.created_at.localeCompare(a.created_at))
    return pageOf(own, page)
  }

  async appendMessages (id: string, messages: Message[]): Promise<number> {
    const entry = this.live(id)
    if (!entry) return 0
    entry.messages.push(...structuredClone(messages))
    // The same budget as the Redis store: the oldest messages go once the session's exceed it (the newest stays).
    let size = entry.messages.reduce((n, m) => n + JSON.stringify(m).length, 0)
    while (entry.messages.length > 1 && size > this.maxMessageBytes) size -= JSON.stringify(entry.messages.shift()).length
    return entry.messages.length
  }

  async listMessages (id: string, page: PageRequest): Promise<Page<Message>> {
    return pageOf(this.live(id)?.messages ?? [], page)
  }

  async saveSandbox (record: SandboxRecord): Promise<void> { this.sandboxes.set(record.id, structuredClone(record)) }
  async getSandbox (id: string): Promise<SandboxRecord | null> {
    const record = this.sandboxes.get(id)
    return record ? structuredClone(record) : null
  }

  async touchSandbox (id: string, at: string): Promise<void> {
    const record = this.sandboxes.get(id)
    if (record) record.last_used_at = at
  }

  private readonly removed = new Map<string, { owner: string, until: number }>()
  async deleteSandbox (id: string, owner?: string): Promise<void> {
    this.sandboxes.delete(id)
    if (owner !== undefined) this.removed.set(id, { owner, until: Date.now() + REMOVED_TTL_S * 1000 })
  }

  private readonly named = new Map<string, Map<string, Named>>()
  async saveNamed<T extends Named> (kind: string, record: T): Promise<void> {
    if (!this.named.has(kind)) this.named.set(kind, new Map())
    this.named.get(kind)!.set(`${record.owner}\n${record.name}`, structuredClone(record))
  }

  async getNamed<T extends Named> (kind: string, owner: string, name: string): Promise<T | null> {
    const record = this.named.get(kind)?.get(`${owner}\n${name}`)
    return record ? structuredClone(record) as T : null
  }

  async listNamed<T extends Named> (kind: string, owner?: string): Promise<T[]> {
    return [...this.named.get(kind)?.values() ?? []].filter(r => owner === undefined || r.owner === owner).map(r => structuredClone(r) as T)
  }

  async deleteNamed (kind: string, owner: string, name: string): Promise<boolean> {
    return this.named.get(kind)?.delete(`${owner}\n${name}`) ?? false
  }

  async removedSandboxOwner (id: string): Promise<string | null> {
    const removed = this.removed.get(id)
    return removed && removed.until > Date.now() ? removed.owner : null
  }

  async listSandboxes (owner?: string): Promise<SandboxRecord[]> {
    return [...this.sandboxes.values()].filter(r => owner === undefined || r.owner === owner).map(r => structuredClone(r))
  }

  private readonly locks = new Map<string, { owner: string, until: number }>()
  private readonly secrets = new Map<string, string>()
  async lock (name: string, owner: string, ttlMs: number): Promise<boolean> {
    const held = this.locks.get(name)
    if (held && held.until > Date.now() && held.owner !== owner) return false
    this.locks.set(name, { owner, until: Date.now() + ttlMs })
    return true
  }

  async unlock (name: string, owner: string): Promise<void> {
    if (this.locks.get(name)?.owner === owner) this.locks.delete(name)
  }

  async sharedSecret (name: string): Promise<string> {
    let secret = this.secrets.get(name)
    if (!secret) this.secrets.set(name, secret = randomBytes(32).toString('base64url'))
    return secret
  }

  async lockHolder (name: string): Promise<string | null> {
    const held = this.locks.get(name)
    return held && held.until > Date.now() ? held.owner : null
  }

  async close (): Promise<void> {}
}
