import type { Redis, Result } from 'ioredis'

/**
 * A store for @fastify/rate-limit whose counters live in Redis (shared by every replica) but which asks Redis once
 * per batch of requests, not once per request.
 *
 * Each replica reserves a few of a window's requests at a time (one INCRBY, in a script that also starts the window)
 * and spends them locally. The Redis counter is therefore the number of requests every replica has reserved, and no
 * replica spends more than it reserved: together they never admit more than the limit. The batch is what the key's
 * recent rate needs for the next LEASE_MS (one request for a key seen less than once per LEASE_MS, so quiet keys count
 * exactly as before), and never more than an eighth of what is left of the window, so that reservations a replica
 * holds but does not spend (its clients went elsewhere) can deny at most a few requests early on another replica.
 */
const LEASE_MS = 100
const SHARE = 8 // at most 1/SHARE of what is left of a window is reserved at once
const MAX_BATCH = 1000

const reserve = `
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {count, ttl}`

type Callback = (err: Error | null, res?: { current: number, ttl: number }) => void

/** What this replica knows of one key's window. */
interface Window {
  /** The next request's number in the window (1 for the first), while reserved numbers are left. */
  next: number
  /** The last reserved number: numbers next..last are this replica's to hand out. */
  last: number
  /** The window's end (this process's clock). */
  ends: number
  /** Requests seen since the last reservation, and when it was made: the key's recent rate. */
  seen: number
  since: number
  /** Requests waiting while a reservation is on its way (at most one per key at a time). */
  waiting: Callback[] | null
}

interface Params { timeWindow: number, max: number }

declare module 'ioredis' {
  interface RedisCommander<Context> {
    rateLimitReserve: (key: string, count: number, windowMs: number) => Result<[number, number], Context>
  }
}

export class LeasedRedisStore {
  private readonly windows = new Map<string, Window>()
  private pruned = 0

  /** `pruneAt`: keys remembered before those holding nothing unspent are forgotten (checked at most once a second). */
  constructor (private readonly redis: Redis, private readonly prefix: string, private readonly pruneAt = 10_000) {
    if (!redis.rateLimitReserve) {
      redis.defineCommand('rateLimitReserve', { numberOfKeys: 1, lua: reserve })
    }
  }

  /** @fastify/rate-limit calls this once per request: `current` is the request's number in its window. */
  incr (key: string, cb: Callback, timeWindow: number, max: number): void {
    const now = Date.now()
    let w = this.windows.get(key)
    if (w === undefined) {
      w = { next: 1, last: 0, ends: 0, seen: 0, since: now, waiting: null }
      this.windows.set(key, w)
    }
    w.seen++
    if (w.waiting) {
      w.waiting.push(cb)
      return
    }
    // Within a window the counters only grow: a number past the limit is an answer (exceeded) without asking Redis.
    if (now < w.ends && (w.next <= w.last || w.next > max)) {
      cb(null, { current: w.next++, ttl: w.ends - now })
      return
    }
    w.waiting = [cb]
    this.fill(key, w, { timeWindow, max })
  }

  /** Reserves numbers for the requests waiting, plus what the key's rate needs for the next LEASE_MS. */
  private fill (key: string, w: Window, params: Params): void {
    const started = Date.now()
    const waiting = w.waiting!.length
    const known = started < w.ends ? w.last : 0 // reserved in this window, as far as this replica knows
    // Requests per ms since the last reservation (none before the first: a key seen once is not a rate).
    const rate = w.ends === 0 ? 0 : w.seen / Math.max(1, started - w.since)
    const ahead = Math.min(Math.floor(rate * LEASE_MS), Math.floor(Math.max(0, params.max - known) / SHARE), MAX_BATCH)
    const count = waiting + ahead
    w.seen = 0
    w.since = started
    this.redis.rateLimitReserve(this.prefix + key, count, params.timeWindow).then(([total, ttl]) => {
      const now = Date.now()
      // This reservation holds the numbers total-count+1..total; those past the limit admit nobody (current > max is
      // what "exceeded" means to the plugin).
      w.next = total - count + 1
      w.last = Math.min(total, params.max)
      w.ends = now + Math.max(1, ttl - (now - started))
      const waiting = w.waiting!
      w.waiting = null
      for (let i = 0; i < waiting.length; i++) {
        if (w.next <= w.last || w.next > params.max) {
          waiting[i](null, { current: w.next++, ttl: w.ends - now })
        } else { // arrived while this reservation was on its way: the next one is theirs
          w.waiting = waiting.slice(i)
          this.fill(key, w, params)
          return
        }
      }
      if (this.windows.size > this.pruneAt && now - this.pruned >= 1000) this.prune(now)
    }, (err: Error) => {
      const served = w.waiting!
      w.waiting = null
      for (const cb of served) cb(err)
    })
  }

  /**
   * A route's own limiter: the same counters under the route's prefix (as @fastify/rate-limit's RedisStore does). A
   * limiter made with createRateLimit has no route: it shares these counters, so that an action over a socket and a
   * request count against one budget per key.
   */
  child (options: object): LeasedRedisStore {
    const route = (options as { routeInfo?: { method?: string, url?: string } }).routeInfo
    if (!route?.url) return this
    return new LeasedRedisStore(this.redis, `${this.prefix}${route?.method ?? ''}${route?.url ?? ''}-`, this.pruneAt)
  }

  /** Keys remembered now. */
  get size (): number { return this.windows.size }

  /** Forgets keys that hold nothing unspent (their next request asks Redis again): many one-off keys stay cheap. */
  private prune (now: number): void {
    this.pruned = now
    for (const [key, w] of this.windows) if (!w.waiting && (now >= w.ends || w.next > w.last)) this.windows.delete(key)
  }
}

/** The class @fastify/rate-limit instantiates (`store` option; it passes its own options, which this store does not need). */
export function leasedStore (redis: Redis, prefix: string): new () => LeasedRedisStore {
  return class extends LeasedRedisStore { constructor () { super(redis, prefix) } }
}
