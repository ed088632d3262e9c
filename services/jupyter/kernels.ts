// The Jupyter kernel manager, without any transport: a kernel is one of our sessions with its sandbox (same keys,
// limits, history and reaping), Jupyter sessions live in the kernel's metadata, and a kernel's channel peers share
// one execute queue (a kernel runs one cell at a time, in order; a failed cell aborts what is queued behind it when
// the request asks for stop_on_error). routes/jupyter/ is the wire format over it.
import type { Principal } from '../auth.js'
import type { Session } from '../../schemas/sessions.js'
import type { Language } from '../../schemas/sandboxes.js'
import { AppError } from '../errors.js'
import { runError, type RunManager } from '../interpreter/runs.js'
import type { SessionService } from '../sessions.js'
import type { SandboxService } from '../sandbox/service.js'
import type { Logger } from '../sandbox/pool.js'
import {
  MessageFactory, errorContent, fallbackReply, iopubFor, kernelInfo, kernelSpecs, specModel,
  type JupyterHeader, type JupyterMessage, type KernelSpec
} from './messages.js'

const SOURCE = 'jupyter'
const ALL = { offset: 0, limit: 10_000 }

/** One client's channels connection, as the kernel manager sees it: where to send its messages. */
export interface ChannelPeer {
  send (message: JupyterMessage): void
  /** Ends the connection (the kernel was shut down or no longer exists). */
  close (code: number, reason: string): void
  /** Drops the connection at once (the server is closing). */
  terminate (): void
}

/** What this process knows of a kernel: its peers, and the queue its execute_requests wait in. */
interface KernelState {
  peers: Set<ChannelPeer>
  queue: Promise<void>
  /** execute_requests numbered up to this are aborted (an earlier one failed with stop_on_error). */
  abortThrough: number
  enqueued: number
}

/** A Jupyter session's fields, as kept in its kernel's metadata. */
export type SessionFields = Partial<Record<'jupyter_path' | 'jupyter_name' | 'jupyter_type', string>>

export interface KernelDeps {
  sessions: SessionService
  runs: RunManager
  sandboxes: SandboxService
  /** Counts a cell against the key's (and the kernel's) rate limits, as an execute request would be. */
  limitAction: (principal: Principal, target: string) => Promise<void>
  maxExecutionTimeoutMs: number
  log: Logger
}

export class JupyterKernels {
  readonly specs: KernelSpec[]
  private readonly specByName: Map<string, KernelSpec>
  private readonly kernels = new Map<string, KernelState>()

  constructor (private readonly deps: KernelDeps) {
    this.specs = kernelSpecs(deps.sandboxes.languages())
    this.specByName = new Map(this.specs.map(s => [s.name, s]))
  }

  get defaultSpec (): KernelSpec { return this.specs[0] }

  /** The kernel specs as Jupyter's /api/kernelspecs lists them. */
  specModels (): { default: string, kernelspecs: Record<string, unknown> } {
    return { default: this.defaultSpec.name, kernelspecs: Object.fromEntries(this.specs.map(s => [s.name, specModel(s)])) }
  }

  specOf (session: Session): KernelSpec {
    return this.specByName.get(session.metadata.jupyter_kernel ?? '') ?? this.defaultSpec
  }

  private state (id: string): KernelState {
    let s = this.kernels.get(id)
    if (!s) {
      s = { peers: new Set(), queue: Promise.resolve(), abortThrough: 0, enqueued: 0 }
      this.kernels.set(id, s)
    }
    return s
  }

  /** Channel connections open in this process. */
  get connections (): number {
    return [...this.kernels.values()].reduce((n, k) => n + k.peers.size, 0)
  }

  /** The kernel (one of the key's Jupyter sessions) or 404, as for any other key's resource. */
  async get (id: string, principal: Principal): Promise<Session> {
    const session = await this.deps.sessions.get(id, principal)
    if (session.metadata.source !== SOURCE) throw new AppError(404, 'kernel_not_found', `Kernel does not exist: ${id}`, 'not_found_error')
    return session
  }

  async list (principal: Principal): Promise<Session[]> {
    return (await this.deps.sessions.list(principal, ALL)).items.filter(s => s.metadata.source === SOURCE)
  }

  async model (session: Session): Promise<{ id: string, name: string, last_activity: string, execution_state: 'busy' | 'idle', connections: number }> {
    return {
      id: session.id,
      name: this.specOf(session).name,
      last_activity: session.updated_at,
      execution_state: (await this.deps.runs.running(session.id)) ? 'busy' : 'idle',
      connections: this.kernels.get(session.id)?.peers.size ?? 0
    }
  }

  /** Starts a kernel: a session and its sandbox (from the warm pool); nothing is left behind when the start fails. */
  async start (principal: Principal, name: string | undefined, signal?: AbortSignal, extra: Record<string, string> = {}): Promise<Session> {
    const spec = name === undefined || name === '' ? this.defaultSpec : this.specByName.get(name)
    if (!spec) throw new AppError(400, 'no_such_kernel', `No such kernel: ${name} (this server has ${this.specs.map(s => s.name).join(', ')})`)
    const session = await this.deps.sessions.create(principal, { title: `Jupyter kernel (${spec.name})`, metadata: { source: SOURCE, jupyter_kernel: spec.name, ...extra } })
    try {
      await this.deps.runs.sessionSandbox(session, signal)
    } catch (err) {
      await this.deps.runs.endSession(session).catch(() => {})
      throw err
    }
    return session
  }

  /** Shuts a kernel down: its connections close, its session and sandbox are removed. */
  async shutdown (session: Session): Promise<void> {
    const local = this.kernels.get(session.id)
    this.kernels.delete(session.id)
    for (const peer of local?.peers ?? []) peer.close(1000, 'kernel shut down')
    await this.deps.runs.endSession(session)
  }

  /** Fresh kernel processes in the same sandbox (files kept), as Jupyter's restart. */
  async restart (session: Session): Promise<void> {
    const record = await this.deps.runs.sessionSandbox(session)
    await (await this.deps.sandboxes.handle(record)).restart(this.specOf(session).language.kernel ?? 'python')
  }

  async interrupt (session: Session): Promise<void> {
    await this.deps.runs.interrupt(session.id)
  }

  // --- Jupyter sessions (notebook ↔ kernel), kept in the kernel's metadata -------------------------------------------

  async sessionModel (kernel: Session): Promise<Record<string, unknown>> {
    return {
      id: kernel.metadata.jupyter_session,
      path: kernel.metadata.jupyter_path ?? '',
      name: kernel.metadata.jupyter_name ?? '',
      type: kernel.metadata.jupyter_type ?? 'notebook',
      kernel: await this.model(kernel),
      notebook: { path: kernel.metadata.jupyter_path ?? '', name: kernel.metadata.jupyter_name ?? '' }
    }
  }

  async sessionsOf (principal: Principal): Promise<Session[]> {
    return (await this.list(principal)).filter(k => k.metadata.jupyter_session)
  }

  /** The kernel holding a Jupyter session, or 404. */
  async findSession (id: string, principal: Principal): Promise<Session> {
    const kernel = (await this.list(principal)).find(k => k.metadata.jupyter_session === id)
    if (!kernel) throw new AppError(404, 'session_not_found', `Session not found: ${id}`, 'not_found_error')
    return kernel
  }

  /**
   * A Jupyter session on an existing kernel of the key's, or on a new one; jupyter_server gives back the existing
   * session of a path instead of making a second.
   */
  async createSession (principal: Principal, id: string, fields: SessionFields, wanted: { id?: string, name?: string } | null, signal?: AbortSignal): Promise<Session> {
    const path = fields.jupyter_path
    if (path !== undefined) {
      const existing = (await this.list(principal)).find(k => k.metadata.jupyter_session && k.metadata.jupyter_path === path)
      if (existing) return existing
    }
    if (wanted?.id) {
      const kernel = await this.get(wanted.id, principal)
      await this.deps.sessions.setMetadata(kernel, { jupyter_session: id, ...fields })
      return kernel
    }
    return await this.start(principal, wanted?.name, signal, { jupyter_session: id, ...fields })
  }

  /** Renames a Jupyter session or moves it to another kernel (the kernel it leaves is shut down, as jupyter_server does). */
  async updateSession (principal: Principal, id: string, fields: SessionFields, wanted: { id?: string, name?: string } | null): Promise<Session> {
    let kernel = await this.findSession(id, principal)
    const mine = { jupyter_session: id, jupyter_path: kernel.metadata.jupyter_path ?? '', jupyter_name: kernel.metadata.jupyter_name ?? '', jupyter_type: kernel.metadata.jupyter_type ?? 'notebook', ...fields }
    if (wanted && (wanted.id ? wanted.id !== kernel.id : wanted.name !== undefined)) {
      const previous = kernel
      kernel = wanted.id ? await this.get(wanted.id, principal) : await this.start(principal, wanted.name, undefined, mine)
      await this.deps.sessions.setMetadata(kernel, mine)
      await this.shutdown(previous)
    } else {
      await this.deps.sessions.setMetadata(kernel, mine)
    }
    return kernel
  }

  // --- channels --------------------------------------------------------------------------------------------------------

  /**
   * Joins a peer to a kernel's channels: `receive` takes its shell and control messages; replies go back to it and
   * iopub to every peer of the kernel. `leave` when the connection ends.
   */
  connect (id: string, principal: Principal, peer: ChannelPeer, log: Logger): { receive: (message: JupyterMessage) => void, leave: () => void } {
    const kernel = this.state(id)
    kernel.peers.add(peer)
    const factory = new MessageFactory(id)
    const reply = (channel: string, type: string, content: Record<string, unknown>, parent: Partial<JupyterHeader>) =>
      peer.send(factory.make(channel, type, content, parent))
    const publish = (type: string, content: Record<string, unknown>, parent: Partial<JupyterHeader>) => {
      const message = type === 'status' ? factory.status(content.execution_state as 'busy', parent) : factory.make('iopub', type, content, parent)
      for (const p of kernel.peers) p.send(message)
    }
    const session = () => this.get(id, principal)

    const execute = async (message: JupyterMessage, seq: number) => {
      const parent = message.header
      const content = message.content
      const code = typeof content.code === 'string' ? content.code : ''
      const silent = content.silent === true
      publish('status', { execution_state: 'busy' }, parent)
      let count = 0
      let failure: Record<string, unknown> | null = null
      try {
        if (seq <= kernel.abortThrough) {
          reply('shell', 'execute_reply', { status: 'aborted', execution_count: null }, parent)
          return
        }
        await this.deps.limitAction(principal, id) // a cell counts as an execute request would (in the queue: cells keep their order)
        const current = await session()
        const language = this.specOf(current).language.id as Language
        const run = await this.deps.runs.executeDirect(current, language, code, {
          via: 'jupyter',
          timeoutMs: this.deps.maxExecutionTimeoutMs,
          onEvent: (e) => {
            if (e.type === 'start') count = e.execution_count
            for (const [type, body] of iopubFor(e, count, code, silent)) publish(type, body, parent)
            if (e.type === 'error') failure = errorContent(e)
          }
        })
        const outcome = await run.done
        if (outcome.error && !failure) {
          failure = { ename: outcome.error.code, evalue: outcome.error.message, traceback: [`${outcome.error.code}: ${outcome.error.message}`] }
          publish('error', failure, parent)
        }
      } catch (err) {
        const e = runError(err)
        failure = { ename: e.code, evalue: e.message, traceback: [`${e.code}: ${e.message}`] }
        publish('error', failure, parent)
      } finally {
        if (seq > kernel.abortThrough || failure) {
          if (failure && content.stop_on_error !== false) kernel.abortThrough = kernel.enqueued // what is queued behind a failed cell is aborted
          reply('shell', 'execute_reply', failure
            ? { status: 'error', execution_count: count, ...failure }
            : { status: 'ok', execution_count: count, user_expressions: {}, payload: [] }, parent)
        }
        publish('status', { execution_state: 'idle' }, parent)
      }
    }

    const handle = async (message: JupyterMessage) => {
      const parent = message.header
      const type = parent.msg_type
      const channel = message.channel === 'control' ? 'control' : 'shell'
      switch (type) {
        case 'execute_request': {
          const seq = ++kernel.enqueued
          kernel.queue = kernel.queue.then(() => execute(message, seq)).catch((err: Error) => log.warn({ err: err.message }, 'a jupyter execution failed'))
          return
        }
        case 'kernel_info_request': {
          publish('status', { execution_state: 'busy' }, parent)
          reply(channel, 'kernel_info_reply', kernelInfo(this.specOf(await session())), parent)
          publish('status', { execution_state: 'idle' }, parent)
          return
        }
        case 'interrupt_request':
          await this.deps.runs.interrupt(id)
          return reply(channel, 'interrupt_reply', { status: 'ok' }, parent)
        case 'shutdown_request': {
          const restarting = message.content.restart === true
          const current = await session()
          if (restarting) {
            await this.restart(current)
            kernel.abortThrough = kernel.enqueued
          }
          reply(channel, 'shutdown_reply', { status: 'ok', restart: restarting }, parent)
          if (!restarting) await this.shutdown(current)
          return
        }
        case 'comm_open': // no comms (widgets): the client is told the comm is closed at once
          return publish('comm_close', { comm_id: message.content.comm_id ?? '', data: {} }, parent)
        case 'input_reply': case 'comm_msg': case 'comm_close':
          return
        default: {
          const content = fallbackReply(type, message.content)
          if (content) reply(channel, type.replace(/_request$/, '_reply'), content, parent)
          else log.debug({ type }, 'ignored a jupyter message')
        }
      }
    }

    return {
      receive: (message) => {
        handle(message).catch((err: unknown) => {
          const e = runError(err)
          const type = message.header.msg_type
          if (type.endsWith('_request')) {
            reply(message.channel === 'control' ? 'control' : 'shell', type.replace(/_request$/, '_reply'), { status: 'error', ename: e.code, evalue: e.message, traceback: [] }, message.header)
          }
          if (e.statusCode === 404) peer.close(1011, 'kernel does not exist')
        })
      },
      leave: () => { kernel.peers.delete(peer) }
    }
  }

  /** Ends every connection (the server is closing). */
  close (): void {
    for (const k of this.kernels.values()) for (const peer of k.peers) peer.terminate()
    this.kernels.clear()
  }
}
