import { posix } from 'node:path'
import { createHash } from 'node:crypto'
import type { Principal } from '../auth.js'
import { AppError } from '../errors.js'
import type { SandboxService } from '../sandbox/service.js'
import type { ContextSandboxes } from '../sandbox/contexts.js'
import type { SandboxHandle } from '../sandbox/sandbox.js'
import type { FileEntry, SandboxRecord } from '../../schemas/sandboxes.js'
import { freshProcess } from '../sandbox/languages.js'

/**
 * LibreChat's Code Interpreter API over our sandboxes. A LibreChat session is one of our sandboxes (its session_id
 * is the sandbox id), and /mnt/data is its workspace. Each exec runs the code as a fresh process of its language
 * (LibreChat tells the model the environment is stateless), so files persist between calls and variables do not.
 */

export interface FileRef { id: string, name: string, path: string, session_id: string, storage_session_id: string }
export interface InputFile { id: string, name: string, session_id?: string, storage_session_id?: string }
export interface ExecResult { session_id: string, stdout: string, stderr: string, code: number, files: FileRef[], deleted_files?: string[], runtime_session_id?: string, runtime_status?: 'new' | 'reused' }

/** An attached workspace's id and instance, as @librechat/agents checks them before sending. */
const WORKSPACE_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/
const INSTANCE_ID = /^[a-f0-9]{64}$/

/** A conversation's warm workspace (LibreChat's stateful_code_sessions): the context its runtime hint names. */
const RUNTIME = 'librechat-runtime'
const WORKSPACE = 'librechat-workspace'

/** File ids name a workspace path (base64url), so any replica can serve a download without a table of files. */
export const fileId = (path: string) => Buffer.from(path).toString('base64url')
export function pathOfId (id: string): string {
  const path = Buffer.from(id, 'base64url').toString('utf8')
  if (!id || fileId(path) !== id) throw new AppError(404, 'file_not_found', 'File not found', 'file_error')
  return path
}

/** A file name from a client: kept inside /mnt/data, or a 400. */
export function safeName (name: string): string {
  const clean = posix.normalize(name.replace(/^\/mnt\/data\//, ''))
  if (!name || clean.startsWith('..') || clean.startsWith('/') || clean.includes('\0') || clean === '.') {
    throw new AppError(400, 'invalid_path', `File names must stay inside /mnt/data (got "${name}")`)
  }
  return clean
}

export class LibreChatService {
  constructor (private readonly sandboxes: SandboxService, private readonly opts: { maxFileBytes: number }, private readonly contexts?: ContextSandboxes) {}

  /**
   * The warm workspace of a conversation (LibreChat's runtime_session_hint, with stateful_code_sessions on): one
   * sandbox per key and hint, made on first use, paused when idle, its files kept as long as it lives. Its id is
   * what LibreChat is told as runtime_session_id (a digest: the hint is not echoed), and whether it was reused.
   */
  async runtime (principal: Principal, hint: string, signal?: AbortSignal): Promise<{ record: SandboxRecord, handle: SandboxHandle, id: string, status: 'new' | 'reused' }> {
    if (!this.contexts) throw new AppError(400, 'stateful_workspace_unsupported', 'This server keeps no stateful workspaces')
    if (hint.length > 256) throw new AppError(400, 'validation_error', 'runtime_session_hint is at most 256 characters')
    const id = `rt_${createHash('sha256').update(`${principal.name}\0${hint}`).digest('base64url').slice(0, 24)}`
    const { record, status } = await this.contexts.get(principal, RUNTIME, id, { language: 'python', metadata: { source: 'librechat', runtime: id } }, signal)
    return { record, handle: await this.sandboxes.handle(record), id, status }
  }

  /** The sandbox behind a LibreChat session of this key; 404 for an unknown one or another key's. */
  async session (principal: Principal, sessionId: string): Promise<{ record: SandboxRecord, handle: SandboxHandle }> {
    const record = await this.sandboxes.get(sessionId, principal)
    return { record, handle: await this.sandboxes.handle(record) }
  }

  async newSession (principal: Principal, signal?: AbortSignal): Promise<{ record: SandboxRecord, handle: SandboxHandle }> {
    const record = await this.sandboxes.create(principal, { language: 'python', metadata: { source: 'librechat' } }, null, signal)
    return { record, handle: await this.sandboxes.handle(record) }
  }

  /**
   * An attached workspace (X-LibreChat-Code-Workspace-ID, and workspace_instance_id when the client pins one): a
   * persistent project root per key, id and instance, made on first use, paused when idle.
   */
  async workspace (principal: Principal, id: string, instance?: string, signal?: AbortSignal): Promise<{ record: SandboxRecord, handle: SandboxHandle }> {
    if (!this.contexts) throw new AppError(400, 'stateful_workspace_unsupported', 'This server keeps no stateful workspaces')
    if (!WORKSPACE_ID.test(id)) throw new AppError(400, 'validation_error', 'X-LibreChat-Code-Workspace-ID: letters, digits and . _ : - (at most 128), starting with a letter or digit')
    if (instance !== undefined && !INSTANCE_ID.test(instance)) throw new AppError(400, 'validation_error', 'workspace_instance_id is 64 lowercase hex digits')
    const { record } = await this.contexts.get(principal, WORKSPACE, `${id}|${instance ?? ''}`, { language: 'python', metadata: { source: 'librechat', workspace: id } }, signal)
    return { record, handle: await this.sandboxes.handle(record) }
  }

  /** Programmatic executions in flight, by the client's X-LibreChat-Code-Request-ID: what its cancel interrupts. */
  private readonly inflight = new Map<string, { owner: string, record: SandboxRecord }>()

  /**
   * exec/programmatic: the code runs as exec runs it (in the attached workspace when one is named) and completes in
   * one round. Tools the code would call back (programmatic tool calling) are not offered: a request naming some is
   * refused with the capability error LibreChat explains to the model, rather than left waiting.
   */
  async programmatic (principal: Principal, req: { lang: string, code: string, args?: unknown, session_id?: string, files?: InputFile[], runtime_session_hint?: string, tools?: unknown[], continuation_token?: string, workspace_instance_id?: string }, opts: { workspace?: string, requestId?: string }, signal?: AbortSignal): Promise<ExecResult & { status: 'completed' }> {
    if ((Array.isArray(req.tools) && req.tools.length) || req.continuation_token) {
      throw new AppError(400, 'unsupported_capability', 'This server runs code without tools to call back (programmatic tool calling is not offered): send tools: [] or use /exec')
    }
    const target = opts.workspace ? await this.workspace(principal, opts.workspace, req.workspace_instance_id, signal) : undefined
    const key = opts.requestId ? `${principal.name}\0${opts.requestId}` : null
    const result = await this.exec(principal, req, signal, target, (record) => { if (key) this.inflight.set(key, { owner: principal.name, record }) })
      .finally(() => { if (key) this.inflight.delete(key) })
    return { status: 'completed', ...result }
  }

  /** exec/programmatic/cancel: interrupts the execution of that request id, if this key has it running here. */
  async cancel (principal: Principal, requestId: string): Promise<{ cancelled: boolean }> {
    const running = this.inflight.get(`${principal.name}\0${requestId}`)
    if (!running) return { cancelled: false }
    await (await this.sandboxes.handle(running.record)).interrupt()
    return { cancelled: true }
  }

  async exec (principal: Principal, req: { lang: string, code: string, args?: unknown, session_id?: string, files?: InputFile[], runtime_session_hint?: string }, signal?: AbortSignal, target?: { record: SandboxRecord, handle: SandboxHandle }, started?: (record: SandboxRecord) => void): Promise<ExecResult> {
    const language = this.sandboxes.language(req.lang) // 400 naming the languages for one this image lacks
    const args = Array.isArray(req.args) ? req.args.map(String) : []
    const runtime = !target && req.runtime_session_hint ? await this.runtime(principal, req.runtime_session_hint, signal) : null
    const { record, handle } = target ?? runtime ?? (req.session_id ? await this.session(principal, req.session_id) : await this.newSession(principal, signal))
    started?.(record)
    for (const file of req.files ?? []) await this.placeInput(principal, record, handle, file)
    const before = await this.snapshot(handle)
    let exitCode = 0
    // Every language runs as a fresh process here, python and javascript too: LibreChat promises the model that.
    const execution = await this.sandboxes.execute(record, {
      language: 'shell',
      code: freshProcess(language, req.code, args, '/mnt/data')
    }, (e) => { if (e.type === 'end' && typeof e.exit_code === 'number') exitCode = e.exit_code }, { via: 'librechat', label: language.id })
    if (execution.error) { // a timeout or a killed kernel: said on stderr, as a process would
      execution.stderr += `${execution.error.name}: ${execution.error.value}\n`
      exitCode ||= 1
    }
    const after = await this.snapshot(handle)
    const files = [...after].filter(([path, stamp]) => before.get(path) !== stamp).map(([path]) => this.ref(record.id, path))
    const deleted = [...before.keys()].filter(path => !after.has(path))
    return {
      session_id: record.id,
      stdout: execution.stdout,
      stderr: execution.stderr,
      code: exitCode,
      files,
      ...(deleted.length ? { deleted_files: deleted } : {}),
      ...(runtime ? { runtime_session_id: runtime.id, runtime_status: runtime.status } : {})
    }
  }

  ref (sessionId: string, path: string): FileRef {
    return { id: fileId(path), name: path, path: `/mnt/data/${path}`, session_id: sessionId, storage_session_id: sessionId }
  }

  /** Copies an input file (from this key's session it names) into /mnt/data under its name. */
  private async placeInput (principal: Principal, record: SandboxRecord, handle: SandboxHandle, file: InputFile): Promise<void> {
    const name = safeName(file.name)
    const sourceId = file.storage_session_id ?? file.session_id ?? record.id
    const path = pathOfId(file.id)
    if (sourceId === record.id && path === name) return // already there
    const source = sourceId === record.id ? handle : (await this.session(principal, sourceId)).handle
    const { stream } = await source.readFile(path)
    await handle.writeFile(name, stream as AsyncIterable<Buffer>, this.opts.maxFileBytes)
  }

  /** Every file under /mnt/data (dot-directories skipped) with its size and modification time. */
  async snapshot (handle: SandboxHandle, limit = 1000): Promise<Map<string, string>> {
    const files = new Map<string, string>()
    const walk = async (dir: string, depth: number): Promise<void> => {
      let entries: FileEntry[]
      try {
        entries = await handle.listFiles(dir)
      } catch {
        return // it went away meanwhile
      }
      for (const entry of entries) {
        if (files.size >= limit || entry.name.startsWith('.')) continue
        if (entry.type === 'directory') {
          if (depth < 4) await walk(entry.path, depth + 1)
        } else if (entry.type === 'file') {
          files.set(entry.path, `${entry.size}:${entry.modified}`)
        }
      }
    }
    await walk('', 0)
    return files
  }

  /** One file's metadata, as LibreChat's freshness probe and listings read it. */
  async stat (handle: SandboxHandle, path: string): Promise<FileEntry> {
    const dir = posix.dirname(path) === '.' ? '' : posix.dirname(path)
    const entry = (await handle.listFiles(dir)).find(e => e.path === path && e.type === 'file')
    if (!entry) throw new AppError(404, 'file_not_found', 'File not found', 'file_error')
    return entry
  }
}
