// Open Terminal's API (open-webui/open-terminal), orchestrated: what Open WebUI's terminal integration calls, over our
// sandboxes. Each request names its workspace by the connection's policy (/p/{policy}), X-User-Id and
// X-Terminal-Context-Id (`chat:<id>`; none: the user's default workspace): one persistent sandbox per key, policy, user
// and context, made on first use and paused when idle. X-Session-Id keeps a working directory per session, as Open
// Terminal does. Files, commands, terminals and notebook kernels are the workspace verbs underneath; this file only
// speaks Open Terminal's shapes.
import { posix } from 'node:path'
import { StringDecoder } from 'node:string_decoder'
import type { Readable } from 'node:stream'
import type { Principal } from '../auth.js'
import { AppError } from '../errors.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import type { SandboxService } from '../sandbox/service.js'
import type { ContextSandboxes } from '../sandbox/contexts.js'
import type { ProcessInfo, SandboxHandle } from '../sandbox/sandbox.js'
import { HOME, absolute, inWorkspace, type Workspace } from '../sandbox/workspace.js'
import type { Store } from '../store/types.js'

const KIND = 'terminal-context'
const CWD_KIND = 'terminal-cwd'
/** The most read_file, replace_file_content and notebooks read of one file. */
export const READ_LIMIT = 4 * 1024 * 1024
/** The most a grep or glob walk may take, and the most output its helper may print. */
const SEARCH_TIMEOUT_MS = 30_000

/** Where a request goes: the policy of its route, the user and context Open WebUI names, the session keeping a cwd. */
export interface TerminalScope { policy: string, user: string, context: string, session: string | null }

const clean = (v: string | string[] | undefined, max = 200): string | null => {
  const raw = (Array.isArray(v) ? v[0] : v)?.trim()
  return raw ? raw.replace(/[^A-Za-z0-9:_.@-]/g, '_').slice(0, max) : null
}

/** The scope of a request from its headers (a WebSocket's user comes in `?user_id=`, as Open WebUI's proxy sends it). */
export function scopeOf (headers: Record<string, string | string[] | undefined>, policy = 'default', userId?: string): TerminalScope {
  return {
    policy: clean(policy, 100) ?? 'default',
    user: clean(headers['x-user-id']) ?? clean(userId) ?? 'default',
    context: clean(headers['x-terminal-context-id']) ?? 'default',
    session: clean(headers['x-session-id'])
  }
}

/** One entry of a process's output, as Open Terminal's logs give them. */
export interface OutputEntry { type: 'stdout' | 'stderr' | 'output', data: string }

const MIME: Record<string, string> = {
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  gif: 'image/gif',
  webp: 'image/webp',
  svg: 'image/svg+xml',
  bmp: 'image/bmp',
  ico: 'image/x-icon',
  pdf: 'application/pdf',
  json: 'application/json',
  csv: 'text/csv',
  txt: 'text/plain',
  md: 'text/markdown',
  html: 'text/html',
  htm: 'text/html',
  css: 'text/css',
  js: 'text/javascript',
  py: 'text/x-python',
  zip: 'application/zip',
  gz: 'application/gzip',
  tar: 'application/x-tar',
  mp3: 'audio/mpeg',
  wav: 'audio/wav',
  mp4: 'video/mp4',
  ipynb: 'application/x-ipynb+json',
  xml: 'application/xml',
  yaml: 'text/yaml',
  yml: 'text/yaml'
}
export const mimeOf = (path: string): string => MIME[posix.extname(path).slice(1).toLowerCase()] ?? 'application/octet-stream'

/** Text as Open Terminal's clients read it: valid UTF-8 without NUL. */
const asText = (bytes: Buffer): string | null => {
  if (bytes.includes(0)) return null
  const text = bytes.toString('utf8')
  return Buffer.byteLength(text) === bytes.length && !text.includes('\uFFFD') ? text : null
}

/** Python's str.splitlines(keepends=True) for the line breaks files hold. */
const splitLines = (text: string): string[] => text.match(/[^\n]*\n|[^\n]+$/g) ?? []

const count = (haystack: string, needle: string): number => needle ? haystack.split(needle).length - 1 : 0

// Run inside the sandbox, as its user: the walk of grep_search and glob_search, Open Terminal's rules (fnmatch on the
// name or the relative path, files over 1 MB and binary ones skipped by grep), bounded by max_results and the timeout.
const SEARCH = String.raw`
import fnmatch, json, os, re, sys
a = json.loads(sys.argv[1])
root = a['path']; out = []; truncated = False
def walk():
    if os.path.isfile(root):
        yield os.path.dirname(root), [], [os.path.basename(root)]
        return
    for d, dirs, files in os.walk(root):
        dirs.sort()
        yield d, dirs, files
if a['op'] == 'grep':
    flags = re.IGNORECASE if a['case_insensitive'] else 0
    try:
        pat = re.compile(a['query'] if a['regex'] else re.escape(a['query']), flags)
    except re.error as e:
        print(json.dumps({'invalid': 'Invalid regex: %s' % e})); sys.exit(0)
    for d, dirs, files in walk():
        for f in sorted(files):
            if a['include'] and not any(fnmatch.fnmatch(f, g) for g in a['include']): continue
            full = os.path.join(d, f)
            try:
                if not os.path.isfile(full) or os.path.getsize(full) > 1048576: continue
                with open(full, encoding='utf-8', errors='strict') as fh:
                    for n, line in enumerate(fh, 1):
                        if pat.search(line):
                            out.append({'file': full, 'line': n, 'content': line.rstrip('\r\n')} if a['match_per_line'] else {'file': full})
                            if len(out) >= a['max_results']: truncated = True
                            if truncated or not a['match_per_line']: break
            except (UnicodeDecodeError, ValueError, OSError):
                pass
            if truncated: break
        if truncated: break
else:
    for d, dirs, files in walk():
        entries = ([(x, 'directory') for x in dirs] if a['type'] in ('any', 'directory') else []) + ([(x, 'file') for x in files] if a['type'] in ('any', 'file') else [])
        for name, kind in sorted(entries):
            full = os.path.join(d, name); rel = os.path.relpath(full, root)
            if not (fnmatch.fnmatch(name, a['pattern']) or fnmatch.fnmatch(rel, a['pattern'])): continue
            if any(fnmatch.fnmatch(name, x) or fnmatch.fnmatch(rel, x) for x in a['exclude']): continue
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append({'path': rel, 'type': kind, 'size': st.st_size, 'modified': st.st_mtime})
            if len(out) >= a['max_results']: truncated = True; break
        if truncated: break
print(json.dumps({'matches': out, 'truncated': truncated}))
`

// Run inside the sandbox: the ZIP of /files/archive (a file by its name, a directory as its name and what is under it).
const ZIP = String.raw`
import json, os, sys, zipfile
a = json.loads(sys.argv[1])
os.makedirs(os.path.dirname(a['out']), exist_ok=True)
with zipfile.ZipFile(a['out'], 'w', zipfile.ZIP_DEFLATED) as z:
    for p in a['paths']:
        if os.path.isfile(p):
            z.write(p, os.path.basename(p))
        else:
            top = os.path.basename(p.rstrip('/')) or 'home'
            for d, dirs, files in os.walk(p):
                if os.path.abspath(d).startswith(os.path.dirname(a['out'])): continue
                for f in files:
                    full = os.path.join(d, f)
                    if full != a['out'] and os.path.isfile(full):
                        z.write(full, os.path.join(top, os.path.relpath(full, p)))
`

export interface ProcessView {
  id: string
  command: string
  status: 'running' | 'done' | 'killed'
  exit_code: number | null
  output?: OutputEntry[]
  truncated?: boolean
  next_offset?: number
  log_path: string | null
}

export interface Notebook { cells: Array<{ cell_type: string, source: string | string[], outputs?: unknown[], execution_count?: number | null, metadata?: unknown }>, metadata?: { kernelspec?: { name?: string } }, nbformat?: number, nbformat_minor?: number }

export class OpenTerminal {
  constructor (
    private readonly sandboxes: SandboxService,
    private readonly workspace: Workspace,
    private readonly contexts: ContextSandboxes,
    private readonly store: Store,
    private readonly opts: { maxUploadBytes: number }
  ) {}

  // --- the workspace of a request -----------------------------------------------------------------------------------

  /** The scope's sandbox: one per key, policy, user and context, made on first use. */
  async sandbox (principal: Principal, scope: TerminalScope, signal?: AbortSignal): Promise<SandboxRecord> {
    const name = `${scope.policy}|${scope.user}|${scope.context}`
    return (await this.contexts.get(principal, KIND, name, { metadata: { source: 'open-terminal', policy: scope.policy, user: scope.user, context: scope.context } }, signal)).record
  }

  /** The scope's sandbox when it has one already (a terminal socket attaches to what exists, it makes nothing). */
  async existing (principal: Principal, scope: TerminalScope): Promise<SandboxRecord | null> {
    return await this.contexts.find(principal, KIND, `${scope.policy}|${scope.user}|${scope.context}`)
  }

  private async handle (record: SandboxRecord): Promise<SandboxHandle> {
    const handle = await this.sandboxes.handle(record)
    await this.sandboxes.touch(record).catch(() => {})
    return handle
  }

  /** The session's working directory (absolute): the home until POST /files/cwd moves it (and once it is gone). */
  async cwd (principal: Principal, record: SandboxRecord, scope: TerminalScope): Promise<string> {
    if (!scope.session) return HOME
    const kept = await this.store.getNamed<{ owner: string, name: string, cwd: string }>(CWD_KIND, principal.name, `${record.id}|${scope.session}`)
    if (!kept || kept.cwd === HOME) return HOME
    // A directory removed since it was chosen: back to the home, as a shell whose cwd vanished would have to.
    const entry = await this.stat(record, inWorkspace(kept.cwd) ?? '')
    return entry?.type === 'directory' ? kept.cwd : HOME
  }

  async setCwd (principal: Principal, record: SandboxRecord, scope: TerminalScope, path: string): Promise<{ cwd: string }> {
    const rel = this.resolve(path, await this.cwd(principal, record, scope))
    const entry = await this.stat(record, rel)
    if (!entry || entry.type !== 'directory') throw new AppError(404, 'not_found', 'Directory not found')
    const cwd = absolute(rel)
    if (scope.session) {
      await this.store.saveNamed(CWD_KIND, { owner: principal.name, name: `${record.id}|${scope.session}`, cwd, sandbox_id: record.id })
      void this.contexts.prune(principal, CWD_KIND).catch(() => {})
    }
    return { cwd }
  }

  /** A client's path (absolute, ~ or relative to the cwd) inside the workspace, or a 403 as Open Terminal's multi-user mode answers. */
  resolve (path: string, cwd: string = HOME): string {
    const rel = inWorkspace(path, cwd)
    if (rel === null) throw new AppError(403, 'path_outside_workspace', `Access denied: ${String(path).slice(0, 200)} is outside ${HOME}`)
    return rel
  }

  private async stat (record: SandboxRecord, rel: string) {
    try {
      return await (await this.handle(record)).stat(rel)
    } catch (err) {
      if (err instanceof AppError && err.statusCode === 404) return null
      throw err
    }
  }

  private async readAll (record: SandboxRecord, rel: string, limit: number): Promise<Buffer> {
    const handle = await this.handle(record)
    const entry = await this.stat(record, rel)
    if (!entry || entry.type === 'directory') throw new AppError(404, 'not_found', 'File not found')
    if (entry.size > limit) throw new AppError(413, 'file_too_large', `${absolute(rel)} is ${entry.size} bytes; this reads files up to ${limit} bytes (use run_command with head, tail or grep)`)
    return await handle.readAll(rel, limit)
  }

  private async writeAll (record: SandboxRecord, rel: string, bytes: Buffer): Promise<number> {
    if (!rel) throw new AppError(400, 'invalid_path', 'A file path is required')
    return await (await this.handle(record)).writeFile(rel, (async function * () { yield bytes })(), this.opts.maxUploadBytes)
  }

  // --- files ---------------------------------------------------------------------------------------------------------

  async list (record: SandboxRecord, directory: string, cwd: string) {
    const rel = this.resolve(directory, cwd)
    const entry = await this.stat(record, rel)
    if (!entry || entry.type !== 'directory') throw new AppError(404, 'not_found', 'Directory not found')
    const entries = await (await this.handle(record)).listFiles(rel)
    return {
      dir: absolute(rel),
      entries: entries
        .map(e => ({ name: e.name, type: e.type === 'directory' ? 'directory' as const : 'file' as const, size: e.size, modified: e.modified }))
        .sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
    }
  }

  /** Text as {path, total_lines, content} (a line range when asked); an image as its bytes; other binaries a 415. */
  async read (record: SandboxRecord, path: string, cwd: string, start?: number, end?: number): Promise<{ json: { path: string, total_lines: number, content: string } } | { bytes: Buffer, mime: string }> {
    const rel = this.resolve(path, cwd)
    const bytes = await this.readAll(record, rel, READ_LIMIT)
    const text = asText(bytes)
    if (text === null) {
      const mime = mimeOf(rel)
      if (mime.startsWith('image/')) return { bytes, mime }
      throw new AppError(415, 'unsupported_media_type', `Unsupported binary file type: ${mime} (${bytes.length} bytes)`)
    }
    const lines = splitLines(text)
    return { json: { path: absolute(rel), total_lines: lines.length, content: lines.slice((start ?? 1) - 1, end ?? lines.length).join('') } }
  }

  async display (record: SandboxRecord, path: string, cwd: string) {
    const rel = this.resolve(path, cwd)
    const entry = await this.stat(record, rel)
    return { path: absolute(rel), exists: entry !== null && entry.type !== 'directory' }
  }

  /** Any file's bytes, streamed, for the file browser's preview and download. */
  async view (record: SandboxRecord, path: string, cwd: string): Promise<{ size: number, stream: Readable, mime: string, name: string }> {
    const rel = this.resolve(path, cwd)
    const entry = await this.stat(record, rel)
    if (!entry || entry.type === 'directory') throw new AppError(404, 'not_found', 'File not found')
    const { size, stream } = await (await this.handle(record)).readFile(rel)
    return { size, stream, mime: mimeOf(rel), name: posix.basename(rel) }
  }

  async write (record: SandboxRecord, path: string, content: string, cwd: string) {
    const rel = this.resolve(path, cwd)
    const size = await this.writeAll(record, rel, Buffer.from(content, 'utf8'))
    return { path: absolute(rel), size }
  }

  async upload (record: SandboxRecord, directory: string, filename: string, source: AsyncIterable<Buffer>, cwd: string) {
    const dir = this.resolve(directory, cwd)
    const name = posix.basename(filename || 'upload')
    if (!name || name === '.' || name === '..') throw new AppError(400, 'invalid_path', 'The upload needs a file name')
    const rel = dir ? `${dir}/${name}` : name
    const size = await (await this.handle(record)).writeFile(rel, source, this.opts.maxUploadBytes)
    return { path: absolute(rel), size }
  }

  async mkdir (record: SandboxRecord, path: string, cwd: string) {
    const rel = this.resolve(path, cwd)
    if (!rel) return { path: HOME }
    await (await this.handle(record)).mkdir(rel)
    return { path: absolute(rel) }
  }

  async delete (record: SandboxRecord, path: string, cwd: string) {
    const rel = this.resolve(path, cwd)
    if (!rel) throw new AppError(403, 'path_outside_workspace', 'The workspace itself cannot be deleted')
    const entry = await this.stat(record, rel)
    if (!entry) throw new AppError(404, 'not_found', 'Path not found')
    await (await this.handle(record)).deleteFile(rel)
    return { path: absolute(rel), type: entry.type === 'directory' ? 'directory' : 'file' }
  }

  async move (record: SandboxRecord, source: string, destination: string, cwd: string) {
    const from = this.resolve(source, cwd)
    const to = this.resolve(destination, cwd)
    if (!from || !to) throw new AppError(403, 'path_outside_workspace', 'The workspace itself cannot be moved')
    if (!await this.stat(record, from)) throw new AppError(404, 'not_found', 'Source path not found')
    const parent = posix.dirname(to) === '.' ? '' : posix.dirname(to)
    const dir = await this.stat(record, parent)
    if (!dir || dir.type !== 'directory') throw new AppError(400, 'invalid_path', 'Destination parent directory not found')
    if (await this.stat(record, to)) throw new AppError(409, 'already_exists', 'Destination already exists')
    await (await this.handle(record)).move(from, to)
    return { source: absolute(from), destination: absolute(to) }
  }

  /** Find-and-replace chunks applied in order, all or none: a target missing or ambiguous is a 400 and the file is untouched. */
  async replace (record: SandboxRecord, path: string, replacements: Array<{ target: string, replacement: string, start_line?: number, end_line?: number, allow_multiple?: boolean }>, cwd: string) {
    const rel = this.resolve(path, cwd)
    const bytes = await this.readAll(record, rel, READ_LIMIT)
    const text = asText(bytes)
    if (text === null) throw new AppError(400, 'not_text', `${absolute(rel)} is not a UTF-8 text file`)
    let content: string = text
    for (const chunk of replacements) {
      if (!chunk.target) throw new AppError(400, 'validation_error', 'A replacement needs a non-empty target')
      const ranged = chunk.start_line !== undefined || chunk.end_line !== undefined
      const lines = splitLines(content)
      const start = (chunk.start_line ?? 1) - 1
      const end = chunk.end_line ?? lines.length
      const region: string = ranged ? lines.slice(start, end).join('') : content
      const found = count(region, chunk.target)
      if (found === 0) throw new AppError(400, 'target_not_found', `Target string not found: ${JSON.stringify(chunk.target.slice(0, 100))}`)
      if (found > 1 && !chunk.allow_multiple) throw new AppError(400, 'ambiguous_target', `Found ${found} occurrences of target string but allow_multiple is false`)
      const replaced: string = region.split(chunk.target).join(chunk.replacement)
      content = ranged ? [...lines.slice(0, start), replaced, ...lines.slice(end)].join('') : replaced
    }
    const size = await this.writeAll(record, rel, Buffer.from(content, 'utf8'))
    return { path: absolute(rel), size }
  }

  private async search<T> (record: SandboxRecord, args: Record<string, unknown>, signal?: AbortSignal): Promise<{ matches: T[], truncated: boolean }> {
    const result = await this.workspace.run(record, { cmd: ['python3', '-c', SEARCH, JSON.stringify(args)], cwd: HOME, timeout_ms: SEARCH_TIMEOUT_MS }, undefined, signal)
    if (result.status === 'timeout') throw new AppError(504, 'search_timeout', `The search took longer than ${SEARCH_TIMEOUT_MS / 1000} s: narrow its path`)
    let found: { matches: T[], truncated: boolean, invalid?: string }
    try {
      found = JSON.parse(result.stdout) as typeof found
    } catch {
      throw new AppError(502, 'search_failed', `The search failed: ${result.stderr.slice(-300) || `exit ${result.exit_code}`}`, 'sandbox_error')
    }
    if (found.invalid) throw new AppError(400, 'invalid_regex', found.invalid)
    return { matches: found.matches, truncated: found.truncated }
  }

  async grep (record: SandboxRecord, q: { query: string, path?: string, regex?: boolean, case_insensitive?: boolean, include?: string[], match_per_line?: boolean, max_results?: number }, cwd: string, signal?: AbortSignal) {
    const rel = this.resolve(q.path ?? '.', cwd)
    if (!await this.stat(record, rel)) throw new AppError(404, 'not_found', 'Search path not found')
    const found = await this.search<{ file: string, line?: number, content?: string }>(record, {
      op: 'grep',
      path: absolute(rel),
      query: q.query,
      regex: q.regex !== false,
      case_insensitive: q.case_insensitive === true,
      include: q.include ?? [],
      match_per_line: q.match_per_line !== false,
      max_results: q.max_results ?? 50
    }, signal)
    return { query: q.query, path: absolute(rel), ...found }
  }

  async glob (record: SandboxRecord, q: { pattern: string, path?: string, exclude?: string[], type?: 'file' | 'directory' | 'any', max_results?: number }, cwd: string, signal?: AbortSignal) {
    const rel = this.resolve(q.path ?? '.', cwd)
    const entry = await this.stat(record, rel)
    if (!entry || entry.type !== 'directory') throw new AppError(404, 'not_found', 'Search directory not found')
    const found = await this.search<{ path: string, type: string, size: number, modified: number }>(record, {
      op: 'glob', path: absolute(rel), pattern: q.pattern, exclude: q.exclude ?? [], type: q.type ?? 'any', max_results: q.max_results ?? 50
    }, signal)
    return { pattern: q.pattern, path: absolute(rel), ...found }
  }

  /**
   * Files and directories as one ZIP (the file browser's download), made inside the sandbox as its user into a hidden
   * file of the workspace, streamed, then removed.
   */
  async archive (record: SandboxRecord, paths: string[], cwd: string): Promise<{ name: string, size: number, stream: Readable }> {
    if (!paths.length) throw new AppError(400, 'validation_error', 'No paths provided')
    const rels = paths.map(p => this.resolve(p, cwd))
    for (const [i, rel] of rels.entries()) {
      if (!await this.stat(record, rel)) throw new AppError(404, 'not_found', `Path not found: ${String(paths[i]).slice(0, 200)}`)
    }
    const out = `.cache/open-terminal/archive-${record.id.slice(0, 8)}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}.zip`
    const result = await this.workspace.run(record, { cmd: ['python3', '-c', ZIP, JSON.stringify({ paths: rels.map(absolute), out: absolute(out) })], cwd: HOME, timeout_ms: 120_000 })
    if (result.exit_code !== 0) {
      await (await this.handle(record)).deleteFile(out).catch(() => {})
      throw new AppError(result.status === 'timeout' ? 504 : 502, 'archive_failed', `The archive was not made: ${result.stderr.slice(-300) || result.status}`, 'sandbox_error')
    }
    const handle = await this.handle(record)
    const { size, stream } = await handle.readFile(out)
    stream.once('close', () => { handle.deleteFile(out).catch(() => {}) })
    const single = rels.length === 1 ? posix.basename(rels[0]!) || 'home' : 'download'
    return { name: `${single}.zip`, size, stream }
  }

  /** TCP ports listening inside the sandbox (from /proc/net: the pid and process name are not visible to its user). */
  async ports (record: SandboxRecord) {
    const result = await this.workspace.run(record, { cmd: ['cat', '/proc/net/tcp', '/proc/net/tcp6'], timeout_ms: 10_000 })
    const ports = new Set<number>()
    for (const line of result.stdout.split('\n')) {
      const cols = line.trim().split(/\s+/)
      if (cols[3] === '0A' && cols[1]?.includes(':')) ports.add(parseInt(cols[1].split(':')[1]!, 16))
    }
    return { ports: [...ports].sort((a, b) => a - b).map(port => ({ port, pid: null, process: null })) }
  }

  // --- processes -------------------------------------------------------------------------------------------------------

  private pidOf (id: string): number {
    const pid = Number(id)
    if (!/^\d{1,9}$/.test(id) || !Number.isSafeInteger(pid) || pid <= 0) throw new AppError(404, 'process_not_found', 'Process not found')
    return pid
  }

  private describe (info: ProcessInfo, command?: string): ProcessView {
    const status = info.running ? 'running' : info.status === 'killed' ? 'killed' : 'done'
    const cmd = command ?? (info.cmd[0] === 'bash' && info.cmd[1] === '-c' ? info.cmd[2]! : info.cmd.join(' '))
    return { id: String(info.pid), command: cmd, status, exit_code: info.running ? null : info.exit_code ?? null, log_path: null }
  }

  /** The process's output from `offset` (bytes: the next_offset of an earlier answer), its last `tail` entries when asked. */
  private async output (record: SandboxRecord, pid: number, offset: number, tail?: number): Promise<{ output: OutputEntry[], truncated: boolean, next_offset: number }> {
    const kept = await this.workspace.kept(record, pid, { offset })
    const decoders = new Map<string, StringDecoder>()
    let entries: OutputEntry[] = []
    for (const e of kept.output) {
      let decoder = decoders.get(e.stream)
      if (!decoder) decoders.set(e.stream, decoder = new StringDecoder('utf8'))
      const data = decoder.write(Buffer.from(e.data, 'base64'))
      if (!data) continue
      const type = e.stream === 'pty' ? 'output' : e.stream
      const last = entries[entries.length - 1]
      // Pieces of one stream in a row are one entry.
      if (last?.type === type) last.data += data
      else entries.push({ type, data })
    }
    for (const [stream, decoder] of decoders) {
      const rest = decoder.end()
      if (rest) entries.push({ type: stream === 'pty' ? 'output' : stream as 'stdout' | 'stderr', data: rest })
    }
    let truncated = kept.offset > offset
    if (tail !== undefined && entries.length > tail) { entries = entries.slice(-tail); truncated = true }
    return { output: entries, truncated, next_offset: kept.end }
  }

  async execute (record: SandboxRecord, body: { command: string, cwd?: string, env?: Record<string, string> }, cwd: string, q: { wait?: number, tail?: number }): Promise<ProcessView> {
    const dir = body.cwd ? absolute(this.resolve(body.cwd, cwd)) : cwd
    const info = await this.workspace.spawn(record, { cmd: body.command, cwd: dir, ...(body.env ? { env: body.env } : {}), stdin: true, tag: 'open-terminal' })
    return await this.status(record, String(info.pid), { wait: q.wait, offset: 0, tail: q.tail }, body.command)
  }

  async status (record: SandboxRecord, id: string, q: { wait?: number, offset?: number, tail?: number }, command?: string): Promise<ProcessView> {
    const pid = this.pidOf(id)
    const info = q.wait ? await this.workspace.wait(record, pid, q.wait * 1000) : await this.workspace.process(record, pid)
    return { ...this.describe(info, command), ...await this.output(record, pid, q.offset ?? 0, q.tail) }
  }

  async processes (record: SandboxRecord): Promise<ProcessView[]> {
    return (await this.workspace.processes(record)).filter(p => p.tag === 'open-terminal').map(p => this.describe(p))
  }

  /** Text to a running process's stdin; the escapes models write literally (\n, \x03 for Ctrl-C) become the characters. */
  async input (record: SandboxRecord, id: string, input: string): Promise<{ status: 'ok' }> {
    const pid = this.pidOf(id)
    const info = await this.workspace.process(record, pid)
    if (!info.running) throw new AppError(400, 'process_exited', 'Process has already exited')
    const text = input.replace(/\\(n|r|t|\\|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})/g, (_m, e: string) =>
      e === 'n' ? '\n' : e === 'r' ? '\r' : e === 't' ? '\t' : e === '\\' ? '\\' : String.fromCharCode(parseInt(e.slice(1), 16)))
    // Ctrl-C on a pipe is the signal a terminal would have sent.
    if (!info.pty && text === '\x03') await this.workspace.signal(record, pid, 'SIGINT')
    else await this.workspace.input(record, pid, Buffer.from(text, 'utf8'))
    return { status: 'ok' }
  }

  async kill (record: SandboxRecord, id: string, force: boolean): Promise<{ status: 'killed' }> {
    const pid = this.pidOf(id)
    const info = await this.workspace.process(record, pid)
    if (info.running) {
      await this.workspace.signal(record, pid, force ? 'SIGKILL' : 'SIGTERM')
      const after = await this.workspace.wait(record, pid, 5000)
      if (after.running) await this.workspace.signal(record, pid, 'SIGKILL')
    }
    return { status: 'killed' }
  }

  // --- terminals -----------------------------------------------------------------------------------------------------

  async createTerminal (record: SandboxRecord, cwd: string): Promise<{ id: string, created_at: string, pid: number }> {
    const pid = await this.workspace.terminal(record, { cwd, cols: 80, rows: 24 })
    const info = await this.workspace.process(record, pid)
    return { id: String(pid), created_at: new Date(info.started_at * 1000).toISOString(), pid }
  }

  async terminals (record: SandboxRecord): Promise<Array<{ id: string, created_at: string, pid: number }>> {
    return (await this.workspace.processes(record))
      .filter(p => p.pty && p.running)
      .map(p => ({ id: String(p.pid), created_at: new Date(p.started_at * 1000).toISOString(), pid: p.pid }))
  }

  async terminal (record: SandboxRecord, id: string): Promise<{ id: string, created_at: string, pid: number }> {
    const found = (await this.terminals(record)).find(t => t.id === id)
    if (!found) throw new AppError(404, 'not_found', 'Session not found')
    return found
  }

  async closeTerminal (record: SandboxRecord, id: string): Promise<{ status: 'deleted' }> {
    await this.terminal(record, id)
    await this.workspace.signal(record, Number(id), 'SIGHUP')
    const after = await this.workspace.wait(record, Number(id), 3000)
    if (after.running) await this.workspace.signal(record, Number(id), 'SIGKILL')
    return { status: 'deleted' }
  }

  // --- notebooks: an .ipynb's cells run on a kernel of the sandbox, the file updated after each --------------------------

  /** A notebook session's id names its file, so any replica serves it; its kernel is a named Python kernel. */
  private notebookId = (rel: string) => `nb_${Buffer.from(rel).toString('base64url')}`
  private notebookPath (id: string): string {
    const rel = id.startsWith('nb_') ? Buffer.from(id.slice(3), 'base64url').toString('utf8') : ''
    if (!rel || this.notebookId(rel) !== id || inWorkspace(rel) !== rel) throw new AppError(404, 'not_found', 'Session not found')
    return rel
  }

  private kernelOf = (rel: string) => `python:nb-${Buffer.from(rel).toString('base64url').slice(0, 80)}`

  private async notebook (record: SandboxRecord, rel: string): Promise<Notebook> {
    const text = asText(await this.readAll(record, rel, READ_LIMIT))
    let nb: Notebook | null = null
    try { nb = JSON.parse(text ?? '') as Notebook } catch { nb = null }
    if (!nb || !Array.isArray(nb.cells)) throw new AppError(400, 'invalid_notebook', `Invalid notebook: ${absolute(rel)} is not nbformat JSON with cells`)
    return nb
  }

  async openNotebook (record: SandboxRecord, path: string, cwd: string): Promise<{ id: string, kernel: string, status: 'ready' }> {
    const rel = this.resolve(path, cwd)
    if (!await this.stat(record, rel)) throw new AppError(404, 'not_found', `Notebook not found: ${absolute(rel)}`)
    const nb = await this.notebook(record, rel)
    const kernel = nb.metadata?.kernelspec?.name ?? 'python3'
    if (!/^python/.test(kernel)) throw new AppError(400, 'unsupported_kernel', `Failed to start kernel '${kernel}': notebooks run on Python kernels here`)
    const handle = await this.handle(record)
    await handle.kernelOpen(this.kernelOf(rel), 'python', absolute(posix.dirname(rel) === '.' ? '' : posix.dirname(rel))).catch((err: unknown) => {
      if (!(err instanceof AppError) || err.code !== 'context_exists') throw err
    })
    return { id: this.notebookId(rel), kernel, status: 'ready' }
  }

  async notebookStatus (record: SandboxRecord, id: string): Promise<{ id: string, path: string, kernel: string, status: 'ready' | 'busy' }> {
    const rel = this.notebookPath(id)
    const kernels = await (await this.handle(record)).kernels()
    if (!kernels.some(k => k.kernel === this.kernelOf(rel))) throw new AppError(404, 'not_found', 'Session not found')
    const nb = await this.notebook(record, rel)
    return { id, path: absolute(rel), kernel: nb.metadata?.kernelspec?.name ?? 'python3', status: 'ready' }
  }

  async executeCell (record: SandboxRecord, id: string, cellIndex: number, source?: string): Promise<{ status: 'ok' | 'error', execution_count: number | null, outputs: unknown[] }> {
    const rel = this.notebookPath(id)
    await this.notebookStatus(record, id)
    const nb = await this.notebook(record, rel)
    if (cellIndex < 0 || cellIndex >= nb.cells.length) throw new AppError(400, 'validation_error', `cell_index ${cellIndex} out of range (0..${nb.cells.length - 1})`)
    const cell = nb.cells[cellIndex]!
    if (source !== undefined) cell.source = source
    const code = Array.isArray(cell.source) ? cell.source.join('') : cell.source
    if (cell.cell_type !== 'code') return { status: 'ok', execution_count: null, outputs: [] }
    const ex = await this.sandboxes.execute(record, { code, language: 'python', kernel: this.kernelOf(rel) }, undefined, { via: 'terminal' })
    const outputs: unknown[] = []
    if (ex.stdout) outputs.push({ output_type: 'stream', name: 'stdout', text: ex.stdout })
    if (ex.stderr) outputs.push({ output_type: 'stream', name: 'stderr', text: ex.stderr })
    for (const r of ex.results) outputs.push({ output_type: r.type === 'result' ? 'execute_result' : 'display_data', data: r.data, metadata: {}, ...(r.type === 'result' ? { execution_count: ex.execution_count } : {}) })
    if (ex.error) outputs.push({ output_type: 'error', ename: ex.error.name, evalue: ex.error.value, traceback: ex.error.traceback })
    cell.outputs = outputs
    cell.execution_count = ex.execution_count
    await this.writeAll(record, rel, Buffer.from(JSON.stringify(nb, null, 1) + '\n', 'utf8'))
    return { status: 'ok', execution_count: cell.execution_count, outputs }
  }

  async closeNotebook (record: SandboxRecord, id: string): Promise<{ status: 'stopped' }> {
    const rel = this.notebookPath(id)
    await (await this.handle(record)).kernelClose(this.kernelOf(rel)).catch((err: unknown) => {
      if (err instanceof AppError && err.code === 'context_not_found') throw new AppError(404, 'not_found', 'Session not found')
      throw err
    })
    return { status: 'stopped' }
  }
}
