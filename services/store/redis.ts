import { randomBytes } from 'node:crypto'
import type { Redis, Result } from 'ioredis'
import type { Session, Message } from '../../schemas/sessions.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { DependencyError } from '../errors.js'
import { REMOVED_TTL_S, type Named, type Page, type PageRequest, type Store } from './types.js'

const sessionKey = (id: string) => `session:${id}`
const messagesKey = (id: string) => `messages:${id}`
const messageBytesKey = (id: string) => `messages-bytes:${id}`

/**
 * Appends to a session's message list and keeps the list within a byte budget: past it the oldest messages go (the
 * newest is always kept). KEYS: list, its byte count; ARGV: budget, ttl, messages... Returns the list's length.
 */
const APPEND_CAPPED = `
local added = 0
if redis.call('EXISTS', KEYS[2]) == 0 then -- the count expired before the list (reads renew only the list): recount
  for _, m in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do added = added + #m end
end
for i = 3, #ARGV do added = added + #ARGV[i] end
redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
local size = redis.call('INCRBY', KEYS[2], added)
local budget = tonumber(ARGV[1])
while size > budget and redis.call('LLEN', KEYS[1]) > 1 do
  local dropped = redis.call('LPOP', KEYS[1])
  size = redis.call('DECRBY', KEYS[2], #dropped)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('LLEN', KEYS[1])`

declare module 'ioredis' {
  interface RedisCommander<Context> {
    appendCapped: (list: string, bytes: string, budget: number, ttlS: number, ...messages: string[]) => Result<number, Context>
  }
}
const ownerKey = (owner: string | null) => owner === null ? 'all-sessions' : `sessions:${owner}`
const SANDBOXES = 'sandboxes'
/** + a sandbox id: the owner of a sandbox removed lately. */
const REMOVED = 'sandbox-removed:'
/** + a kind: a hash of the named records of that kind (snapshots, volumes), by owner and name. */
const NAMED = 'named:'
type TouchCommand = (key: string, id: string, at: string) => Promise<number>

/**
 * Sessions are JSON strings with a TTL that every read or write renews; each owner has a sorted set of
 * session ids by creation time (expired ids are pruned as they are met); messages are a list with the same TTL.
 */
export class RedisStore implements Store {
  readonly kind = 'redis'

  /** `maxMessageBytes`: a session's stored messages are kept within this many bytes (SESSION_STORED_BYTES). */
  constructor (private readonly redis: Redis, private readonly ttlS: number, private readonly maxMessageBytes = 16 * 1024 * 1024) {
    if (!(redis as { appendCapped?: unknown }).appendCapped) redis.defineCommand('appendCapped', { numberOfKeys: 2, lua: APPEND_CAPPED })
    // Sent by its hash (EVALSHA) after the first call.
    if (!('touchSandbox' in redis)) {
      redis.defineCommand('touchSandbox', {
        numberOfKeys: 1,
        lua: 'local raw = redis.call("hget", KEYS[1], ARGV[1]) if not raw then return 0 end ' +
          'local r = cjson.decode(raw) r.last_used_at = ARGV[2] redis.call("hset", KEYS[1], ARGV[1], cjson.encode(r)) return 1'
      })
    }
  }

  private async guard<T> (what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      throw new DependencyError('redis', `redis ${what} failed: ${(err as Error).message}`, { cause: err })
    }
  }

  async ping (): Promise<void> {
    await this.guard('ping', () => this.redis.ping())
  }

  async saveSession (session: Session): Promise<void> {
    await this.guard('save', () => this.redis.multi()
      .set(sessionKey(session.id), JSON.stringify(session), 'EX', this.ttlS)
      .zadd(ownerKey(session.owner), Date.parse(session.created_at), session.id)
      .zadd(ownerKey(null), Date.parse(session.created_at), session.id)
      .expire(messagesKey(session.id), this.ttlS)
      .exec())
  }

  async getSession (id: string): Promise<Session | null> {
    // Two plain commands in one write (auto-pipelining): reading and renewing need no transaction.
    const [raw] = await this.guard('get', () => Promise.all([this.redis.getex(sessionKey(id), 'EX', this.ttlS), this.redis.expire(messagesKey(id), this.ttlS)]))
    return raw ? JSON.parse(raw) as Session : null
  }

  async deleteSession (session: Session): Promise<void> {
    await this.guard('delete', () => this.redis.multi()
      .del(sessionKey(session.id), messagesKey(session.id), messageBytesKey(session.id))
      .zrem(ownerKey(session.owner), session.id)
      .zrem(ownerKey(null), session.id)
      .exec())
  }

  async listSessions (owner: string | null, page: PageRequest): Promise<Page<Session>> {
    return await this.guard('list', async () => {
      const items: Session[] = []
      let offset = page.offset
      // Expired ids are removed as they are found, so loop until the page is full or the index is exhausted.
      while (items.length <= page.limit) {
        const ids = await this.redis.zrevrange(ownerKey(owner), offset, offset + page.limit - items.length)
        if (ids.length === 0) break
        const raws = await this.redis.mget(ids.map(sessionKey))
        const expired = ids.filter((_, i) => raws[i] === null)
        if (expired.length) await this.redis.zrem(ownerKey(owner), ...expired)
        for (const raw of raws) if (raw) items.push(JSON.parse(raw) as Session)
        offset += ids.length - expired.length
        if (expired.length === 0) break
      }
      return { items: items.slice(0, page.limit), hasMore: items.length > page.limit }
    })
  }

  async appendMessages (id: string, messages: Message[]): Promise<number> {
    if (messages.length === 0) return 0
    return await this.guard('append', () => this.redis.appendCapped(messagesKey(id), messageBytesKey(id), this.maxMessageBytes, this.ttlS, ...messages.map(m => JSON.stringify(m))))
  }

  async listMessages (id: string, page: PageRequest): Promise<Page<Message>> {
    const raws = await this.guard('messages', () => this.redis.lrange(messagesKey(id), page.offset, page.offset + page.limit))
    return { items: raws.slice(0, page.limit).map(r => JSON.parse(r) as Message), hasMore: raws.length > page.limit }
  }

  async saveSandbox (record: SandboxRecord): Promise<void> {
    await this.guard('save sandbox', () => this.redis.hset(SANDBOXES, record.id, JSON.stringify(record)))
  }

  async getSandbox (id: string): Promise<SandboxRecord | null> {
    const raw = await this.guard('get sandbox', () => this.redis.hget(SANDBOXES, id))
    return raw ? JSON.parse(raw) as SandboxRecord : null
  }

  async touchSandbox (id: string, at: string): Promise<void> {
    // One round trip, and only if the record still exists (a touch after a delete must not bring it back).
    await this.guard('touch sandbox', () => (this.redis as Redis & { touchSandbox: TouchCommand }).touchSandbox(SANDBOXES, id, at))
  }

  async deleteSandbox (id: string, owner?: string): Promise<void> {
    await this.guard('delete sandbox', async () => {
      if (owner === undefined) return await this.redis.hdel(SANDBOXES, id)
      return await this.redis.multi().hdel(SANDBOXES, id).set(`${REMOVED}${id}`, owner, 'EX', REMOVED_TTL_S).exec()
    })
  }

  async saveNamed<T extends Named> (kind: string, record: T): Promise<void> {
    await this.guard(`save ${kind}`, () => this.redis.hset(`${NAMED}${kind}`, `${record.owner}\n${record.name}`, JSON.stringify(record)))
  }

  async getNamed<T extends Named> (kind: string, owner: string, name: string): Promise<T | null> {
    const raw = await this.guard(`get ${kind}`, () => this.redis.hget(`${NAMED}${kind}`, `${owner}\n${name}`))
    return raw ? JSON.parse(raw) as T : null
  }

  async listNamed<T extends Named> (kind: string, owner?: string): Promise<T[]> {
    const all = await this.guard(`list ${kind}`, () => this.redis.hvals(`${NAMED}${kind}`))
    return all.map(r => JSON.parse(r) as T).filter(r => owner === undefined || r.owner === owner)
  }

  async deleteNamed (kind: string, owner: string, name: string): Promise<boolean> {
    return await this.guard(`delete ${kind}`, () => this.redis.hdel(`${NAMED}${kind}`, `${owner}\n${name}`)) > 0
  }

  async removedSandboxOwner (id: string): Promise<string | null> {
    return await this.guard('removed sandbox', () => this.redis.get(`${REMOVED}${id}`))
  }

  async listSandboxes (owner?: string): Promise<SandboxRecord[]> {
    const all = await this.guard('list sandboxes', () => this.redis.hvals(SANDBOXES))
    return all.map(r => JSON.parse(r) as SandboxRecord).filter(r => owner === undefined || r.owner === owner)
  }

  async lock (name: string, owner: string, ttlMs: number): Promise<boolean> {
    // Take it when free, extend it when ours: compare and set in one step.
    const taken = await this.guard('lock', () => this.redis.eval(
      'local held = redis.call("get", KEYS[1]) if held and held ~= ARGV[1] then return 0 end redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2]) return 1',
      1, `lock:${name}`, owner, String(ttlMs)))
    return taken === 1
  }

  async lockHolder (name: string): Promise<string | null> {
    return await this.guard('lock holder', () => this.redis.get(`lock:${name}`))
  }

  async unlock (name: string, owner: string): Promise<void> {
    // Delete only our own lock: compare and delete in one step.
    await this.guard('unlock', () => this.redis.eval('if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0', 1, `lock:${name}`, owner))
  }

  async sharedSecret (name: string): Promise<string> {
    const key = `secret:${name}`
    await this.guard('shared secret', () => this.redis.set(key, randomBytes(32).toString('base64url'), 'NX'))
    return (await this.guard('shared secret', () => this.redis.get(key)))!
  }

  async close (): Promise<void> {}
}
