import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { DependencyError } from './errors.js'

/** A process counts as alive while its presence key exists; it renews the key every third of this. */
const PRESENCE_TTL_MS = 15_000

interface Envelope { topic: string, from: string, id?: string, reply_to?: string, body: unknown }
/** Answers a message; `undefined` means "not mine" (another process may answer a request). */
export type BusHandler = (body: any, from: string) => unknown

/**
 * Messages between the server processes that share one Redis, over one pub/sub channel. `publish` reaches every
 * process, this one included; `request` waits for the first answer from a process whose handler has one (the
 * process that owns what the request names), or gives up after a timeout.
 */
export class Bus {
  /** This process, as other processes see it. */
  readonly id = randomUUID()
  private readonly handlers = new Map<string, BusHandler>()
  private readonly waiting = new Map<string, (body: unknown) => void>()
  private presence: NodeJS.Timeout | null = null

  /** `sub` becomes a subscriber connection (it can send nothing else); `pub` is any other connection. */
  constructor (private readonly pub: Redis, private readonly sub: Redis, private readonly channel: string, private readonly onError: (err: unknown) => void = () => {}) {
    sub.on('message', (channel: string, raw: string) => {
      if (channel === this.channel) this.receive(raw).catch(onError)
    })
  }

  /**
   * Subscribes and starts announcing that this process lives; while Redis is down, both happen when it comes back
   * (the subscription is renewed on every reconnection: the subscriber connection is made without ioredis's own).
   */
  async start (): Promise<void> {
    const subscribe = () => this.sub.subscribe(this.channel).catch(this.onError)
    this.sub.on('ready', () => { void subscribe() })
    if (this.sub.status === 'ready') await subscribe()
    const announce = () => this.pub.set(this.presenceKey(this.id), '1', 'PX', PRESENCE_TTL_MS).catch(() => {})
    await announce()
    this.presence = setInterval(announce, PRESENCE_TTL_MS / 3)
    this.presence.unref()
  }

  /** Whether the process `id` still lives; when Redis cannot tell, it is assumed to. */
  async alive (id: string): Promise<boolean> {
    if (id === this.id) return true
    return await this.pub.exists(this.presenceKey(id)).then(n => n === 1, () => true)
  }

  private presenceKey (id: string): string { return `presence:${id}` }

  on (topic: string, handler: BusHandler): void {
    this.handlers.set(topic, handler)
  }

  async publish (topic: string, body: unknown): Promise<void> {
    await this.send({ topic, from: this.id, body })
  }

  /** The first answer to `body` on `topic`, or undefined when no process answered within `timeoutMs`. */
  async request<T> (topic: string, body: unknown, timeoutMs: number): Promise<T | undefined> {
    const id = randomUUID()
    const answer = new Promise<T | undefined>((resolve) => {
      const timer = setTimeout(() => { this.waiting.delete(id); resolve(undefined) }, timeoutMs)
      this.waiting.set(id, (reply) => { clearTimeout(timer); this.waiting.delete(id); resolve(reply as T) })
    })
    try {
      await this.send({ topic, from: this.id, id, body })
    } catch (err) {
      this.waiting.get(id)?.(undefined)
      throw err
    }
    return await answer
  }

  private async receive (raw: string): Promise<void> {
    const message = JSON.parse(raw) as Envelope
    if (message.reply_to !== undefined) {
      this.waiting.get(message.reply_to)?.(message.body)
      return
    }
    const handler = this.handlers.get(message.topic)
    if (!handler) return
    const answer = await handler(message.body, message.from)
    if (message.id !== undefined && answer !== undefined) {
      await this.send({ topic: message.topic, from: this.id, reply_to: message.id, body: answer })
    }
  }

  private async send (message: Envelope): Promise<void> {
    try {
      await this.pub.publish(this.channel, JSON.stringify(message))
    } catch (err) {
      throw new DependencyError('redis', `redis publish failed: ${(err as Error).message}`, { cause: err })
    }
  }

  async close (): Promise<void> {
    if (this.presence) clearInterval(this.presence)
    for (const resolve of this.waiting.values()) resolve(undefined)
    this.sub.disconnect()
    await this.pub.del(this.presenceKey(this.id)).catch(() => {})
  }
}
