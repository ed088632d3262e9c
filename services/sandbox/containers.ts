// One host's sandbox containers, over its engine (the driver): making one and connecting to its agent (over its
// socket, or attached), adopting one a restart or another replica left, removing one with its agent directory, and
// the agent directories this deployment keeps on the host. SandboxPool keeps the warm pool and the start queue over it.
import { Transform } from 'node:stream'
import { AgentClient } from './agent-client.js'
import { INSTANCE_LABEL, AGENT_DIR_LABEL, NAMESPACE_LABEL, type SandboxLimits } from './container.js'
import type { SandboxDriver } from './driver.js'
import { agentDirBase, connectAgentSocket, makeAgentDir, removeAgentDir, runtimeKeepsHostSockets, staleAgentDirs, wakeAgent } from './agent-socket.js'
import { SandboxHandle } from './sandbox.js'
import type { VolumeBind } from './volumes.js'
import { DependencyError } from '../errors.js'
import type { Logger } from './pool.js'

export interface ContainerOptions {
  limits: SandboxLimits
  namespace: string
  /** This server process, written on every container it makes. */
  instance: string
  /** The name of the Docker host (SANDBOX_DOCKER_HOSTS). */
  host?: string
  readyTimeoutMs?: number
  /**
   * Where per-sandbox agent directories are made, when the server talks to agents over their unix socket (same host
   * as the Docker daemon); unset: over `docker attach`.
   */
  agentSocketDir?: string
  /** The group agent directories are shared with (SANDBOX_AGENT_DIR_GROUP; see makeAgentDir). */
  agentDirGroup?: number
  /** SANDBOX_PAUSE_MODE: how pauses keep sandboxes (see pauseMode). */
  pauseMode?: 'auto' | 'memory' | 'files'
  /**
   * Whether the sandbox runtime lets the host reach a socket made inside (runsc registered with --host-uds); unset:
   * read from how the engine reports the runtime registered. Without it, agents are attached to.
   */
  runtimeHostSockets?: boolean
}

/** How a host pauses sandboxes: a checkpoint of their memory and processes, or a copy of their files alone. */
export type PauseMode = 'memory' | 'files'
/** The name of a paused sandbox's checkpoint (each container has at most one). */
const CHECKPOINT = 'paused'
/** What a volume of kept files is for (paused: a paused sandbox's; snapshot: a named snapshot's; fork: a fork's, for its duration), and whose. */
export const KEPT_LABEL = 'dev.interpreter-server.kept'
export type KeptFor = 'paused' | 'snapshot' | 'fork'

/** What a host's checkpoint probe found: a checkpoint and restore work, and work again on the restored container. */
interface CheckpointChecks { once: boolean, again: boolean, note?: string }

/** A checkpoint or pack failed; `running` says whether the sandbox still runs (it usually does). */
export class PauseFailed extends Error {
  constructor (message: string, readonly running: boolean, options?: ErrorOptions) { super(message, options) }
}

/** Whether an agent answers a ping within 5 s. */
async function answers (agent: AgentClient): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([agent.call('ping', {}), new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error('no pong')), 5000) })])
    return true
  } catch {
    return false
  } finally {
    clearTimeout(timer)
  }
}

export class SandboxContainers {
  /** What checkpoints do on this host, once found out (pauseMode). */
  private probing: Promise<CheckpointChecks> | undefined
  private checks: CheckpointChecks | undefined
  /** Agent directories of the containers this process made or adopted. */
  private readonly dirs = new Map<string, string>()
  /** Agent directories whose containers are being created now (no container lists them yet). */
  private readonly making = new Set<string>()
  /**
   * This deployment's agent directories on this host, when agents are reached over their sockets; decided in the
   * constructor, or by decideChannel() when it depends on how the engine registered the runtime.
   */
  private agentBase: string | undefined

  constructor (readonly driver: SandboxDriver, private readonly opts: ContainerOptions, private readonly log: Logger) {
    const runtime = opts.limits.runtime
    const decided = opts.runtimeHostSockets ?? (runtime && runtime !== 'runc' ? undefined : true)
    if (decided) this.agentBase = this.socketBase()
  }

  get host (): string { return this.opts.host ?? 'local' }

  get runtime (): string { return this.opts.limits.runtime ?? 'runc' }

  /** How this process talks to the agents: their unix socket, or docker attach. */
  get channel (): 'socket' | 'attach' { return this.agentBase ? 'socket' : 'attach' }

  private socketBase (): string | undefined {
    return this.opts.agentSocketDir ? agentDirBase(this.opts.agentSocketDir, this.opts.namespace, this.host) : undefined
  }

  /** Reads how the engine registered a runtime other than runc: under gVisor the socket channel needs --host-uds. */
  async decideChannel (): Promise<void> {
    const runtime = this.opts.limits.runtime
    if (!this.opts.agentSocketDir || this.opts.runtimeHostSockets !== undefined || !runtime || runtime === 'runc') return
    const registration = await this.driver.runtime(runtime)
    this.agentBase = runtimeKeepsHostSockets(registration, runtime) ? this.socketBase() : undefined
    this.log.info({ runtime, runtimeArgs: registration?.runtimeArgs ?? [], agent_channel: this.agentBase ? 'socket' : 'attach' },
      this.agentBase ? 'the runtime lets the host reach agent sockets' : 'the runtime keeps sockets inside its sandboxes (no --host-uds): attaching to agents')
  }

  /** Makes, starts and connects to one container (with these volumes); its agent is ready when this resolves. */
  async create (binds?: VolumeBind[]): Promise<SandboxHandle> {
    const base = this.agentBase
    const dir = base ? await makeAgentDir(base, this.opts.agentDirGroup) : undefined
    if (dir) this.making.add(dir)
    try {
      return await this.createIn(dir, binds)
    } finally {
      if (dir) this.making.delete(dir)
    }
  }

  private async createIn (dir: string | undefined, binds: VolumeBind[] | undefined): Promise<SandboxHandle> {
    let id: string
    try {
      id = await this.driver.create({ limits: this.opts.limits, namespace: this.opts.namespace, instance: this.opts.instance, agentDir: dir, binds })
    } catch (err) {
      if (dir) await removeAgentDir(dir).catch(() => {})
      throw this.dockerError('create', err)
    }
    const timeoutMs = this.opts.readyTimeoutMs ?? 30000
    try {
      let agent: AgentClient
      if (dir) {
        await this.driver.start(id)
        const socket = await connectAgentSocket(dir, timeoutMs).catch((err: Error) => {
          // The one likely cause under gVisor: a runsc registered without --host-uds keeps the socket inside.
          throw this.opts.limits.runtime === 'runsc'
            ? new Error(`${err.message}: under runsc the socket needs runsc registered with --host-uds=all (SANDBOX_RUNSC_HOST_UDS=false makes the server attach instead)`)
            : err
        })
        agent = AgentClient.overSocket(socket, this.agentLog(id))
        await agent.waitReady(timeoutMs)
        this.dirs.set(id, dir)
      } else {
        agent = await this.driver.attach(id, this.agentLog(id))
        const ready = agent.waitReady(timeoutMs) // before the start, so that the ready event cannot be missed
        ready.catch(() => {}) // awaited below; a start slower than the timeout must not leave it unhandled
        await this.driver.start(id)
        await ready
      }
      return new SandboxHandle(id, agent)
    } catch (err) {
      await this.driver.remove(id).catch(() => {})
      if (dir) await removeAgentDir(dir).catch(() => {})
      throw this.dockerError('start', err)
    }
  }

  private agentLog (containerId: string): (line: string) => void {
    return (line) => this.log.debug({ container: containerId.slice(0, 12), agent: line.trimEnd() }, 'agent log')
  }

  /** The agent's socket when the container has one that answers, else its attach stream. */
  private async connect (id: string, dir: string | undefined, socketWaitMs: number): Promise<AgentClient> {
    if (dir) {
      try {
        const agent = AgentClient.overSocket(await connectAgentSocket(dir, socketWaitMs), this.agentLog(id))
        this.dirs.set(id, dir)
        return agent
      } catch (err) {
        this.log.debug({ container: id.slice(0, 12), err: (err as Error).message }, 'agent socket unreachable; attaching')
      }
    }
    return await this.driver.attach(id, this.agentLog(id))
  }

  /** Connects to a running container (after a restart, or one another server process started); null if it is gone. */
  async adopt (containerId: string, socketWaitMs = 1000): Promise<SandboxHandle | null> {
    let dir: string | undefined
    try {
      const state = await this.driver.inspect(containerId)
      if (!state) return null
      dir = state.labels[AGENT_DIR_LABEL]
      if (!state.running) {
        await this.remove(containerId, dir)
        return null
      }
    } catch (err) {
      throw this.dockerError('inspect', err)
    }
    const agent = await this.connect(containerId, dir, socketWaitMs)
    if (!await answers(agent)) {
      agent.close()
      await this.remove(containerId, dir).catch(() => {})
      return null
    }
    return new SandboxHandle(containerId, agent)
  }

  /** The agent directory of a container this process made or adopted, if it has one. */
  agentDirOf (containerId: string): string | undefined {
    return this.dirs.get(containerId)
  }

  /** Whether sandboxes get an agent directory (the socket channel): the egress proxy lives there. */
  get hasAgentDirs (): boolean {
    return Boolean(this.agentBase)
  }

  /** Why a container stopped: Docker's OOM flag and exit code; null when it is running or gone. */
  async endState (containerId: string): Promise<{ oomKilled: boolean, exitCode: number } | null> {
    try {
      const state = await this.driver.inspect(containerId)
      if (!state || state.running) return null
      // Under gVisor the memory limit kills the whole sandbox (SIGKILL, exit 137) and Docker does not always flag it
      // (OOMKilled was false for 1 of 3 runsc OOM kills here). A SIGKILL nobody sent through Docker (no `kill` event:
      // `docker kill`, `docker rm -f` and this server's removals all make one) is the memory limit.
      const oomKilled = state.oomKilled || (this.opts.limits.runtime === 'runsc' && state.exitCode === 137 &&
        !(await this.driver.killedSince(containerId, state.startedAt)))
      return { oomKilled, exitCode: state.exitCode }
    } catch {
      return null
    }
  }

  async remove (containerId: string, dir?: string): Promise<void> {
    dir ??= this.dirs.get(containerId)
    if (!dir && this.agentBase) {
      dir = await this.driver.inspect(containerId).then(state => state?.labels[AGENT_DIR_LABEL], () => undefined)
    }
    try {
      await this.driver.remove(containerId)
    } catch (err) {
      throw this.dockerError('remove', err)
    }
    this.dirs.delete(containerId)
    if (dir) await removeAgentDir(dir).catch(() => {})
  }

  /** How this host pauses sandboxes, if found out yet (and why not with their memory). */
  get pauseInfo (): { mode: PauseMode | 'unknown', note?: string } {
    return this.checks ? { mode: this.modeOf(this.checks), ...(this.checks.note ? { note: this.checks.note } : {}) } : { mode: 'unknown' }
  }

  private modeOf (checks: CheckpointChecks): PauseMode {
    const wanted = this.opts.pauseMode ?? 'auto'
    if (wanted === 'files' || !checks.once) return 'files'
    return wanted === 'memory' || checks.again ? 'memory' : 'files'
  }

  /**
   * How this host pauses a sandbox (`restored`: one resumed from a checkpoint before), found out once by trying: a
   * container of this server's spec is checkpointed and restored, twice. SANDBOX_PAUSE_MODE=auto (the default) keeps
   * memory only where both rounds work; memory: where the first does (a container restored once then pauses with its
   * files, where a second checkpoint fails); files: never checkpoints.
   */
  async pauseMode (restored = false): Promise<PauseMode> {
    if (this.opts.pauseMode === 'files') return 'files'
    this.probing ??= this.probe().then((checks) => {
      this.checks = checks
      this.log.info({ host: this.host, runtime: this.opts.limits.runtime ?? 'runc', ...checks, pause_mode: this.modeOf(checks) }, 'how this host pauses sandboxes')
      return checks
    })
    const checks = await this.probing
    const mode = this.modeOf(checks)
    return mode === 'memory' && restored && !checks.again ? 'files' : mode
  }

  /** Pauses and resumes a sandbox of this server's spec twice, the way pause() and resume() do. */
  private async probe (): Promise<CheckpointChecks> {
    if (!await this.driver.canCheckpoint().catch(() => false)) return { once: false, again: false, note: 'the Docker daemon has no experimental features (its checkpoint API)' }
    const why = (err: unknown) => (err as PauseFailed).message
    let handle: SandboxHandle | undefined
    try {
      handle = await this.create()
      const round = async (h: SandboxHandle) => {
        await this.checkpoint(h)
        return await this.restore(h.containerId)
      }
      try {
        handle = await round(handle)
      } catch (err) {
        return { once: false, again: false, note: `a checkpoint and restore fail here: ${why(err)}` }
      }
      try {
        handle = await round(handle)
      } catch (err) {
        return { once: true, again: false, note: `a restored container cannot be checkpointed and restored again here: ${why(err)}` }
      }
      return { once: true, again: true }
    } catch (err) {
      return { once: false, again: false, note: `the checkpoint probe failed: ${why(err)}` }
    } finally {
      if (handle) {
        handle.agent.close()
        await this.remove(handle.containerId).catch(() => {})
      }
    }
  }

  /**
   * Checkpoints a sandbox's memory and processes; its container stops and the handle is closed. Sockets to the host
   * cannot be checkpointed, so the agent first closes its own (suspend). When the checkpoint fails, the agent is
   * woken again and the error says whether the container still runs (then adopt() gets it back).
   */
  async checkpoint (handle: SandboxHandle): Promise<void> {
    const id = handle.containerId
    const dir = this.dirs.get(id)
    if (dir) await handle.suspend()
    handle.agent.close()
    try {
      await this.driver.checkpoint(id, CHECKPOINT)
      // Docker answers before it has seen the container exit; a restore before that would find it "running".
      for (let i = 0; i < 100 && (await this.driver.inspect(id))?.running; i++) await new Promise(resolve => setTimeout(resolve, 50))
    } catch (err) {
      if (dir) await wakeAgent(dir).catch(() => {})
      const running = (await this.driver.inspect(id).catch(() => null))?.running === true
      throw new PauseFailed(`the checkpoint failed: ${(err as { json?: { message?: string } }).json?.message ?? (err as Error).message}`, running, { cause: err })
    }
  }

  /** Starts a checkpointed container where it was and connects to its agent; an error says why it cannot be. */
  async restore (containerId: string): Promise<SandboxHandle> {
    const state = await this.driver.inspect(containerId).catch((err: unknown) => { throw this.dockerError('inspect', err) })
    if (!state) throw new Error('its container is gone')
    if (!state.running) {
      await this.driver.restore(containerId, CHECKPOINT).catch((err: { json?: { message?: string }, message: string }) => {
        throw new Error(`the restore failed: ${err.json?.message?.trim() ?? err.message}`, { cause: err })
      })
    }
    const dir = state.labels[AGENT_DIR_LABEL]
    if (dir) await wakeAgent(dir).catch(() => {})
    const agent = await this.connect(containerId, dir, 5000) // the agent listens again a moment after its wake-up
    if (!await answers(agent)) {
      agent.close()
      throw new Error('its agent did not answer after the restore')
    }
    await this.driver.deleteCheckpoint(containerId, CHECKPOINT).catch(() => {})
    return new SandboxHandle(containerId, agent)
  }

  /** The name of a volume of kept files: `<namespace>-<purpose>-<id>` (id: [A-Za-z0-9_-]). */
  volumeFor (purpose: KeptFor, id: string): string {
    return `${this.opts.namespace}-${purpose}-${id}`
  }

  /** Copies a sandbox's workspace into a new volume of this host (a pause that keeps the files); its size in bytes. */
  async pack (handle: SandboxHandle, purpose: KeptFor, whose: string, id = whose): Promise<{ volume: string, bytes: number }> {
    const volume = this.volumeFor(purpose, id)
    let bytes = 0
    const packed = handle.pack()
    const tar = packed.pipe(new Transform({ transform (chunk: Buffer, _encoding, done) { bytes += chunk.length; done(null, chunk) } }))
    packed.on('error', (err) => tar.destroy(err))
    tar.on('error', () => {}) // fillVolume's pipeline rejects with it, even when it fails before that pipeline begins
    const labels = { [NAMESPACE_LABEL]: this.opts.namespace, [INSTANCE_LABEL]: this.opts.instance, [KEPT_LABEL]: `${purpose}:${whose}` }
    try {
      await this.driver.fillVolume(volume, labels, this.opts.limits.image, tar)
    } catch (err) {
      tar.destroy()
      await this.driver.removeVolume(volume).catch(() => {})
      throw new PauseFailed(`the workspace could not be kept: ${(err as Error).message}`, handle.agent.alive, { cause: err })
    }
    return { volume, bytes }
  }

  /** Unpacks a volume's files into a sandbox's workspace (a resume, or a start from a snapshot); the bytes moved. */
  async unpack (handle: SandboxHandle, volume: string): Promise<number> {
    return await handle.unpack('', this.driver.readVolume(volume, this.opts.limits.image) as AsyncIterable<Buffer>)
  }

  async removeVolume (name: string): Promise<void> {
    await this.driver.removeVolume(name)
  }

  /** The volumes of kept files on this host: what each is for, and the process that made it. */
  async keptVolumes (): Promise<Array<{ name: string, purpose: KeptFor | undefined, instance: string | undefined }>> {
    const list = await this.driver.listVolumes(this.opts.namespace)
    return list.map(v => ({ name: v.name, purpose: v.labels[KEPT_LABEL]?.split(':')[0] as KeptFor | undefined, instance: v.labels[INSTANCE_LABEL] }))
  }

  /**
   * Removes this deployment's agent directories on this host that no container references any more (left by
   * containers removed by hand), except those being made now or too young to tell.
   */
  async removeStaleAgentDirs (): Promise<number> {
    const base = this.agentBase
    if (!base) return 0
    const list = await this.driver.list()
    const inUse = new Set([...this.making, ...this.dirs.values(), ...list.map(c => c.labels[AGENT_DIR_LABEL]).filter((d): d is string => !!d)])
    const stale = await staleAgentDirs(base, inUse)
    await Promise.all(stale.map(removeAgentDir))
    return stale.length
  }

  /** Containers of this namespace that Docker knows, with the process that made them (null when unlabelled). */
  async list (): Promise<Array<{ id: string, instance: string | null, dir?: string }>> {
    try {
      const list = await this.driver.list(this.opts.namespace)
      return list.map(c => ({ id: c.id, instance: c.labels[INSTANCE_LABEL] ?? null, dir: c.labels[AGENT_DIR_LABEL] }))
    } catch (err) {
      throw this.dockerError('list', err)
    }
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
