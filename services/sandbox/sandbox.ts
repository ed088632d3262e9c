import { PassThrough, type Readable } from 'node:stream'
import type { AgentClient } from './agent-client.js'
import type { AgentEvent, AgentEventOf, AgentRequest } from '../../schemas/agent.js'
import type { Execution, ExecutionEvent, FileEntry, KernelLanguage, Language } from '../../schemas/sandboxes.js'
import { AppError } from '../errors.js'

const FILE_ERRORS: Record<string, [number, string]> = {
  file_not_found: [404, 'File not found'],
  path_outside_workspace: [400, 'The path must stay inside the workspace'],
  is_a_directory: [400, 'The path is a directory'],
  not_a_regular_file: [400, 'Only regular files can be read (the path is a FIFO, socket or device)'],
  not_a_directory: [400, 'A part of the path is not a directory'],
  disk_full: [507, 'The sandbox workspace is full'],
  file_too_large: [413, 'The file is larger than the sandbox allows']
}

/** What the agent's process, terminal and watcher errors mean to a caller. */
const WORKSPACE_ERRORS: Record<string, [number, string]> = {
  no_process: [404, 'process_not_found'],
  process_exited: [409, 'process_exited'],
  no_stdin: [409, 'no_stdin'],
  not_a_terminal: [409, 'not_a_terminal'],
  stdin_full: [429, 'stdin_full'],
  too_many_processes: [429, 'too_many_processes'],
  too_many_terminals: [429, 'too_many_terminals'],
  too_many_watchers: [429, 'too_many_watchers'],
  pids_exhausted: [429, 'pids_exhausted'],
  bad_request: [400, 'validation_error'],
  no_kernel: [404, 'context_not_found'],
  kernel_exists: [409, 'context_exists']
}

export function workspaceError (event: AgentEventOf<'error'>): AppError {
  const known = WORKSPACE_ERRORS[event.code ?? '']
  if (!known) return fileError(event)
  return new AppError(known[0], known[1], event.value ?? event.name, known[0] === 429 ? 'rate_limit_error' : 'invalid_request_error')
}

export interface SpawnOptions {
  cmd: string[]
  cwd?: string
  env?: Record<string, string>
  stdin?: boolean
  pty?: { cols: number, rows: number }
  timeoutMs?: number
  keepBytes: number
  tag?: string
  maxProcesses: number
  maxTerminals: number
}

export type ProcessInfo = AgentEventOf<'processes'>['processes'][number]
/** A file entry with the details the agent adds (mode, owner, a symlink's target). */
export type FileDetail = AgentEventOf<'files'>['entries'][number] & FileEntry
export type ProcessExit = Omit<AgentEventOf<'proc_exit'>, 'id' | 'type'>
export type FollowEvent = AgentEventOf<'proc_follow'> | AgentEventOf<'proc_output'> | AgentEventOf<'proc_exit'>
export type WatchEvent = AgentEventOf<'watching'> | AgentEventOf<'fs_event'>

/** A follow or a watch: events until it ends (`done`), or until `stop()`. */
export interface Subscription { done: Promise<void>, stop: () => Promise<void> }

function fileError (event: AgentEventOf<'error'>): AppError {
  const code = event.code ?? 'file_error'
  const [status, message] = FILE_ERRORS[code] ?? [400, event.value ?? 'file operation failed']
  return new AppError(status, code, message, 'file_error')
}

export interface ExecuteOptions {
  /** The kernel that runs the code. */
  kernel: KernelLanguage
  /** The language the execution reports (a fresh-process language runs through the shell kernel). */
  language: Language
  code: string
  timeoutMs: number
  maxOutputBytes: number
  /** A named kernel (kernelOpen) instead of the language's default one. */
  named?: string
}

export interface KernelInfo { kernel: string, language: KernelLanguage, cwd: string }

export const UPLOAD_CHUNK = 192 * 1024
/** An execution's agent deadline past its own timeout: the agent interrupts, then kills, well within this. */
const EXECUTE_SLACK_MS = 30_000

/** One live container with its attached agent. */
export class SandboxHandle {
  busy = false

  constructor (readonly containerId: string, readonly agent: AgentClient) {}

  /** Runs code; `onEvent` sees each event as it arrives; resolves with the whole execution. */
  async execute (opts: ExecuteOptions, onEvent: (e: ExecutionEvent) => void = () => {}): Promise<Omit<Execution, 'sandbox_id'>> {
    const execution: Omit<Execution, 'sandbox_id'> = {
      language: opts.language, stdout: '', stderr: '', results: [], error: null, execution_count: 0, duration_ms: 0, state_lost: false
    }
    let busy = false
    let missing: string | null = null
    this.busy = true
    try {
      await this.agent.request('execute', {
        language: opts.kernel, code: opts.code, timeout_ms: opts.timeoutMs, max_output_bytes: opts.maxOutputBytes, ...(opts.named ? { kernel: opts.named } : {})
      }, (raw) => {
        const { id: _id, ...event } = raw
        const e = event as unknown as ExecutionEvent
        switch (e.type) {
          case 'stdout': execution.stdout += e.text; break
          case 'stderr': execution.stderr += e.text; break
          case 'result': case 'display': execution.results.push({ type: e.type, data: e.data }); break
          case 'error':
            if (e.code === 'sandbox_busy') { busy = true; return }
            if (e.code === 'no_kernel') { missing = e.value ?? 'no such context'; return }
            execution.error = { name: e.name, value: e.value, traceback: e.traceback ?? [], ...(e.code ? { code: e.code } : {}), ...(e.state_lost !== undefined ? { state_lost: e.state_lost } : {}) }
            break
          case 'end':
            execution.execution_count = e.execution_count
            execution.duration_ms = e.duration_ms
            execution.state_lost = e.state_lost
            if (typeof e.exit_code === 'number') execution.exit_code = e.exit_code
            break
          case 'start': execution.execution_count = e.execution_count; break
        }
        onEvent(e)
      }, opts.timeoutMs + EXECUTE_SLACK_MS)
    } finally {
      this.busy = false
    }
    if (busy) throw new AppError(409, 'sandbox_busy', 'Another execution is running in this sandbox', 'sandbox_error')
    if (missing !== null) throw new AppError(404, 'context_not_found', missing)
    return execution
  }

  async interrupt (): Promise<boolean> {
    const answer = await this.agent.call('interrupt', {})
    return answer.type === 'done' && answer.interrupted === true
  }

  /** Fresh kernels with the same environment and files (a running execution ends as interrupted); `kernel` starts warm. */
  async restart (kernel: KernelLanguage = 'python'): Promise<void> {
    await this.agent.call('restart', { language: kernel })
  }

  /** Restarts one named kernel (its variables go; its language and directory stay). */
  async restartKernel (name: string): Promise<void> {
    const answer = await this.agent.call('restart', { kernel: name })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  /** Starts a named kernel `<language>:<name>` in `cwd` (an E2B code context). */
  async kernelOpen (name: string, language: KernelLanguage, cwd?: string): Promise<void> {
    const answer = await this.agent.call('kernel_open', { kernel: name, language, ...(cwd ? { cwd } : {}) })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  async kernelClose (name: string): Promise<void> {
    const answer = await this.agent.call('kernel_close', { kernel: name })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  async kernels (): Promise<KernelInfo[]> {
    const answer = await this.agent.call('kernel_list', {})
    if (answer.type !== 'kernels') throw new AppError(500, 'agent_protocol', `kernel_list answered with ${answer.type}`, 'sandbox_error')
    return answer.kernels
  }

  /** A directory's entries; `depth` > 1 includes its subdirectories' to that many levels. */
  async listFiles (path: string, depth = 1): Promise<FileDetail[]> {
    return await this.entries(await this.agent.call('list', { path, ...(depth > 1 ? { depth } : {}) }), 'list')
  }

  /** One entry (a missing one: 404 file_not_found). */
  async stat (path: string): Promise<FileDetail> {
    return (await this.entries(await this.agent.call('stat', { path }), 'stat'))[0]!
  }

  /** Makes a directory and its parents; false when it was there already. */
  async mkdir (path: string): Promise<boolean> {
    const answer = await this.agent.call('mkdir', { path })
    if (answer.type === 'error') throw fileError(answer)
    return answer.type === 'done' && answer.created === true
  }

  /** Renames a file or directory; the moved entry. */
  async move (source: string, destination: string): Promise<FileDetail> {
    return (await this.entries(await this.agent.call('move', { source, destination }), 'move'))[0]!
  }

  private async entries (answer: AgentEvent, op: string): Promise<FileDetail[]> {
    if (answer.type === 'error') throw fileError(answer)
    if (answer.type !== 'files') throw new AppError(500, 'agent_protocol', `${op} answered with ${answer.type}`, 'sandbox_error')
    return answer.entries
  }

  /** Resolves once the file is open (so a missing file is an error before any byte is sent), with its bytes as a stream. */
  readFile (path: string): Promise<{ size: number, stream: Readable }> {
    return new Promise((resolve, reject) => {
      const stream = new PassThrough()
      // An error can end the stream before its reader attaches (a read that fails mid-file): never an unhandled 'error'.
      stream.on('error', () => {})
      let opened = false
      this.agent.request('read', { path }, (e) => {
        if (e.type === 'error') {
          if (opened) stream.destroy(fileError(e))
          else reject(fileError(e))
        } else if (e.type === 'file_start') {
          opened = true
          resolve({ size: Number(e.size), stream })
        } else if (e.type === 'file_chunk') {
          stream.write(Buffer.from(String(e.data), 'base64'))
        } else if (e.type === 'done') {
          stream.end()
        }
      }).catch((err: Error) => { if (opened) stream.destroy(err); else reject(err) })
    })
  }

  /**
   * A whole file, for the callers that need it at once (editors, find-and-replace, tools that answer with content):
   * a 413 past `limit` bytes, the read then abandoned. Callers that can stream use readFile.
   */
  async readAll (path: string, limit: number): Promise<Buffer> {
    const { size, stream } = await this.readFile(path)
    if (size > limit) {
      stream.destroy()
      throw new AppError(413, 'file_too_large', `${path} is ${size} bytes; at most ${limit} bytes are read at once`)
    }
    const chunks: Buffer[] = []
    for await (const chunk of stream) chunks.push(chunk as Buffer)
    return Buffer.concat(chunks)
  }

  /** Streams `source` into a file in the workspace, one acknowledged chunk at a time; returns its size. */
  async writeFile (path: string, source: AsyncIterable<Buffer | string>, maxBytes: number): Promise<number> {
    return await this.upload('write_open', path, source, maxBytes)
  }

  /** Unpacks a tar stream into a workspace directory (the files a pause kept); the bytes it took. */
  async unpack (path: string, tar: AsyncIterable<Buffer | string>): Promise<number> {
    return await this.upload('unpack_open', path, tar, Number.MAX_SAFE_INTEGER)
  }

  private async upload (op: 'write_open' | 'unpack_open', path: string, source: AsyncIterable<Buffer | string>, maxBytes: number): Promise<number> {
    const opened = await this.agent.call(op, { path })
    if (opened.type === 'error') throw fileError(opened)
    const upload = opened.id!
    let total = 0
    let pending = Buffer.alloc(0)
    const send = async (data: Buffer) => {
      const answer = await this.agent.call('write_chunk', { upload, data: data.toString('base64') })
      if (answer.type === 'error') throw fileError(answer)
    }
    try {
      for await (const piece of source) {
        const buf = typeof piece === 'string' ? Buffer.from(piece) : piece
        total += buf.length
        if (total > maxBytes) throw new AppError(413, 'file_too_large', `Uploads are limited to ${maxBytes} bytes`)
        pending = Buffer.concat([pending, buf])
        while (pending.length >= UPLOAD_CHUNK) {
          await send(pending.subarray(0, UPLOAD_CHUNK))
          pending = pending.subarray(UPLOAD_CHUNK)
        }
      }
      if (pending.length) await send(pending)
    } catch (err) {
      if (this.agent.alive) await this.agent.call('write_close', { upload, abort: true }).catch(() => {})
      throw err
    }
    const closed = await this.agent.call('write_close', { upload })
    if (closed.type === 'error') throw fileError(closed)
    return total
  }

  async deleteFile (path: string): Promise<void> {
    const answer = await this.agent.call('delete', { path })
    if (answer.type === 'error') throw fileError(answer)
  }

  /** Starts the relay that offers the server's egress proxy inside the sandbox (127.0.0.1:3128). */
  async enableEgress (ca?: string): Promise<void> {
    const answer = await this.agent.call('egress', ca ? { ca } : {})
    if (answer.type === 'error') throw new AppError(500, 'egress_failed', answer.value ?? 'the egress relay did not start', 'sandbox_error')
  }

  async setEnv (env: Record<string, string>): Promise<void> {
    await this.agent.call('env', { env })
  }

  /** Adds to the environment (and drops `unset`) for what starts from now on; running kernels keep theirs. */
  async mergeEnv (env: Record<string, string>, unset: string[] = []): Promise<void> {
    await this.agent.call('env', { env, merge: true, unset })
  }

  /** The workspace as a tar stream (a pause that keeps the files); the stream errors if the agent cannot pack it. */
  pack (): Readable {
    const stream = new PassThrough()
    stream.on('error', () => {}) // its reader learns of it (pipeline), even one that attaches later
    this.agent.request('pack', {}, (e) => {
      if (e.type === 'file_chunk') stream.write(Buffer.from(e.data, 'base64'))
      else if (e.type === 'error') stream.destroy(new Error(`the workspace could not be packed: ${e.value ?? e.code ?? 'unknown'}`))
      else if (e.type === 'done') stream.end()
    }).catch((err: Error) => stream.destroy(err))
    return stream
  }

  /** Starts a command as the user; its pid. */
  async spawn (opts: SpawnOptions): Promise<number> {
    const answer = await this.agent.call('spawn', this.spawnBody(opts))
    if (answer.type === 'error') throw workspaceError(answer)
    if (answer.type !== 'spawned') throw new AppError(500, 'agent_protocol', `spawn answered with ${answer.type}`, 'sandbox_error')
    return answer.pid
  }

  /** Starts a command and follows it from its first byte in one request: `onEvent` sees proc_follow (its pid) first. */
  async spawnFollowing (opts: SpawnOptions, limit: number, onEvent: (e: FollowEvent) => void): Promise<Subscription> {
    return await this.subscribe('spawn', { ...this.spawnBody(opts), follow: true, follow_limit: limit }, 'proc_follow', onEvent as (e: AgentEvent) => void, id => this.agent.call('proc_unfollow', { follow: id }))
  }

  private spawnBody (opts: SpawnOptions): AgentRequest<'spawn'> {
    return {
      cmd: opts.cmd,
      ...(opts.cwd ? { cwd: opts.cwd } : {}),
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.stdin ? { stdin: true } : {}),
      ...(opts.pty ? { pty: opts.pty } : {}),
      ...(opts.timeoutMs ? { timeout_ms: opts.timeoutMs } : {}),
      ...(opts.tag ? { tag: opts.tag } : {}),
      keep_bytes: opts.keepBytes,
      max_processes: opts.maxProcesses,
      max_terminals: opts.maxTerminals
    }
  }

  async processes (): Promise<ProcessInfo[]> {
    const answer = await this.agent.call('proc_list', {})
    if (answer.type !== 'processes') throw new AppError(500, 'agent_protocol', `proc_list answered with ${answer.type}`, 'sandbox_error')
    return answer.processes
  }

  /**
   * A process's output from `from` (an offset, or the last `tail` bytes), then live until it exits; `onEvent` sees
   * proc_follow first. Rejects (before any event) if there is no such process.
   */
  async follow (pid: number, from: { offset?: number, tail?: number, limit?: number }, onEvent: (e: FollowEvent) => void): Promise<Subscription> {
    return await this.subscribe('proc_follow', { pid, ...from }, 'proc_follow', onEvent as (e: AgentEvent) => void, id => this.agent.call('proc_unfollow', { follow: id }))
  }

  /** File events under a workspace directory; `onEvent` sees watching first. */
  async watch (path: string, recursive: boolean, maxWatchers: number, onEvent: (e: WatchEvent) => void): Promise<Subscription> {
    return await this.subscribe('watch', { path, recursive, max_watchers: maxWatchers }, 'watching', onEvent as (e: AgentEvent) => void, id => this.agent.call('unwatch', { watch: id }))
  }

  private subscribe<O extends 'proc_follow' | 'watch' | 'spawn'> (op: O, body: AgentRequest<O>, first: string, onEvent: (e: AgentEvent) => void, end: (id: string) => Promise<unknown>): Promise<Subscription> {
    return new Promise((resolve, reject) => {
      let started = false
      const { id, done } = this.agent.open(op, body, (e) => {
        if (!started) {
          if (e.type === 'error') return reject(workspaceError(e))
          if (e.type === first) {
            started = true
            resolve({ done, stop: async () => { if (this.agent.alive) await end(id).catch(() => {}) } })
          }
        }
        onEvent(e)
      }, 0)
      done.catch((err: Error) => { if (!started) reject(err) })
    })
  }

  async input (pid: number, data: Buffer, eof = false): Promise<void> {
    const answer = await this.agent.call('proc_input', { pid, data: data.toString('base64'), ...(eof ? { eof } : {}) })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  async signal (pid: number, signal: string): Promise<void> {
    const answer = await this.agent.call('proc_signal', { pid, signal })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  async resize (pid: number, cols: number, rows: number): Promise<void> {
    const answer = await this.agent.call('proc_resize', { pid, cols, rows })
    if (answer.type === 'error') throw workspaceError(answer)
  }

  /** Before a checkpoint: the agent closes its socket channels and listener (see sandbox/agent.py, op_suspend). */
  async suspend (): Promise<void> {
    await this.agent.call('suspend', {})
  }
}
