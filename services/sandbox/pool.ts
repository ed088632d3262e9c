import type Docker from 'dockerode'
import type { Duplex } from 'node:stream'
import { AgentClient } from './agent-client.js'
import { containerSpec, LABEL, NAMESPACE_LABEL, INSTANCE_LABEL, type SandboxLimits } from './container.js'
import { SandboxHandle } from './sandbox.js'
import { DependencyError } from '../errors.js'

export interface Logger {
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
  debug (obj: object, msg?: string): void
}

export interface PoolOptions {
  limits: SandboxLimits
  size: number
  namespace: string
  /** This server process, written on every container it makes. */
  instance: string
  readyTimeoutMs?: number
}

export interface PoolHealth { docker: string, image: string }

/** Keeps `size` started containers (agent and python kernel up) so that acquiring one takes milliseconds. */
export class SandboxPool {
  private readonly warm: SandboxHandle[] = []
  private creating = 0
  private readonly inflight = new Set<Promise<void>>()
  private closed = false
  private fillError: string | null = null

  constructor (readonly docker: Docker, private readonly opts: PoolOptions, private readonly log: Logger) {}

  get limits (): SandboxLimits { return this.opts.limits }
  get instance (): string { return this.opts.instance }

  get stats (): { warm: number, creating: number, size: number } {
    return { warm: this.warm.length, creating: this.creating, size: this.opts.size }
  }

  /** Whether Docker answers and the image is there; strings other than 'ok' say what is wrong. */
  async health (): Promise<PoolHealth> {
    try {
      await this.docker.ping()
    } catch (err) {
      return { docker: `down: ${(err as Error).message}`, image: 'unknown' }
    }
    try {
      await this.docker.getImage(this.opts.limits.image).inspect()
    } catch {
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
    const filling = this.fill()
    if (wait) await filling
  }

  /** Creates containers until the pool is full; settles when every creation under way (this round's or earlier) is done. */
  fill (): Promise<void> {
    while (!this.closed && this.warm.length + this.creating < this.opts.size) {
      this.creating++
      const round: Promise<void> = this.create().then((handle) => {
        if (this.closed) return this.remove(handle.containerId)
        this.fillError = null
        this.warm.push(handle)
      }, (err: Error) => {
        this.fillError = err.message
        this.log.warn({ err: err.message }, 'could not create a warm sandbox')
      }).finally(() => {
        this.creating--
        this.inflight.delete(round)
      })
      this.inflight.add(round)
    }
    return Promise.all(this.inflight).then(() => {})
  }

  /** Changes how many warm containers are kept: extras are removed, missing ones started. */
  async resize (size: number): Promise<void> {
    this.opts.size = size
    const extra = this.warm.splice(size)
    await Promise.all(extra.map(h => { h.agent.close(); return this.remove(h.containerId).catch(() => {}) }))
    void this.fill()
  }

  /** A ready sandbox: from the warm pool when it has one, else started now. */
  async acquire (): Promise<SandboxHandle> {
    let handle: SandboxHandle | undefined
    while ((handle = this.warm.shift()) && !handle.agent.alive) {
      this.remove(handle.containerId).catch(() => {})
    }
    if (this.fillError === null || this.warm.length === 0) void this.fill()
    return handle ?? await this.create()
  }

  private async create (): Promise<SandboxHandle> {
    let container: Docker.Container
    try {
      container = await this.docker.createContainer(containerSpec(this.opts.limits, this.opts.namespace, this.opts.instance))
    } catch (err) {
      throw this.dockerError('create', err)
    }
    try {
      const agent = await this.connect(container)
      const ready = agent.waitReady(this.opts.readyTimeoutMs ?? 30000)
      await container.start()
      await ready
      return new SandboxHandle(container.id, container, agent)
    } catch (err) {
      await container.remove({ force: true }).catch(() => {})
      throw this.dockerError('start', err)
    }
  }

  private async connect (container: Docker.Container): Promise<AgentClient> {
    const stream = await container.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true }) as unknown as Duplex
    return new AgentClient(stream, this.docker.modem, (line) => this.log.debug({ container: container.id.slice(0, 12), agent: line.trimEnd() }, 'agent log'))
  }

  /** Attaches to a running container (after a restart, or one another server process started); null if it is gone. */
  async adopt (containerId: string): Promise<SandboxHandle | null> {
    const container = this.docker.getContainer(containerId)
    try {
      const info = await container.inspect()
      if (!info.State.Running) {
        await container.remove({ force: true }).catch(() => {})
        return null
      }
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return null
      throw this.dockerError('inspect', err)
    }
    const agent = await this.connect(container)
    try {
      await Promise.race([agent.call('ping'), new Promise((_, reject) => setTimeout(() => reject(new Error('no pong')), 5000))])
    } catch {
      agent.close()
      await container.remove({ force: true }).catch(() => {})
      return null
    }
    return new SandboxHandle(containerId, container, agent)
  }

  async remove (containerId: string): Promise<void> {
    try {
      await this.docker.getContainer(containerId).remove({ force: true })
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) throw this.dockerError('remove', err)
    }
  }

  /** Containers of this namespace that Docker knows, with the process that made them (null when unlabelled). */
  async containers (): Promise<Array<{ id: string, instance: string | null }>> {
    try {
      const list = await this.docker.listContainers({ all: true, filters: { label: [`${LABEL}=true`, `${NAMESPACE_LABEL}=${this.opts.namespace}`] } })
      return list.map(c => ({ id: c.Id, instance: c.Labels?.[INSTANCE_LABEL] ?? null }))
    } catch (err) {
      throw this.dockerError('list', err)
    }
  }

  isWarm (containerId: string): boolean {
    return this.warm.some(h => h.containerId === containerId)
  }

  /** Removes the warm containers (they hold no user state). */
  async close (): Promise<void> {
    this.closed = true
    const warm = this.warm.splice(0)
    await Promise.all(warm.map(h => { h.agent.close(); return this.remove(h.containerId).catch(() => {}) }))
  }

  private dockerError (what: string, err: unknown): Error {
    if (err instanceof DependencyError) return err
    const e = err as { statusCode?: number, message?: string, code?: string }
    if (what === 'create' && e.statusCode === 404) {
      return new DependencyError('docker', `the sandbox image ${this.opts.limits.image} is missing (build it with: npm run image)`, { cause: err })
    }
    if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' || e.code === 'EACCES') {
      return new DependencyError('docker', `docker ${what} failed: ${e.message}`, { cause: err })
    }
    return err instanceof Error ? err : new Error(String(err))
  }
}
