// The engine behind the sandboxes, as one interface: everything the pool and the service ask of a container engine.
// DockerDriver holds every dockerode call; another engine (Kubernetes pods, a fake for tests) implements the same.
import type Docker from 'dockerode'
import { PassThrough, type Duplex } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { AgentClient } from './agent-client.js'
import { containerSpec, LABEL, NAMESPACE_LABEL, type SandboxLimits } from './container.js'
import type { VolumeBind } from './volumes.js'

/** What a new sandbox container is made from. */
export interface ContainerRequest {
  limits: SandboxLimits
  namespace: string
  /** The server process that makes it (a label: re-adoption and orphan sweeps read it). */
  instance?: string
  /** The host directory bind-mounted for the agent's socket, when the socket channel is used. */
  agentDir?: string
  /** Host directories bind-mounted into it (named volumes). */
  binds?: VolumeBind[]
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

/** One reading of a container's use: CPU time (its own and the host's, ns) and memory (without the page cache). */
export interface ContainerStats { cpuNs: number, systemNs: number, cpus: number, memoryBytes: number, memoryLimitBytes: number }

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
  /** Whether the engine offers checkpoints at all (Docker: experimental features on). */
  canCheckpoint (): Promise<boolean>
  /** Checkpoints a running container's memory and processes under `name`; the container stops. */
  checkpoint (id: string, name: string): Promise<void>
  /** Starts a stopped container from its checkpoint `name` (its processes go on where they were). */
  restore (id: string, name: string): Promise<void>
  /** Deletes a container's checkpoint; one already gone is not an error. */
  deleteCheckpoint (id: string, name: string): Promise<void>
  /** A volume's contents as a tar stream (which errors when they cannot be read). */
  readVolume (name: string, image: string): NodeJS.ReadableStream
  /** A volume of this deployment holding a tar stream's contents (made, then filled). */
  fillVolume (name: string, labels: Record<string, string>, image: string, tar: NodeJS.ReadableStream): Promise<void>
  /** Removes a volume; one already gone is not an error. */
  removeVolume (name: string): Promise<void>
  /** Our volumes (every namespace, or one), with their labels. */
  listVolumes (namespace?: string): Promise<Array<{ name: string, labels: Record<string, string> }>>
  /** One reading of a running container's CPU time and memory; null when it is not running. */
  stats (id: string): Promise<ContainerStats | null>
}

const statusOf = (err: unknown) => (err as { statusCode?: number }).statusCode
/** Docker's checkpoint calls that dockerode has and its type declarations lack. */
interface CheckpointCalls {
  createCheckpoint (opts: { CheckpointID: string, Exit: boolean }): Promise<unknown>
  deleteCheckpoint (name: string): Promise<unknown>
}
const checkpoints = (container: Docker.Container) => container as unknown as CheckpointCalls
/** Where a volume being filled is mounted in the (never started) container that fills it. */
const FILL_PATH = '/fill'

/** The Docker engine, over one daemon's API. */
export class DockerDriver implements SandboxDriver {
  constructor (readonly docker: Docker) {}

  async stats (id: string): Promise<ContainerStats | null> {
    interface Reading { cpu_stats?: { cpu_usage?: { total_usage?: number }, system_cpu_usage?: number, online_cpus?: number }, memory_stats?: { usage?: number, limit?: number, stats?: Record<string, number> } }
    let s: Reading
    try {
      // One reading, at once (Docker's one-shot): the CPU share comes from two of them, a poll apart.
      s = await this.docker.getContainer(id).stats({ stream: false, 'one-shot': true } as unknown as { stream: false }) as unknown as Reading
    } catch (err) {
      if (statusOf(err) === 404 || statusOf(err) === 409) return null
      throw err
    }
    if (!s.cpu_stats?.cpu_usage || !s.memory_stats?.usage) return null
    const cache = s.memory_stats.stats?.inactive_file ?? s.memory_stats.stats?.total_inactive_file ?? 0
    return {
      cpuNs: s.cpu_stats.cpu_usage.total_usage ?? 0,
      systemNs: s.cpu_stats.system_cpu_usage ?? 0,
      cpus: s.cpu_stats.online_cpus ?? 1,
      memoryBytes: Math.max(0, s.memory_stats.usage - cache),
      memoryLimitBytes: s.memory_stats.limit ?? 0
    }
  }

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
    const container = await this.docker.createContainer(containerSpec(request.limits, request.namespace, request.instance, request.agentDir, request.binds))
    return container.id
  }

  async start (id: string): Promise<void> {
    await this.docker.getContainer(id).start()
  }

  async canCheckpoint (): Promise<boolean> {
    const info = await this.docker.info() as { ExperimentalBuild?: boolean }
    return info.ExperimentalBuild === true
  }

  async checkpoint (id: string, name: string): Promise<void> {
    await checkpoints(this.docker.getContainer(id)).createCheckpoint({ CheckpointID: name, Exit: true })
  }

  async restore (id: string, name: string): Promise<void> {
    // containerd now and then refuses the checkpoint's upload as content that "already exists" (a blob of an earlier
    // restore it has not let go of yet), and Docker may not have seen the checkpoint's exit yet: the same restore a
    // moment later goes through.
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startFrom(id, name)
      } catch (err) {
        if (attempt >= 5 || !/already exists|still running/.test((err as Error).message)) throw err
        await new Promise(resolve => setTimeout(resolve, 200 * attempt))
      }
    }
  }

  private async startFrom (id: string, name: string): Promise<void> {
    // dockerode sends a start's options as a body, which Docker refuses: the checkpoint goes in the query.
    await new Promise<void>((resolve, reject) => {
      this.docker.modem.dial({
        path: `/containers/${encodeURIComponent(id)}/start?`,
        method: 'POST',
        options: { _query: { checkpoint: name }, _body: {} }, // an empty body is sent as none
        // 304: Docker still counts the container running (its checkpoint's exit not yet seen): nothing was restored.
        statusCodes: { 204: true, 304: 'the container is still running', 404: 'no such container', 500: 'server error' }
      }, (err: Error | null) => { if (err) reject(err); else resolve() })
    })
  }

  async deleteCheckpoint (id: string, name: string): Promise<void> {
    try {
      await checkpoints(this.docker.getContainer(id)).deleteCheckpoint(name)
    } catch (err) {
      if (statusOf(err) !== 404) throw err
    }
  }

  async fillVolume (name: string, labels: Record<string, string>, image: string, tar: NodeJS.ReadableStream): Promise<void> {
    await this.docker.createVolume({ Name: name, Labels: { [LABEL]: 'true', ...labels } })
    // A container that mounts the volume unpacks the stream from its standard input (Docker's archive API writes into
    // the layer of a container never started, not into its volumes). Root in it keeps the files' owners; it has no
    // network and lives only for this.
    const filler = await this.docker.createContainer({
      Image: image,
      Cmd: ['tar', '--extract', '--file=-', '--directory', FILL_PATH, '--same-owner', '--same-permissions'],
      User: '0:0',
      OpenStdin: true,
      StdinOnce: true,
      AttachStdin: true,
      NetworkDisabled: true,
      Labels: labels,
      HostConfig: { NetworkMode: 'none', Binds: [`${name}:${FILL_PATH}`], CapDrop: ['ALL'], CapAdd: ['CHOWN', 'DAC_OVERRIDE', 'FOWNER'], SecurityOpt: ['no-new-privileges'] }
    })
    try {
      const stdin = await filler.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true }) as unknown as Duplex
      let output = ''
      stdin.on('data', (chunk: Buffer) => { if (output.length < 4096) output += chunk.toString('latin1') })
      await filler.start()
      await pipeline(tar, stdin)
      const { StatusCode: code } = await filler.wait() as { StatusCode: number }
      if (code !== 0) throw new Error(`unpacking into the volume failed (exit ${code}): ${output.replace(/[^\x20-\x7e\n]/g, '').trim().slice(-300)}`)
    } finally {
      await filler.remove({ force: true }).catch(() => {})
    }
  }

  readVolume (name: string, image: string): NodeJS.ReadableStream {
    const out = new PassThrough()
    out.on('error', () => {}) // its reader learns of it
    const read = async () => {
      // A container that mounts the volume read-only writes it to its standard output as tar.
      const reader = await this.docker.createContainer({
        Image: image,
        Cmd: ['tar', '--create', '--file=-', '--directory', FILL_PATH, '.'],
        User: '0:0',
        NetworkDisabled: true,
        HostConfig: { NetworkMode: 'none', Binds: [`${name}:${FILL_PATH}:ro`], CapDrop: ['ALL'], CapAdd: ['DAC_READ_SEARCH'], SecurityOpt: ['no-new-privileges'] }
      })
      try {
        const stream = await reader.attach({ stream: true, stdout: true, stderr: true }) as unknown as NodeJS.ReadableStream
        const ended = new Promise(resolve => { stream.once('end', resolve); stream.once('close', resolve) })
        let errors = ''
        const stderr = new PassThrough().on('data', (chunk: Buffer) => { if (errors.length < 4096) errors += chunk.toString() })
        this.docker.modem.demuxStream(stream, out, stderr)
        await reader.start()
        const { StatusCode: code } = await reader.wait() as { StatusCode: number }
        await ended
        if (code !== 0) throw new Error(`reading the volume ${name} failed (exit ${code}): ${errors.trim().slice(-300)}`)
      } finally {
        await reader.remove({ force: true }).catch(() => {})
      }
      out.end() // once the reader is gone, so that the volume can be removed as soon as its contents are read
    }
    read().catch((err: Error) => out.destroy(err))
    return out
  }

  async removeVolume (name: string): Promise<void> {
    try {
      await this.docker.getVolume(name).remove()
    } catch (err) {
      if (statusOf(err) !== 404) throw err
    }
  }

  async listVolumes (namespace?: string): Promise<Array<{ name: string, labels: Record<string, string> }>> {
    const label = [`${LABEL}=true`, ...(namespace ? [`${NAMESPACE_LABEL}=${namespace}`] : [])]
    const list = await this.docker.listVolumes({ filters: { label } })
    return (list.Volumes ?? []).map(v => ({ name: v.Name, labels: v.Labels ?? {} }))
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
      if (statusOf(err) === 404) return
      // 409 "removal ... already in progress": another request (two DELETEs at once, the reaper) is removing it:
      // removed means gone, so wait for that one to finish (at most 30 s) instead of answering before it has.
      if (statusOf(err) !== 409 || !/already in progress/.test((err as Error).message)) throw err
      for (let i = 0; i < 300; i++) {
        const gone = await this.docker.getContainer(id).inspect().then(() => false, (e: unknown) => statusOf(e) === 404)
        if (gone) return
        await new Promise(resolve => setTimeout(resolve, 100))
      }
      throw err
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
