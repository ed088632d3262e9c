// The engine behind the sandboxes, as one interface: everything the pool and the service ask of a container engine.
// DockerDriver holds every dockerode call; another engine (Kubernetes pods, a fake for tests) implements the same.
import type Docker from 'dockerode'
import type { Duplex } from 'node:stream'
import { AgentClient } from './agent-client.js'
import { containerSpec, LABEL, NAMESPACE_LABEL, type SandboxLimits } from './container.js'

/** What a new sandbox container is made from. */
export interface ContainerRequest {
  limits: SandboxLimits
  namespace: string
  /** The server process that makes it (a label: re-adoption and orphan sweeps read it). */
  instance?: string
  /** The host directory bind-mounted for the agent's socket, when the socket channel is used. */
  agentDir?: string
}

/** A container as the engine reports it. */
export interface ContainerState {
  running: boolean
  exitCode: number
  /** The engine says the memory limit stopped it. */
  oomKilled: boolean
  startedAt: string
  labels: Record<string, string>
}

export interface ListedContainer { id: string, labels: Record<string, string> }

/** How the engine has a runtime registered (Docker: `docker info` → Runtimes). */
export interface RuntimeRegistration { path?: string, runtimeArgs?: string[] }

export interface SandboxDriver {
  /** Resolves when the engine answers. */
  ping (): Promise<void>
  hasImage (image: string): Promise<boolean>
  /** The runtime's registration, or undefined when the engine does not have it. */
  runtime (name: string): Promise<RuntimeRegistration | undefined>
  /** Makes a container (not started); its id. */
  create (request: ContainerRequest): Promise<string>
  start (id: string): Promise<void>
  /** The agent over the container's standard streams (the channel when there is no socket). */
  attach (id: string, log: (line: string) => void): Promise<AgentClient>
  /** The container's state; null when the engine does not have it. */
  inspect (id: string): Promise<ContainerState | null>
  /** Changes its memory limit and CPU quota (errors with statusCode 400: the host cannot give that much). */
  update (id: string, resources: { memoryMb: number, cpus: number }): Promise<void>
  /** Removes it, running or not; one already gone is not an error. */
  remove (id: string): Promise<void>
  /** Our containers (every namespace, or one), running or not. */
  list (namespace?: string): Promise<ListedContainer[]>
  /** Whether someone killed it through the engine since `startedAt` (not the kernel's OOM killer). */
  killedSince (id: string, startedAt: string): Promise<boolean>
}

const statusOf = (err: unknown) => (err as { statusCode?: number }).statusCode

/** The Docker engine, over one daemon's API. */
export class DockerDriver implements SandboxDriver {
  constructor (readonly docker: Docker) {}

  async ping (): Promise<void> {
    await this.docker.ping()
  }

  async hasImage (image: string): Promise<boolean> {
    return await this.docker.getImage(image).inspect().then(() => true, () => false)
  }

  async runtime (name: string): Promise<RuntimeRegistration | undefined> {
    const info = await this.docker.info() as { Runtimes?: Record<string, RuntimeRegistration> }
    return info.Runtimes?.[name]
  }

  async create (request: ContainerRequest): Promise<string> {
    const container = await this.docker.createContainer(containerSpec(request.limits, request.namespace, request.instance, request.agentDir))
    return container.id
  }

  async start (id: string): Promise<void> {
    await this.docker.getContainer(id).start()
  }

  async attach (id: string, log: (line: string) => void): Promise<AgentClient> {
    const stream = await this.docker.getContainer(id).attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true }) as unknown as Duplex
    return AgentClient.overAttach(stream, this.docker.modem, log)
  }

  async inspect (id: string): Promise<ContainerState | null> {
    try {
      const info = await this.docker.getContainer(id).inspect()
      return { running: info.State.Running, exitCode: info.State.ExitCode, oomKilled: info.State.OOMKilled, startedAt: info.State.StartedAt, labels: info.Config.Labels ?? {} }
    } catch (err) {
      if (statusOf(err) === 404) return null
      throw err
    }
  }

  async update (id: string, resources: { memoryMb: number, cpus: number }): Promise<void> {
    const bytes = resources.memoryMb * 1024 * 1024
    await this.docker.getContainer(id).update({ Memory: bytes, MemorySwap: bytes, NanoCpus: Math.round(resources.cpus * 1e9) })
  }

  async remove (id: string): Promise<void> {
    try {
      await this.docker.getContainer(id).remove({ force: true })
    } catch (err) {
      if (statusOf(err) !== 404) throw err
    }
  }

  async list (namespace?: string): Promise<ListedContainer[]> {
    const label = [`${LABEL}=true`, ...(namespace ? [`${NAMESPACE_LABEL}=${namespace}`] : [])]
    const list = await this.docker.listContainers({ all: true, filters: { label } })
    return list.map(c => ({ id: c.Id, labels: c.Labels ?? {} }))
  }

  async killedSince (id: string, startedAt: string): Promise<boolean> {
    const now = Math.ceil(Date.now() / 1000)
    const since = Math.floor(Date.parse(startedAt) / 1000) || now - 3600
    const stream = await this.docker.getEvents({ since, until: now, filters: { container: [id], event: ['kill'] } }) as unknown as AsyncIterable<Buffer | string>
    let text = ''
    for await (const chunk of stream) text += String(chunk)
    return text.trim() !== ''
  }
}
