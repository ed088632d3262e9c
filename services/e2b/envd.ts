// E2B's envd (spec/envd/process/process.proto, spec/envd/filesystem/filesystem.proto) over our workspace verbs: the
// same agent process table, terminals, watchers and files as REST and WebSocket clients use. Messages are proto3
// JSON (camelCase fields, enums by name, bytes as base64, int64 as strings); the routes frame them as Connect.
import { posix } from 'node:path'
import { randomBytes } from 'node:crypto'
import { AppError } from '../errors.js'
import type { SandboxService } from '../sandbox/service.js'
import { HOME, absolute, inWorkspace, type Workspace } from '../sandbox/workspace.js'
import type { FileDetail, FollowEvent, ProcessInfo, SandboxHandle, Subscription, WatchEvent } from '../sandbox/sandbox.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import { ConnectError, field, timestamp } from './connect.js'

export { HOME }
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/
const SIGNALS: Record<string, string> = { SIGNAL_SIGKILL: 'SIGKILL', SIGNAL_SIGTERM: 'SIGTERM', 9: 'SIGKILL', 15: 'SIGTERM' }
const FILE_TYPES = { file: 'FILE_TYPE_FILE', directory: 'FILE_TYPE_DIRECTORY', symlink: 'FILE_TYPE_SYMLINK' } as const
const EVENT_TYPES: Record<string, string> = { create: 'EVENT_TYPE_CREATE', write: 'EVENT_TYPE_WRITE', remove: 'EVENT_TYPE_REMOVE', rename: 'EVENT_TYPE_RENAME', chmod: 'EVENT_TYPE_CHMOD' }

/** A message of a process stream: start, data, end or keepalive. */
export type ProcessMessage = { event: Record<string, unknown> }

/**
 * An E2B path as a workspace path: absolute under /home/user, or relative to it (E2B resolves relative paths against
 * the user's home, which /home/user is). Other places are the commands' to reach: the files API keeps to the workspace.
 */
export function workspacePath (path: string): string {
  if (typeof path !== 'string' || path.includes('\0')) throw new ConnectError('invalid_argument', 'path must be a string without NUL')
  const rel = inWorkspace(path)
  if (rel === null) {
    throw new ConnectError('permission_denied', `${path}: the files API of this server reaches ${HOME} (the workspace) only; commands see the whole file system`)
  }
  return rel
}

/** An entry as filesystem.EntryInfo. */
export function entryInfo (e: FileDetail): Record<string, unknown> {
  return {
    name: e.name,
    type: FILE_TYPES[e.type],
    path: absolute(e.path),
    size: String(e.size),
    mode: e.mode ?? 0,
    permissions: e.permissions ?? '',
    owner: e.owner ?? '',
    group: e.group ?? '',
    modifiedTime: timestamp(e.modified),
    ...(e.target !== undefined ? { symlinkTarget: e.target } : {})
  }
}

/** The user an envd request names in Basic auth (`user:`), if any. */
export function basicUser (authorization: string | undefined): string | undefined {
  const m = /^Basic\s+(\S+)$/i.exec(authorization ?? '')
  return m ? Buffer.from(m[1]!, 'base64').toString().split(':')[0] : undefined
}

/** The user a request names (Basic auth, or /files' `username`): ours is `user`; nothing here runs as root. */
export function checkUser (user: string | undefined): void {
  if (user && user !== 'user') {
    throw new ConnectError('permission_denied', `Commands and files here belong to the sandbox user "user"; running as "${user}" is not offered (sandboxes have no root)`)
  }
}

function processConfig (p: ProcessInfo): Record<string, unknown> {
  return { config: { cmd: p.cmd[0] ?? '', args: p.cmd.slice(1), envs: {} }, pid: p.pid, ...(p.tag ? { tag: p.tag } : {}) }
}

/** A follow event as a process.ProcessEvent (null: nothing to send). */
function processEvent (e: FollowEvent): ProcessMessage | null {
  if (e.type === 'proc_follow') return { event: { start: { pid: e.pid } } }
  if (e.type === 'proc_output') return { event: { data: { [e.stream]: e.data } } }
  const signalled = e.signal !== null
  const status = signalled ? `signal: ${e.signal === 'SIGKILL' ? 'killed' : e.signal === 'SIGTERM' ? 'terminated' : e.signal}` : `exit status ${e.exit_code}`
  return {
    event: {
      end: {
        exitCode: signalled ? -1 : e.exit_code,
        exited: !signalled,
        status,
        ...(signalled || e.exit_code !== 0 ? { error: e.status === 'timeout' ? `${status} (its timeout passed)` : status } : {})
      }
    }
  }
}

interface Watcher { sub: Subscription, events: Array<Record<string, unknown>>, owner: string, touched: number }

export interface EnvdOptions {
  /** Polling watchers (CreateWatcher) a sandbox may hold in this process. */
  maxWatchers: number
  /** Events a polling watcher keeps until they are read. */
  maxWatcherEvents: number
}

export class EnvdService {
  /** Polling watchers by id (this process's: the JS SDK streams with WatchDir instead). */
  private readonly watchers = new Map<string, Watcher>()

  constructor (private readonly sandboxes: SandboxService, private readonly workspace: Workspace, private readonly opts: EnvdOptions) {}

  private async handle (record: SandboxRecord): Promise<SandboxHandle> {
    const handle = await this.sandboxes.handle(record)
    await this.sandboxes.touch(record).catch(() => {})
    return handle
  }

  // --- process.Process ---------------------------------------------------------------------------------------------

  /** Start: the command (argv `cmd` + `args`), its start event first, then its output and end. */
  async start (record: SandboxRecord, req: unknown, send: (m: ProcessMessage) => void): Promise<Subscription> {
    const proc = field<Record<string, unknown>>(req, 'process', 'object', {})
    const cmd = field(proc, 'cmd', 'string', '')
    if (!cmd) throw new ConnectError('invalid_argument', 'process.cmd is required')
    const args = field<unknown[]>(proc, 'args', 'array', [])
    if (args.some(a => typeof a !== 'string')) throw new ConnectError('invalid_argument', 'process.args must be strings')
    const envs = field<Record<string, unknown>>(proc, 'envs', 'object', {})
    for (const [k, v] of Object.entries(envs)) {
      if (!ENV_NAME.test(k) || typeof v !== 'string') throw new ConnectError('invalid_argument', `process.envs: ${k} is not a variable name with a string value`)
    }
    const cwd = field(proc, 'cwd', 'string', '')
    const size = field<Record<string, unknown>>(field<Record<string, unknown>>(req, 'pty', 'object', {}), 'size', 'object', {})
    const pty = field<unknown>(req, 'pty', 'object', undefined) !== undefined
      ? { cols: clampSize(field(size, 'cols', 'number', 80)), rows: clampSize(field(size, 'rows', 'number', 24)) }
      : undefined
    const tag = field(req, 'tag', 'string', '')
    return await this.workspace.start(record, {
      cmd: [cmd, ...args as string[]],
      ...(cwd ? { cwd } : {}),
      ...(Object.keys(envs).length ? { env: envs as Record<string, string> } : {}),
      ...(tag ? { tag } : {}),
      ...(pty ? { pty } : {}),
      stdin: field(req, 'stdin', 'boolean', false)
    }, (e) => { const m = processEvent(e); if (m) send(m) })
  }

  /** Connect: a running process's events from now on (its start event first). */
  async connect (record: SandboxRecord, req: unknown, send: (m: ProcessMessage) => void): Promise<Subscription> {
    const pid = await this.selected(record, req)
    return await this.workspace.follow(record, pid, { tail: 0 }, (e) => { const m = processEvent(e); if (m) send(m) })
  }

  async list (record: SandboxRecord): Promise<unknown> {
    const processes = await this.workspace.processes(record)
    return { processes: processes.filter(p => p.running).map(processConfig) }
  }

  async sendInput (record: SandboxRecord, req: unknown): Promise<unknown> {
    const pid = await this.selected(record, req)
    const input = field<Record<string, unknown>>(req, 'input', 'object', {})
    const data = field(input, 'stdin', 'string', '') || field(input, 'pty', 'string', '')
    await this.workspace.input(record, pid, Buffer.from(data, 'base64'))
    return {}
  }

  async closeStdin (record: SandboxRecord, req: unknown): Promise<unknown> {
    await this.workspace.input(record, await this.selected(record, req), Buffer.alloc(0), true)
    return {}
  }

  async sendSignal (record: SandboxRecord, req: unknown): Promise<unknown> {
    const raw = (req as Record<string, unknown> | null)?.signal
    const signal = SIGNALS[String(raw)]
    if (!signal) throw new ConnectError('invalid_argument', 'signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM')
    const pid = await this.selected(record, req)
    try {
      await this.workspace.signal(record, pid, signal)
    } catch (err) {
      // E2B's kill() of a process that has exited says false (not found).
      if (err instanceof AppError && err.code === 'process_exited') throw new ConnectError('not_found', `process ${pid} has exited`)
      throw err
    }
    return {}
  }

  async update (record: SandboxRecord, req: unknown): Promise<unknown> {
    const size = field<Record<string, unknown>>(field<Record<string, unknown>>(req, 'pty', 'object', {}), 'size', 'object', {})
    if (!Object.keys(size).length) return {}
    await this.workspace.resize(record, await this.selected(record, req), clampSize(field(size, 'cols', 'number', 80)), clampSize(field(size, 'rows', 'number', 24)))
    return {}
  }

  /** The pid a ProcessSelector names (by pid, or by tag among the running processes). */
  private async selected (record: SandboxRecord, req: unknown): Promise<number> {
    const proc = field<Record<string, unknown>>(req, 'process', 'object', {})
    const selector = field<Record<string, unknown>>(proc, 'selector', 'object', proc)
    const pid = field(selector, 'pid', 'number', 0)
    if (pid) {
      if (!Number.isInteger(pid) || pid < 1 || pid > 4_194_304) throw new ConnectError('invalid_argument', 'process.pid is not a pid')
      return pid
    }
    const tag = field(selector, 'tag', 'string', '')
    if (!tag) throw new ConnectError('invalid_argument', 'process needs a pid or a tag')
    const found = (await this.workspace.processes(record)).find(p => p.running && p.tag === tag)
    if (!found) throw new ConnectError('not_found', `no running process tagged ${tag}`)
    return found.pid
  }

  // --- filesystem.Filesystem ---------------------------------------------------------------------------------------

  async stat (record: SandboxRecord, req: unknown): Promise<unknown> {
    const path = workspacePath(field(req, 'path', 'string', ''))
    return { entry: entryInfo(await (await this.handle(record)).stat(path)) }
  }

  async makeDir (record: SandboxRecord, req: unknown): Promise<unknown> {
    const path = workspacePath(field(req, 'path', 'string', ''))
    const handle = await this.handle(record)
    if (!await handle.mkdir(path)) throw new ConnectError('already_exists', `${absolute(path)} exists already`)
    return { entry: entryInfo(await handle.stat(path)) }
  }

  async move (record: SandboxRecord, req: unknown): Promise<unknown> {
    const source = workspacePath(field(req, 'source', 'string', ''))
    const destination = workspacePath(field(req, 'destination', 'string', ''))
    return { entry: entryInfo(await (await this.handle(record)).move(source, destination)) }
  }

  async listDir (record: SandboxRecord, req: unknown): Promise<unknown> {
    const path = workspacePath(field(req, 'path', 'string', ''))
    const depth = field(req, 'depth', 'number', 1)
    if (!Number.isInteger(depth) || depth < 1 || depth > 32) throw new ConnectError('invalid_argument', 'depth must be from 1 to 32')
    return { entries: (await (await this.handle(record)).listFiles(path, depth)).map(entryInfo) }
  }

  async remove (record: SandboxRecord, req: unknown): Promise<unknown> {
    const path = workspacePath(field(req, 'path', 'string', ''))
    if (path === '') throw new ConnectError('permission_denied', 'the workspace itself cannot be removed')
    await (await this.handle(record)).deleteFile(path)
    return {}
  }

  /** WatchDir: a start event, then the directory's changes (names relative to it). */
  async watchDir (record: SandboxRecord, req: unknown, send: (m: unknown) => void): Promise<Subscription> {
    const path = workspacePath(field(req, 'path', 'string', ''))
    return await this.workspace.watch(record, path, field(req, 'recursive', 'boolean', false), (e) => {
      if (e.type === 'watching') return send({ start: {} })
      const m = watchEvent(path, e)
      if (m) send({ filesystem: m })
    })
  }

  async createWatcher (record: SandboxRecord, req: unknown): Promise<unknown> {
    const mine = [...this.watchers.values()].filter(w => w.owner === record.id)
    if (mine.length >= this.opts.maxWatchers) throw new ConnectError('resource_exhausted', `a sandbox may hold ${this.opts.maxWatchers} polling watchers on this server`)
    const path = workspacePath(field(req, 'path', 'string', ''))
    const id = randomBytes(12).toString('base64url')
    const watcher: Watcher = { sub: { done: Promise.resolve(), stop: async () => {} }, events: [], owner: record.id, touched: Date.now() }
    watcher.sub = await this.workspace.watch(record, path, field(req, 'recursive', 'boolean', false), (e) => {
      const m = e.type === 'fs_event' ? watchEvent(path, e) : null
      if (m && watcher.events.length < this.opts.maxWatcherEvents) watcher.events.push(m)
    })
    this.watchers.set(id, watcher)
    watcher.sub.done.catch(() => {}).finally(() => { this.watchers.delete(id) })
    return { watcherId: id }
  }

  async getWatcherEvents (record: SandboxRecord, req: unknown): Promise<unknown> {
    const watcher = this.watcher(record, req)
    const events = watcher.events.splice(0)
    watcher.touched = Date.now()
    return { events }
  }

  async removeWatcher (record: SandboxRecord, req: unknown): Promise<unknown> {
    const watcher = this.watcher(record, req)
    this.watchers.delete(field(req, 'watcherId', 'string', ''))
    await watcher.sub.stop()
    return {}
  }

  private watcher (record: SandboxRecord, req: unknown): Watcher {
    const watcher = this.watchers.get(field(req, 'watcherId', 'string', ''))
    if (!watcher || watcher.owner !== record.id) throw new ConnectError('not_found', 'no such watcher (watchers live in the server process that made them)')
    return watcher
  }

  /** Ends the polling watchers of sandboxes nobody polled for `idleMs` (called on a timer). */
  async sweep (idleMs: number): Promise<void> {
    const now = Date.now()
    for (const [id, w] of this.watchers) {
      if (now - w.touched > idleMs) {
        this.watchers.delete(id)
        await w.sub.stop().catch(() => {})
      }
    }
  }

  async close (): Promise<void> {
    await this.sweep(-1)
  }

  // --- REST: /files ------------------------------------------------------------------------------------------------

  async readFile (record: SandboxRecord, path: string): Promise<Awaited<ReturnType<SandboxHandle['readFile']>>> {
    const rel = workspacePath(path)
    return await (await this.handle(record)).readFile(rel)
  }

  /** Writes one file (its parents made); E2B's EntryInfo of it (name, type, path). */
  async writeFile (record: SandboxRecord, path: string, body: AsyncIterable<Buffer>, maxBytes: number): Promise<{ name: string, type: 'file', path: string }> {
    const rel = workspacePath(path)
    if (rel === '') throw new ConnectError('invalid_argument', 'a file path is required')
    await (await this.handle(record)).writeFile(rel, body, maxBytes)
    return { name: posix.basename(rel), type: 'file', path: absolute(rel) }
  }
}

const clampSize = (n: number) => Math.max(1, Math.min(Math.trunc(n) || 1, 1000))

/** An agent file event as a filesystem.FilesystemEvent, its name relative to the watched directory. */
function watchEvent (watched: string, e: WatchEvent): Record<string, unknown> | null {
  if (e.type !== 'fs_event') return null
  const type = EVENT_TYPES[e.kind]
  if (!type) return null
  const name = watched === '' ? e.path : e.path.startsWith(watched + '/') ? e.path.slice(watched.length + 1) : e.path === watched ? '' : e.path
  return { name, type }
}
