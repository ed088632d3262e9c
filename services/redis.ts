import { Redis } from 'ioredis'

/**
 * A Redis client that fails fast: no offline queue and one try per command, so that while Redis is down a
 * request fails in milliseconds (503) instead of hanging; it keeps reconnecting in the background.
 */
export function createRedis (url: string, keyPrefix: string): Redis {
  return new Redis(url, {
    keyPrefix,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 2000,
    retryStrategy: (attempt) => Math.min(50 * attempt, 1000),
    // Only a failover (the replica we reach became read-only) is a reason to reconnect: an error reply to one
    // request's command (a bad argument) must not drop the connection every other request shares.
    reconnectOnError: (err) => err.message.startsWith('READONLY') ? 2 : false,
    // Commands issued in the same tick (several requests' rate-limit counters, reads, touches) go in one write:
    // on a busy server each write, and the wake-up of Redis it causes, is much of the cost of a request.
    enableAutoPipelining: true
  })
}

/** Resolves once the client is connected, or rejects with the connection error. */
export async function waitReady (redis: Redis, timeoutMs = 5000): Promise<void> {
  if (redis.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`Redis not ready after ${timeoutMs} ms`)) }, timeoutMs)
    const onReady = () => { cleanup(); resolve() }
    const cleanup = () => { clearTimeout(timer); redis.off('ready', onReady) }
    redis.on('ready', onReady)
  })
}
