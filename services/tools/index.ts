// An OpenAPI tool server (what Open WebUI and other OpenAPI-tool clients call): a few model-facing operations over one
// persistent sandbox per context. A context is the chat (X-OpenWebUI-Chat-Id), else the user (X-OpenWebUI-User-Id),
// else the key: created on first use, paused when idle, kept between calls so files and variables persist.
import type { Principal } from '../auth.js'
import type { SandboxRecord, Language } from '../../schemas/sandboxes.js'
import type { SandboxService } from '../sandbox/service.js'
import { inWorkspace, type Workspace } from '../sandbox/workspace.js'
import type { ContextSandboxes } from '../sandbox/contexts.js'
import { AppError } from '../errors.js'

const KIND = 'tool-context'
/** Files read_file returns as text; bigger ones are refused with a hint (list_files shows sizes). */
export const READ_LIMIT = 256 * 1024

/** The context of a request: its chat, else its user, else the key alone (sanitised: they name records). */
export function contextOf (headers: Record<string, string | string[] | undefined>): string {
  const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v)?.trim()
  const chat = first(headers['x-openwebui-chat-id'])
  const user = first(headers['x-openwebui-user-id'])
  const raw = chat ? `chat:${chat}` : user ? `user:${user}` : 'default'
  return raw.replace(/[^A-Za-z0-9:_.-]/g, '_').slice(0, 200)
}

/** A relative workspace path from what a model wrote (absolute under /home/user is fine). */
function relative (path: string): string {
  const rel = inWorkspace(path)
  if (rel === null) throw new AppError(400, 'invalid_path', 'Paths are relative to the workspace (/home/user), or absolute under it; no other place, no NUL')
  return rel
}

export class ToolServer {
  constructor (private readonly sandboxes: SandboxService, private readonly workspace: Workspace, private readonly contexts: ContextSandboxes) {}

  /** The context's sandbox, made on first use (and again when it was removed). */
  async sandbox (principal: Principal, context: string, signal?: AbortSignal): Promise<SandboxRecord> {
    return (await this.contexts.get(principal, KIND, context, { metadata: { source: 'openapi-tools', context } }, signal)).record
  }

  async runCode (record: SandboxRecord, body: { code: string, language?: string }): Promise<{ stdout: string, stderr: string, result: string | null, error: string | null, exit_code?: number, images: string[], note?: string }> {
    const language = (body.language ?? 'python') as Language
    this.sandboxes.language(language) // 400 naming the languages for one this image lacks
    const ex = await this.sandboxes.execute(record, { code: body.code, language }, undefined, { via: 'tools' })
    const images: string[] = []
    const results: string[] = []
    for (const r of ex.results) {
      if (r.data['image/png']) images.push(`data:image/png;base64,${r.data['image/png']}`)
      else if (r.data['text/plain']) results.push(r.data['text/plain'])
    }
    return {
      stdout: ex.stdout,
      stderr: ex.stderr,
      result: results.join('\n') || null,
      error: ex.error ? `${ex.error.name}: ${ex.error.value}` : null,
      ...(ex.exit_code !== undefined ? { exit_code: ex.exit_code } : {}),
      images,
      ...(ex.state_lost ? { note: 'the kernel was restarted: earlier variables are gone' } : {})
    }
  }

  async runCommand (record: SandboxRecord, body: { command: string, cwd?: string, timeout_ms?: number }, signal?: AbortSignal) {
    const result = await this.workspace.run(record, {
      cmd: body.command,
      ...(body.cwd ? { cwd: body.cwd } : {}),
      timeout_ms: this.sandboxes.timeoutFor(body.timeout_ms || undefined)
    }, undefined, signal)
    return { exit_code: result.exit_code, stdout: result.stdout, stderr: result.stderr, ...(result.status === 'timeout' ? { timed_out: true } : {}) }
  }

  async readFile (record: SandboxRecord, body: { path: string }) {
    const path = relative(body.path)
    const handle = await this.sandboxes.handle(record)
    const entry = await handle.stat(path)
    if (entry.type === 'directory') throw new AppError(400, 'is_a_directory', `${body.path} is a directory: list_files lists it`)
    if (entry.size > READ_LIMIT) throw new AppError(413, 'file_too_large', `${body.path} is ${entry.size} bytes; read_file returns files up to ${READ_LIMIT} bytes (use run_command with head or grep)`)
    const bytes = await handle.readAll(path, READ_LIMIT)
    const text = bytes.toString('utf8')
    return Buffer.from(text, 'utf8').equals(bytes) && !bytes.includes(0)
      ? { path, size: bytes.length, encoding: 'utf8', content: text }
      : { path, size: bytes.length, encoding: 'base64', content: bytes.toString('base64') }
  }

  async writeFile (record: SandboxRecord, body: { path: string, content: string, encoding?: 'utf8' | 'base64' }, maxBytes: number) {
    const path = relative(body.path)
    if (!path) throw new AppError(400, 'invalid_path', 'A file path is required')
    const bytes = Buffer.from(body.content, body.encoding === 'base64' ? 'base64' : 'utf8')
    const size = await (await this.sandboxes.handle(record)).writeFile(path, (async function * () { yield bytes })(), maxBytes)
    return { path, size }
  }

  async listFiles (record: SandboxRecord, body: { path?: string }) {
    const path = relative(body.path ?? '')
    const entries = await (await this.sandboxes.handle(record)).listFiles(path)
    return { path, entries: entries.map(e => ({ name: e.name, path: e.path, type: e.type, size: e.size })) }
  }
}
