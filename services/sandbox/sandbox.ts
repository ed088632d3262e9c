import { PassThrough, type Readable } from 'node:stream'
import type { AgentClient } from './agent-client.js'
import type { AgentEventOf } from '../../schemas/agent.js'
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
}

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
    this.busy = true
    try {
      await this.agent.request('execute', {
        language: opts.kernel, code: opts.code, timeout_ms: opts.timeoutMs, max_output_bytes: opts.maxOutputBytes
      }, (raw) => {
        const { id: _id, ...event } = raw
        const e = event as unknown as ExecutionEvent
        switch (e.type) {
          case 'stdout': execution.stdout += e.text; break
          case 'stderr': execution.stderr += e.text; break
          case 'result': case 'display': execution.results.push({ type: e.type, data: e.data }); break
          case 'error':
            if (e.code === 'sandbox_busy') { busy = true; return }
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

  async listFiles (path: string): Promise<FileEntry[]> {
    const answer = await this.agent.call('list', { path })
    if (answer.type === 'error') throw fileError(answer)
    if (answer.type !== 'files') throw new AppError(500, 'agent_protocol', `list answered with ${answer.type}`, 'sandbox_error')
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
  async enableEgress (): Promise<void> {
    const answer = await this.agent.call('egress', {})
    if (answer.type === 'error') throw new AppError(500, 'egress_failed', answer.value ?? 'the egress relay did not start', 'sandbox_error')
  }

  async setEnv (env: Record<string, string>): Promise<void> {
    await this.agent.call('env', { env })
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

  /** Before a checkpoint: the agent closes its socket channels and listener (see sandbox/agent.py, op_suspend). */
  async suspend (): Promise<void> {
    await this.agent.call('suspend', {})
  }
}
