import type { SandboxLimits } from './container.js'
import type { SandboxDriver } from './driver.js'
import type { SandboxHandle } from './sandbox.js'
import { SandboxContainers, type ContainerOptions } from './containers.js'
import { AppError, CapacityExhausted, DependencyError } from '../errors.js'

export interface Logger {
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
  debug (obj: object, msg?: string): void
}

export interface PoolOptions extends ContainerOptions {
  /** Warm containers kept at least (the floor of the elastic pool). */
  size: number
  /** Warm containers kept at most, when acquisitions outpace the floor. */
  max?: number
  /** Containers starting at once; the other starts wait their turn. */
  startConcurrency?: number
  /** How long a request waits for a container before a 503; also what admission estimates against. */
  queueTimeoutMs?: number
  /** Without an acquisition for this long, the pool shrinks back to its floor. */
  idleShrinkMs?: number
  /** Told of each start (its duration) and each failed start, for metrics. */
  observe?: { started (ms: number): void, failed (): void, rejected (reason: 'queue_full' | 'queue_timeout'): void }
}

export interface PoolHealth { docker: string, image: string }

export interface PoolStats {
  warm: number
  /** Containers starting now (at most `concurrency`). */
  creating: number
  size: number
  target: number
  max: number
  /** Requests waiting for a container. */
  queued: number
  concurrency: number
  avg_start_ms: number
  /** How this process talks to agents: their unix socket, or docker attach. */
  agent_channel: 'socket' | 'attach'
}

interface Waiter {
  resolve: (handle: SandboxHandle) => void
  reject: (err: Error) => void
  cleanup: () => void
}

/** Acquisitions counted for growth: the pool aims to hold as many spares as were taken in this window. */
const GROWTH_WINDOW_MS = 10_000
/** After a spare failed to start, no other spare is tried for this long (requests still are). */
const SPARE_BACKOFF_MS = 5_000

/**
 * Warm containers (agent and python kernel up) so that acquiring one takes milliseconds, and one bounded queue for
 * every container start. At most `startConcurrency` containers start at once; requests waiting for a container come
 * first, in order, and spares for the pool start only with slots left over. Each start serves the first waiting
 * request when it is ready, else joins the pool, else (the pool is full) is removed. The pool grows from `size`
 * toward `max` while acquisitions outpace it and shrinks back after `idleShrinkMs` without one.
 */
export class SandboxPool {
  private readonly warm: SandboxHandle[] = []
  private readonly waiters: Waiter[] = []
  private starting = 0
  private readonly inflight = new Set<Promise<void>>()
  private readonly removing = new Set<Promise<void>>()
  /** Making, adopting and removing this host's containers. */
  readonly containers: SandboxContainers
  private closed = false
  private fillError: string | null = null
  private spareBackoffUntil = 0
  private target: number
  private readonly acquired: number[] = []
  private lastAcquireAt = 0
  /** When the warm pool last reached its target: a quiet spell starts no earlier (spares still starting are demand). */
  private filledAt = 0
  private avgStartMs = 1000 // a guess until the first start is measured
  private measured = false
  private shrinkTimer: NodeJS.Timeout | null = null

  constructor (readonly driver: SandboxDriver, private readonly opts: PoolOptions, private readonly log: Logger) {
    this.target = opts.size
    this.containers = new SandboxContainers(driver, opts, log)
  }

  get limits (): SandboxLimits { return this.opts.limits }
  get instance (): string { return this.opts.instance }
  get host (): string { return this.opts.host ?? 'local' }
  private get max (): number { return Math.max(this.opts.size, this.opts.max ?? this.opts.size) }
  private get concurrency (): number { return this.opts.startConcurrency ?? 2 }
  private get queueTimeoutMs (): number { return this.opts.queueTimeoutMs ?? 30_000 }

  get stats (): PoolStats {
    return {
      warm: this.warm.length,
      creating: this.starting,
      size: this.opts.size,
      target: this.target,
      max: this.max,
      queued: this.waiters.length,
      concurrency: this.concurrency,
      avg_start_ms: Math.round(this.avgStartMs),
      agent_channel: this.containers.channel
    }
  }

  /** Whether Docker answers and the image is there; strings other than 'ok' say what is wrong. */
  async health (): Promise<PoolHealth> {
    try {
      await this.driver.ping()
    } catch (err) {
      return { docker: `down: ${(err as Error).message}`, image: 'unknown' }
    }
    if (!(await this.driver.hasImage(this.opts.limits.image))) {
      return { docker: 'ok', image: `missing: ${this.opts.limits.image} (run npm run image)` }
    }
    return { docker: 'ok', image: this.fillError ? `failing: ${this.fillError}` : 'ok' }
  }

  /** Starts filling the pool in the background; `wait` waits for the first fill. */
  async start (wait = false): Promise<void> {
    const health = await this.health()
    if (health.docker !== 'ok' || health.image !== 'ok') {
      this.log.warn({ health }, 'sandbox pool not started')
      return
    }
    await this.containers.decideChannel().catch((err: Error) => this.log.warn({ err: err.message }, 'could not read the runtime\'s registration: attaching to agents'))
    const idleShrinkMs = this.opts.idleShrinkMs ?? 60_000
    this.shrinkTimer = setInterval(() => this.shrinkIfIdle(idleShrinkMs), Math.max(50, Math.min(5000, idleShrinkMs / 4)))
    this.shrinkTimer.unref()
    const filling = this.fill()
    if (wait) await filling
  }

  /** Starts what is wanted (waiting requests, then missing spares); settles when every start under way is done. */
  fill (): Promise<void> {
    this.pump()
    return Promise.all(this.inflight).then(() => {})
  }

  /** Starts containers while slots are free and someone (a waiting request, or the pool) wants one. */
  private pump (): void {
    while (!this.closed && this.starting < this.concurrency) {
      const forWaiters = this.waiters.length > this.starting
      const spares = Date.now() >= this.spareBackoffUntil && this.warm.length + this.starting - this.waiters.length < this.target
      if (!forWaiters && !spares) return
      this.launch()
    }
  }

  private launch (): void {
    this.starting++
    const began = Date.now()
    const round: Promise<void> = this.containers.create().then((handle) => {
      const ms = Date.now() - began
      this.avgStartMs = this.measured ? this.avgStartMs * 0.7 + ms * 0.3 : ms
      this.measured = true
      this.opts.observe?.started(ms)
      this.fillError = null
      this.deliver(handle)
    }, (err: Error) => {
      this.opts.observe?.failed()
      this.fillError = err.message
      this.log.warn({ err: err.message }, 'a sandbox container could not be started')
      const waiter = this.waiters.shift()
      if (waiter) {
        waiter.cleanup()
        waiter.reject(err instanceof DependencyError || err instanceof AppError
          ? err
          : new AppError(503, 'sandbox_start_failed', `A sandbox could not be started: ${err.message}`, 'sandbox_error', { retry_after: 5 }))
      } else {
        this.spareBackoffUntil = Date.now() + SPARE_BACKOFF_MS
        setTimeout(() => this.pump(), SPARE_BACKOFF_MS).unref() // try the spare again after the pause
      }
    }).finally(() => {
      this.starting--
      this.inflight.delete(round)
      this.pump()
    })
    this.inflight.add(round)
  }

  /** A started container goes to the first waiting request, else to the pool, else (more than wanted) away. */
  private deliver (handle: SandboxHandle): void {
    const waiter = this.waiters.shift()
    if (waiter) {
      waiter.cleanup()
      waiter.resolve(handle)
    } else if (!this.closed && this.warm.length < this.target) {
      this.warm.push(handle)
      if (this.warm.length >= this.target) this.filledAt = Date.now()
    } else {
      this.discard(handle)
    }
  }

  private discard (handle: SandboxHandle): void {
    handle.agent.close()
    const removal: Promise<void> = this.containers.remove(handle.containerId).catch(() => {}).finally(() => this.removing.delete(removal))
    this.removing.add(removal)
  }

  /** Changes the floor of the pool: extras are removed, missing ones started. */
  async resize (size: number): Promise<void> {
    this.opts.size = size
    this.target = size
    const extra = this.warm.splice(size)
    await Promise.all(extra.map(h => { h.agent.close(); return this.containers.remove(h.containerId).catch(() => {}) }))
    void this.fill()
  }

  /**
   * Back to the floor after `idleShrinkMs` without an acquisition, counted from when the grown pool was full: on a
   * loaded host its spares can take longer to start than the quiet spell, and it would shrink before it ever served.
   */
  private shrinkIfIdle (idleShrinkMs: number): void {
    if (this.target <= this.opts.size) return
    if (this.warm.length < this.target && this.starting > 0) return // still filling toward the burst's target
    if (Date.now() - Math.max(this.lastAcquireAt, this.filledAt) < idleShrinkMs) return
    this.log.info({ from: this.target, to: this.opts.size }, 'warm pool shrinks after a quiet spell')
    this.target = this.opts.size
    for (const handle of this.warm.splice(this.target)) this.discard(handle)
  }

  /** Grows the target toward `max` to the number of acquisitions in the last window. */
  private noteAcquire (): void {
    const now = Date.now()
    this.lastAcquireAt = now
    this.acquired.push(now)
    while (this.acquired.length && this.acquired[0] < now - GROWTH_WINDOW_MS) this.acquired.shift()
    const wanted = Math.min(this.max, this.acquired.length)
    if (wanted > this.target) {
      this.log.debug({ from: this.target, to: wanted }, 'warm pool grows')
      this.target = wanted
    }
  }

  /** Seconds until the starts now wanted (and `more`) would be done, from recent start times. */
  private drainSeconds (more = 0): number {
    return Math.ceil((this.waiters.length + more) / this.concurrency) * this.avgStartMs / 1000
  }

  /**
   * A ready sandbox: from the warm pool when it has one, else the next container that finishes starting. A request
   * that could not be served within the queue timeout is refused at once (503 capacity_exhausted), as is one that
   * waited that long; an aborted `signal` (the client went away) leaves the queue.
   */
  async acquire (signal?: AbortSignal): Promise<SandboxHandle> {
    this.noteAcquire()
    let handle: SandboxHandle | undefined
    while ((handle = this.warm.shift())) {
      if (handle.agent.alive) break
      this.containers.remove(handle.containerId).catch(() => {})
    }
    if (handle) {
      this.pump()
      return handle
    }
    if (this.closed) throw new AppError(503, 'shutting_down', 'The server is shutting down', 'unavailable_error')
    const expectedMs = this.drainSeconds(1) * 1000
    if (expectedMs > this.queueTimeoutMs) {
      this.opts.observe?.rejected('queue_full')
      throw CapacityExhausted(`All sandbox starts are busy: ${this.waiters.length} requests are waiting; try again later`, this.drainSeconds())
    }
    signal?.throwIfAborted()
    return await new Promise<SandboxHandle>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, cleanup: () => {} }
      const leave = (err: Error) => {
        const at = this.waiters.indexOf(waiter)
        if (at >= 0) this.waiters.splice(at, 1)
        waiter.cleanup()
        reject(err)
      }
      const timer = setTimeout(() => {
        this.opts.observe?.rejected('queue_timeout')
        leave(CapacityExhausted(`No sandbox could be started within ${this.queueTimeoutMs} ms; try again later`, this.drainSeconds()))
      }, this.queueTimeoutMs)
      const onAbort = () => leave(signal!.reason instanceof Error ? signal!.reason : new Error('aborted'))
      signal?.addEventListener('abort', onAbort, { once: true })
      waiter.cleanup = () => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort) }
      this.waiters.push(waiter)
      this.pump()
    })
  }

  isWarm (containerId: string): boolean {
    return this.warm.some(h => h.containerId === containerId)
  }

  /** Removes the warm containers (they hold no user state) and refuses the waiting requests. */
  async close (): Promise<void> {
    this.closed = true
    if (this.shrinkTimer) clearInterval(this.shrinkTimer)
    for (const waiter of this.waiters.splice(0)) {
      waiter.cleanup()
      waiter.reject(new AppError(503, 'shutting_down', 'The server is shutting down', 'unavailable_error'))
    }
    await Promise.all(this.inflight)
    await Promise.all(this.removing)
    const warm = this.warm.splice(0)
    await Promise.all(warm.map(h => { h.agent.close(); return this.containers.remove(h.containerId).catch(() => {}) }))
  }
}
