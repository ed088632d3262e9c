import type { Session, Message } from '../../schemas/sessions.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'

export interface Page<T> { items: T[], hasMore: boolean }
export interface PageRequest { limit: number, offset: number }

/** Sessions, their messages and sandbox records; Redis in production, memory on a laptop. */
export interface Store {
  readonly kind: 'redis' | 'memory'
  ping (): Promise<void>
  /** Writes a session (new or changed) and refreshes its expiry. */
  saveSession (session: Session): Promise<void>
  /** Reads a session and refreshes its expiry; null when missing or expired. */
  getSession (id: string): Promise<Session | null>
  deleteSession (session: Session): Promise<void>
  /** One owner's sessions, or every session with owner null; newest first. */
  listSessions (owner: string | null, page: PageRequest): Promise<Page<Session>>
  /** Appends messages to the session's history; returns the new length. */
  appendMessages (id: string, messages: Message[]): Promise<number>
  listMessages (id: string, page: PageRequest): Promise<Page<Message>>
  saveSandbox (record: SandboxRecord): Promise<void>
  getSandbox (id: string): Promise<SandboxRecord | null>
  /** Sets a sandbox's last_used_at, unless the sandbox was deleted meanwhile (a touch never brings a record back). */
  touchSandbox (id: string, at: string): Promise<void>
  /** Deletes a sandbox's record; given its owner, remembers for a day that it was removed (removedSandboxOwner). */
  deleteSandbox (id: string, owner?: string): Promise<void>
  /** The owner of a sandbox removed within the last day (so that a resume can answer 410, not 404); else null. */
  removedSandboxOwner (id: string): Promise<string | null>
  /** Named things a key keeps (`kind`: snapshot, volume), one per owner and name. */
  saveNamed<T extends Named> (kind: string, record: T): Promise<void>
  getNamed<T extends Named> (kind: string, owner: string, name: string): Promise<T | null>
  /** A kind's records of one owner (or every owner's). */
  listNamed<T extends Named> (kind: string, owner?: string): Promise<T[]>
  /** Whether there was one to delete. */
  deleteNamed (kind: string, owner: string, name: string): Promise<boolean>
  listSandboxes (owner?: string): Promise<SandboxRecord[]>
  /** Takes a lock, or extends it when `owner` holds it already, unless another owner holds it; it expires after ttlMs. */
  lock (name: string, owner: string, ttlMs: number): Promise<boolean>
  unlock (name: string, owner: string): Promise<void>
  /** Who holds the lock, or null. */
  lockHolder (name: string): Promise<string | null>
  /** A random secret every replica reads alike (made by the first to ask; signs port URLs). */
  sharedSecret (name: string): Promise<string>
  close (): Promise<void>
}

/** What Store's named records have. */
export interface Named { owner: string, name: string }

/** How long a removed sandbox is remembered (Store.removedSandboxOwner). */
export const REMOVED_TTL_S = 86400

export const pageOf = <T>(all: T[], page: PageRequest): Page<T> => ({
  items: all.slice(page.offset, page.offset + page.limit),
  hasMore: all.length > page.offset + page.limit
})
