// The audit trail: who (a key's name, never the key) did what to which sandbox or session, when and from where.
// Entries go to a Redis stream shared by every replica, bounded by length (AUDIT_MAX_ENTRIES) and age
// (AUDIT_RETENTION_S); without Redis, to a ring in this process. The request a change came from (its key name and
// address) is carried by an AsyncLocalStorage context the audit plugin opens per request; changes with no request
// behind them (the reaper, a shutdown) are the `system`'s. Details are short scalars: no secret, no key, and at most
// a short prefix of any code.
import { AsyncLocalStorage } from 'node:async_hooks'
import type { Redis } from 'ioredis'

export interface AuditEntry {
  id: string
  at: string
  /** The key's name (`system` for the server's own doings). */
  key: string
  role: string
  action: string
  /** What it was done to: a sandbox, session or setting id. */
  target: string | null
  /** The caller's address. */
  ip: string | null
  detail: Record<string, string | number | boolean | null>
}

export interface AuditFilter { key?: string, action?: string, target?: string, since?: number, until?: number }

interface Caller { key: string, role: string, ip: string }

const STREAM = 'audit'
/** Code kept in an entry: a prefix this long, on one line. */
export const CODE_PREFIX = 60
/** The most entries one listing scans to fill a page, whatever the filter. */
const SCAN_LIMIT = 20_000

const scalar = (v: unknown): string | number | boolean | null => {
  if (v === null || v === undefined) return null
  if (typeof v === 'number' || typeof v === 'boolean') return v
  return String(v).replace(/\s+/g, ' ').slice(0, 200)
}

/**
 * Code as the trail may keep it: its first characters on one line, with string literals and long token-like runs
 * (what an inline credential looks like) blanked, so that a key typed into code does not reach the trail.
 */
export const codePrefix = (code: string): string => {
  const line = code.slice(0, 4 * CODE_PREFIX)
    .replace(/(["'`])(?:\\.|(?!\1)[^\\\n])*\1/g, '$1…$1')
    .replace(/[A-Za-z0-9_+/=-]{24,}/g, '…')
    .replace(/\s+/g, ' ').trim()
  return line.length > CODE_PREFIX ? `${line.slice(0, CODE_PREFIX)}…` : line
}

export class AuditTrail {
  readonly context = new AsyncLocalStorage<Caller>()
  private readonly ring: AuditEntry[] = []
  private added = 0

  constructor (private readonly redis: Redis | null, private readonly opts: { maxEntries: number, retentionS: number, log?: { warn: (o: object, m: string) => void } }) {}

  /** Runs `fn` as the given caller: what it records is theirs. */
  as<T> (caller: Caller, fn: () => T): T { return this.context.run(caller, fn) }

  /** Records an action now; never throws (the trail must not fail what it watches). */
  record (action: string, target: string | null, detail: Record<string, unknown> = {}, caller?: Partial<Caller>): void {
    const who = { ...(this.context.getStore() ?? { key: 'system', role: 'system', ip: '' }), ...caller }
    const entry: AuditEntry = {
      id: '',
      at: new Date().toISOString(),
      key: who.key,
      role: who.role,
      action,
      target,
      ip: who.ip || null,
      detail: Object.fromEntries(Object.entries(detail).map(([k, v]) => [k, scalar(v)]))
    }
    void this.write(entry).catch((err: Error) => { this.opts.log?.warn({ err: err.message }, 'an audit entry was not written') })
  }

  private async write (entry: AuditEntry): Promise<void> {
    if (!this.redis) {
      entry.id = `${Date.now()}-${this.added++}`
      this.ring.push(entry)
      if (this.ring.length > this.opts.maxEntries) this.ring.splice(0, this.ring.length - this.opts.maxEntries)
      return
    }
    const { id: _id, ...body } = entry
    await this.redis.xadd(STREAM, 'MAXLEN', '~', String(this.opts.maxEntries), '*', 'e', JSON.stringify(body))
    // Age: trimmed now and then (every 100 entries), not on every write.
    if (++this.added % 100 === 1) await this.redis.xtrim(STREAM, 'MINID', '~', String(Date.now() - this.opts.retentionS * 1000))
  }

  private matches (e: AuditEntry, f: AuditFilter): boolean {
    const t = Date.parse(e.at)
    return (!f.key || e.key === f.key) && (!f.action || e.action === f.action || e.action.startsWith(`${f.action}.`)) &&
      (!f.target || e.target === f.target) && (f.since === undefined || t >= f.since) && (f.until === undefined || t <= f.until) &&
      t >= Date.now() - this.opts.retentionS * 1000
  }

  /** Entries newest first, `limit` of them, older than the `before` id when paging. */
  async list (filter: AuditFilter, limit: number, before?: string): Promise<{ entries: AuditEntry[], next: string | null }> {
    const entries: AuditEntry[] = []
    let scanned = 0
    let cursor = before ? `(${before}` : '+'
    if (!this.redis) {
      const older = before ? this.ring.filter(e => e.id < before) : this.ring
      for (let i = older.length - 1; i >= 0 && entries.length < limit; i--) if (this.matches(older[i]!, filter)) entries.push(older[i]!)
      return { entries, next: entries.length === limit ? entries[entries.length - 1]!.id : null }
    }
    while (entries.length < limit && scanned < SCAN_LIMIT) {
      const batch = await this.redis.xrevrange(STREAM, cursor, '-', 'COUNT', 500)
      if (!batch.length) return { entries, next: null }
      for (const [id, fields] of batch) {
        scanned++
        const entry = { id, ...JSON.parse(fields[1] ?? '{}') as Omit<AuditEntry, 'id'> }
        if (this.matches(entry, filter)) entries.push(entry)
        if (entries.length >= limit) return { entries, next: id }
      }
      cursor = `(${batch[batch.length - 1]![0]}`
    }
    return { entries, next: entries.length ? entries[entries.length - 1]!.id : null }
  }

  /** Every matching entry, oldest first (the JSON lines export), in pages. */
  async * all (filter: AuditFilter): AsyncGenerator<AuditEntry> {
    if (!this.redis) {
      for (const e of this.ring) if (this.matches(e, filter)) yield e
      return
    }
    let cursor = '-'
    for (;;) {
      const batch = await this.redis.xrange(STREAM, cursor, '+', 'COUNT', 500)
      if (!batch.length) return
      for (const [id, fields] of batch) {
        const entry = { id, ...JSON.parse(fields[1] ?? '{}') as Omit<AuditEntry, 'id'> }
        if (this.matches(entry, filter)) yield entry
      }
      cursor = `(${batch[batch.length - 1]![0]}`
    }
  }
}
