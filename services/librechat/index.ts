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
export interface ExecResult { session_id: string, stdout: string, stderr: string, code: number, files: FileRef[], runtime_session_id?: string, runtime_status?: 'new' | 'reused' }

/** A conversation's warm workspace (LibreChat's stateful_code_sessions): the context its runtime hint names. */
const RUNTIME = 'librechat-runtime'

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

  async exec (principal: Principal, req: { lang: string, code: string, args?: unknown, session_id?: string, files?: InputFile[], runtime_session_hint?: string }, signal?: AbortSignal): Promise<ExecResult> {
    const language = this.sandboxes.language(req.lang) // 400 naming the languages for one this image lacks
    const args = Array.isArray(req.args) ? req.args.map(String) : []
    const runtime = req.runtime_session_hint ? await this.runtime(principal, req.runtime_session_hint, signal) : null
    const { record, handle } = runtime ?? (req.session_id ? await this.session(principal, req.session_id) : await this.newSession(principal, signal))
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
    return { session_id: record.id, stdout: execution.stdout, stderr: execution.stderr, code: exitCode, files, ...(runtime ? { runtime_session_id: runtime.id, runtime_status: runtime.status } : {}) }
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
