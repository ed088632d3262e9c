import { EventEmitter, on } from 'node:events'
import type { Redis, Result } from 'ioredis'
import type { RunEvent } from '../schemas/chat.js'
import { DependencyError } from './errors.js'

export interface LoggedEvent { id: string, event: RunEvent }

/** Each session's run events, numbered in order; every reader (SSE, WebSocket, any replica) can resume after an id. */
export interface EventLog {
  append (sessionId: string, event: RunEvent): Promise<string>
  /** Appends several events in order, in one round trip; their ids in the same order. */
  appendMany (sessionId: string, events: RunEvent[]): Promise<string[]>
  /** Events after `after` (all when undefined), then new ones as they come, until `signal` aborts. */
  follow (sessionId: string, after: string | undefined, signal: AbortSignal): AsyncIterable<LoggedEvent>
  delete (sessionId: string): Promise<void>
  /** The id of the newest event, or null for an empty log. */
  lastId (sessionId: string): Promise<string | null>
}

const streamKey = (sessionId: string) => `events:${sessionId}`
const bytesKey = (sessionId: string) => `events-bytes:${sessionId}`

/**
 * Appends events to a session's stream and keeps it within a byte budget (and about `maxlen` entries): past it the
 * oldest events go, never the newest. KEYS: stream, its byte count; ARGV: budget, ttl, maxlen, events... Returns ids.
 */
const APPEND_CAPPED = `
local budget, ttl, maxlen = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ids, added = {}, 0
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do added = added + #e[2][2] end
end
for i = 4, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i])
  added = added + #ARGV[i]
end
local size = redis.call('INCRBY', KEYS[2], added)
while size > budget do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 64)
  if #oldest <= 1 then break end
  local freed = 0
  for j = 1, #oldest - 1 do
    redis.call('XDEL', KEYS[1], oldest[j][1])
    freed = freed + #oldest[j][2][2]
    if size - freed <= budget then break end
  end
  size = redis.call('DECRBY', KEYS[2], freed)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return ids`

declare module 'ioredis' {
  interface RedisCommander<Context> {
    appendEvents: (stream: string, bytes: string, budget: number, ttlS: number, maxLength: number, ...events: string[]) => Result<string[], Context>
  }
}

/**
 * A Redis Stream per session, bounded in length and in bytes (SESSION_STORED_BYTES: a follower resuming from an event
 * that was dropped starts at the oldest kept); followers block on XREAD with a connection of their own.
 */
export class RedisEventLog implements EventLog {
  constructor (private readonly redis: Redis, private readonly maxLength = 10_000, private readonly ttlS = 7 * 24 * 3600, private readonly maxBytes = 16 * 1024 * 1024) {
    if (!(redis as { appendEvents?: unknown }).appendEvents) redis.defineCommand('appendEvents', { numberOfKeys: 2, lua: APPEND_CAPPED })
  }

  async append (sessionId: string, event: RunEvent): Promise<string> {
    return (await this.appendMany(sessionId, [event]))[0]
  }

  async appendMany (sessionId: string, events: RunEvent[]): Promise<string[]> {
    // One script per batch: the appends, the byte budget and the expiry in one command.
    try {
      return await this.redis.appendEvents(streamKey(sessionId), bytesKey(sessionId), this.maxBytes, this.ttlS, this.maxLength, ...events.map(e => JSON.stringify(e)))
    } catch (err) {
      throw new DependencyError('redis', `event log append failed: ${(err as Error).message}`, { cause: err })
    }
  }

  async * follow (sessionId: string, after: string | undefined, signal: AbortSignal): AsyncIterable<LoggedEvent> {
    const reader = this.redis.duplicate({ enableOfflineQueue: true, maxRetriesPerRequest: null, commandTimeout: undefined })
    const stop = () => reader.disconnect()
    signal.addEventListener('abort', stop, { once: true })
    let last = after ?? '0-0'
    try {
      while (!signal.aborted) {
        const result = await reader.xread('COUNT', 500, 'BLOCK', 5000, 'STREAMS', streamKey(sessionId), last).catch((err: Error) => {
          if (signal.aborted) return null
          throw err
        })
        for (const [, entries] of result ?? []) {
          for (const [id, fields] of entries) {
            last = id
            yield { id, event: JSON.parse(fields[1]) as RunEvent }
          }
        }
      }
    } finally {
      signal.removeEventListener('abort', stop)
      reader.disconnect()
    }
  }

  async delete (sessionId: string): Promise<void> {
    await this.redis.del(streamKey(sessionId), bytesKey(sessionId))
  }

  async lastId (sessionId: string): Promise<string | null> {
    try {
      const [newest] = await this.redis.xrevrange(streamKey(sessionId), '+', '-', 'COUNT', 1)
      return newest?.[0] ?? null
    } catch (err) {
      throw new DependencyError('redis', `event log read failed: ${(err as Error).message}`, { cause: err })
    }
  }
}

/** The same in process, for a server without Redis. */
export class MemoryEventLog implements EventLog {
  private readonly logs = new Map<string, LoggedEvent[]>()
  private readonly sizes = new Map<string, number>()
  /** When each log was last appended to: a log untouched for the TTL goes, as the Redis log's key expires. */
  private readonly touched = new Map<string, number>()
  private readonly bus = new EventEmitter().setMaxListeners(0)
  private counter = 0
  private sweptAt = Date.now()

  constructor (private readonly maxBytes = 16 * 1024 * 1024, private readonly ttlMs = 7 * 24 * 3600 * 1000) {}

  /** The session's log, or nothing when it has expired (then it is dropped). */
  private live (sessionId: string): LoggedEvent[] | undefined {
    const at = this.touched.get(sessionId)
    if (at !== undefined && Date.now() - at >= this.ttlMs) this.drop(sessionId)
    return this.logs.get(sessionId)
  }

  private sweep (now: number): void {
    if (now - this.sweptAt < Math.min(60_000, this.ttlMs)) return
    this.sweptAt = now
    for (const [sessionId, at] of this.touched) if (now - at >= this.ttlMs) this.drop(sessionId)
  }

  private drop (sessionId: string): void {
    this.logs.delete(sessionId)
    this.sizes.delete(sessionId)
    this.touched.delete(sessionId)
  }

  /** Sessions with a log in memory (for tests and the monitor). */
  get size (): number { return this.logs.size }

  async append (sessionId: string, event: RunEvent): Promise<string> {
    const now = Date.now()
    this.sweep(now)
    this.live(sessionId)
    this.touched.set(sessionId, now)
    const entry = { id: `${Date.now()}-${++this.counter}`, event }
    const log = this.logs.get(sessionId) ?? []
    log.push(entry)
    let size = (this.sizes.get(sessionId) ?? 0) + JSON.stringify(event).length
    while (log.length > 1 && (log.length > 10_000 || size > this.maxBytes)) size -= JSON.stringify(log.shift()!.event).length
    this.sizes.set(sessionId, size)
    this.logs.set(sessionId, log)
    this.bus.emit(sessionId, entry)
    return entry.id
  }

  async * follow (sessionId: string, after: string | undefined, signal: AbortSignal): AsyncIterable<LoggedEvent> {
    const live = on(this.bus, sessionId, { signal })
    const log = this.live(sessionId) ?? []
    const start = after === undefined ? 0 : log.findIndex(e => e.id === after) + 1
    let last = after
    for (const entry of log.slice(start)) {
      last = entry.id
      yield entry
    }
    try {
      for await (const [entry] of live as AsyncIterable<[LoggedEvent]>) {
        if (last !== undefined && compareIds(entry.id, last) <= 0) continue
        yield entry
      }
    } catch (err) {
      if (!signal.aborted) throw err
    }
  }

  async appendMany (sessionId: string, events: RunEvent[]): Promise<string[]> {
    const ids: string[] = []
    for (const event of events) ids.push(await this.append(sessionId, event))
    return ids
  }

  async delete (sessionId: string): Promise<void> {
    this.drop(sessionId)
  }

  async lastId (sessionId: string): Promise<string | null> {
    return this.live(sessionId)?.at(-1)?.id ?? null
  }
}

function compareIds (a: string, b: string): number {
  const [a1, a2] = a.split('-').map(Number)
  const [b1, b2] = b.split('-').map(Number)
  return a1 - b1 || a2 - b2
}

/**
 * One run's appender: events are written in the order they were given; those that queue while a write is under way
 * go together in the next one (one round trip for many chunks). A failed write fails only its own events.
 */
export class OrderedAppender {
  private queue: Array<{ event: RunEvent, resolve: () => void, reject: (err: unknown) => void }> = []
  private writing: Promise<void> | null = null

  constructor (private readonly log: EventLog, private readonly sessionId: string) {}

  append (event: RunEvent): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ event, resolve, reject })
      this.writing ??= this.write()
    })
  }

  /** Resolves when everything appended so far is written (or has failed). */
  drained (): Promise<void> {
    return this.writing ?? Promise.resolve()
  }

  private async write (): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue.splice(0)
      try {
        await this.log.appendMany(this.sessionId, batch.map(b => b.event))
        for (const b of batch) b.resolve()
      } catch (err) {
        for (const b of batch) b.reject(err)
      }
    }
    this.writing = null
  }
}
