// The OpenAI Agents SDK's sandbox interfaces over Interpreter Server: a `SandboxClient` (create, resume, delete,
// serialize) and its `SandboxSession` (exec and write_stdin over background processes, files, an apply_patch editor,
// the workspace as tar, signed port URLs), for `SandboxAgent` runs. Runtime imports are the SDK's own
// (@openai/agents-core: Manifest, applyDiff); the rest is our client.
import { applyDiff, type Editor, type ApplyPatchOperation } from '@openai/agents-core'
import { Manifest } from '@openai/agents-core/sandbox'
import type {
  Entry, ExecCommandArgs, ExposedPortEndpoint, ListDirectoryArgs, MaterializeEntryArgs, ReadFileArgs, SandboxClient,
  SandboxClientCreateArgs, SandboxDirectoryEntry, SandboxExecResult, SandboxSession, SandboxSessionState,
  WorkspaceArchiveData, WorkspaceArchiveOptions, WriteStdinArgs, SandboxArchiveLimits
} from '@openai/agents-core/sandbox'
import { readFile as readHostFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { InterpreterSandboxSession, HOME, place } from './ai-sdk.js'
import { ApiError, InterpreterClient, type ClientOptions, type CreateSandbox } from './index.js'

export const BACKEND_ID = 'interpreter-server'
const DEFAULT_EXEC_YIELD_MS = 10_000
const DEFAULT_STDIN_YIELD_MS = 250
/** Output kept for a running exec session between two polls (the oldest is dropped past it, and the model told). */
const MAX_PENDING_BYTES = 1024 * 1024

export interface InterpreterSandboxClientOptions extends Record<string, unknown> {
  /** What each new sandbox is created with (language, resources, network, env, timeout, ...). */
  sandbox?: CreateSandbox
}

/** Our part of the session state: the sandbox, and the server it lives on (never the key). */
export interface InterpreterSessionState extends SandboxSessionState {
  sandboxId: string
  server: string
}

/** Output of a process as the model is shown it: what came since the last look, stdout and stderr as they interleaved. */
interface Running {
  pid: number
  tty: boolean
  pending: string
  stdout: string
  stderr: string
  dropped: number
  exit: { code: number } | null
  changed: (() => void) | null
  ended: Promise<void>
}

/** Approximate tokens as the SDK counts them (4 bytes each), cutting the middle out past `maxTokens`. */
export function truncate (output: string, maxTokens?: number): { text: string, originalTokenCount?: number } {
  if (maxTokens === undefined) return { text: output }
  const bytes = Buffer.byteLength(output)
  const budget = Math.max(0, maxTokens) * 4
  if (bytes <= budget) return { text: output }
  const tokens = Math.ceil(bytes / 4)
  const half = Math.floor(budget / 2)
  const buf = Buffer.from(output)
  const head = buf.subarray(0, half).toString('utf8').replace(/\uFFFD$/, '')
  const tail = buf.subarray(bytes - half).toString('utf8').replace(/^\uFFFD/, '')
  return { text: `${head}...${tokens - Math.ceil(budget / 4)} tokens truncated...${tail}`, originalTokenCount: tokens }
}

/** The text the SDK's shell tool shows the model (its format: wall time, exit or session, output). */
export function formatExec (r: { output: string, wallTimeSeconds: number, sessionId?: number, exitCode?: number | null, originalTokenCount?: number }): string {
  const lines = [`Chunk ID: ${Math.random().toString(16).slice(2, 8)}`, `Wall time: ${r.wallTimeSeconds.toFixed(4)} seconds`]
  if (typeof r.sessionId === 'number') lines.push(`Process running with session ID ${r.sessionId}`)
  else if (typeof r.exitCode === 'number') lines.push(`Process exited with code ${r.exitCode}`)
  if (typeof r.originalTokenCount === 'number') lines.push(`Original token count: ${r.originalTokenCount}`)
  lines.push('Output:', r.output)
  return lines.join('\n')
}

/**
 * One sandbox as an Agents SDK session. Its workspace root is /home/user (the manifest's root is set to it), commands
 * run there as the sandbox user, and what a command leaves running past its yield time is a session `write_stdin`
 * reaches (pipes: Ctrl-C becomes SIGINT).
 */
export class InterpreterAgentsSession implements SandboxSession<InterpreterSessionState> {
  readonly files: InterpreterSandboxSession
  private readonly sessions = new Map<number, Running>()
  private nextSession = 1
  private archiveLimits: SandboxArchiveLimits | null | undefined

  constructor (readonly client: InterpreterClient, public state: InterpreterSessionState) {
    this.files = new InterpreterSandboxSession({ client, sandboxId: state.sandboxId })
  }

  get sandboxId (): string { return this.state.sandboxId }

  /** Resumes the sandbox when it is paused (any use would too); fails when it is gone. */
  async start (): Promise<void> {
    const sandbox = await this.client.sandboxes.get(this.sandboxId)
    if (sandbox.paused_at) await this.client.sandboxes.resume(this.sandboxId)
  }

  async running (): Promise<boolean> {
    return await this.client.sandboxes.get(this.sandboxId).then(s => !s.paused_at, () => false)
  }

  /** Ends the sandbox (the runner calls this for sessions it created); a sandbox already gone is fine. */
  async shutdown (): Promise<void> {
    for (const r of this.sessions.values()) r.changed?.()
    this.sessions.clear()
    await this.client.sandboxes.delete(this.sandboxId).catch((err: unknown) => { if (!(err instanceof ApiError && err.status === 404)) throw err })
  }

  async delete (): Promise<void> { await this.shutdown() }

  supportsPty (): boolean { return true }

  async execCommand (args: ExecCommandArgs): Promise<string> { return formatExec(await this.exec(args)) }

  async exec (args: ExecCommandArgs): Promise<SandboxExecResult> {
    const started = Date.now()
    const shell = args.shell ?? 'bash'
    const proc = await this.client.sandboxes.spawn(this.sandboxId, [shell, args.login === false ? '-c' : '-lc', args.cmd], {
      ...(args.workdir ? { cwd: args.workdir } : {}),
      ...(this.state.environment && Object.keys(this.state.environment).length ? { env: this.state.environment } : {}),
      // tty: a terminal of ours (Ctrl-C typed is an interrupt, programs see a TTY); else pipes, Ctrl-C sent as SIGINT.
      ...(args.tty ? { pty: { cols: 120, rows: 40 } } : { stdin: true }),
      tag: 'openai-agents'
    })
    const r = this.follow(proc.pid, args.tty === true)
    await this.settle(r, args.yieldTimeMs ?? DEFAULT_EXEC_YIELD_MS)
    return this.result(r, started, args.maxOutputTokens)
  }

  async writeStdin (args: WriteStdinArgs): Promise<string> {
    const started = Date.now()
    const r = this.sessions.get(args.sessionId)
    if (!r) return formatExec({ output: `write_stdin failed: session not found: ${args.sessionId}`, wallTimeSeconds: 0, exitCode: 1 })
    const chars = args.chars ?? ''
    // On a terminal Ctrl-C is typed like any key (its line discipline interrupts); on pipes it is sent as SIGINT.
    if (!r.tty && chars.includes('\u0003')) await this.client.sandboxes.signal(this.sandboxId, r.pid, 'SIGINT').catch(() => {})
    const rest = r.tty ? chars : chars.split('\u0003').join('')
    if (rest && !r.exit) await this.client.sandboxes.stdin(this.sandboxId, r.pid, rest).catch(() => {})
    await this.settle(r, args.yieldTimeMs ?? DEFAULT_STDIN_YIELD_MS)
    const result = this.result(r, started, args.maxOutputTokens)
    return formatExec(result)
  }

  /** Follows a process's output into its `Running` entry. */
  private follow (pid: number, tty = false): Running {
    const r: Running = { pid, tty, pending: '', stdout: '', stderr: '', dropped: 0, exit: null, changed: null, ended: Promise.resolve() }
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder(), pty: new TextDecoder() }
    r.ended = this.client.sandboxes.output(this.sandboxId, pid, (stream, data) => {
      const text = decoders[stream].decode(data, { stream: true })
      r.pending += text
      if (stream === 'stderr') r.stderr += text
      else r.stdout += text
      if (r.pending.length > MAX_PENDING_BYTES) {
        r.dropped += r.pending.length - MAX_PENDING_BYTES
        r.pending = r.pending.slice(-MAX_PENDING_BYTES)
      }
      r.changed?.()
    }).then((exit) => { r.exit = { code: exit.exit_code } }, () => { r.exit = { code: -1 } }).finally(() => r.changed?.())
    return r
  }

  /** Waits until the process ends or `ms` pass. */
  private async settle (r: Running, ms: number): Promise<void> {
    if (r.exit) return
    await Promise.race([r.ended, new Promise(resolve => setTimeout(resolve, ms))])
  }

  /** What the model is shown now: the output since the last look, and the exit or a session id to come back with. */
  private result (r: Running, started: number, maxTokens?: number): SandboxExecResult {
    const notice = r.dropped ? `[...${r.dropped} characters truncated from process output...]\n` : ''
    const output = truncate(notice + r.pending, maxTokens)
    const { stdout, stderr } = r
    r.pending = ''
    r.stdout = ''
    r.stderr = ''
    r.dropped = 0
    const wallTimeSeconds = (Date.now() - started) / 1000
    const counted = output.originalTokenCount !== undefined ? { originalTokenCount: output.originalTokenCount } : {}
    if (r.exit) {
      for (const [id, entry] of this.sessions) if (entry === r) this.sessions.delete(id)
      return { output: output.text, stdout, stderr, wallTimeSeconds, exitCode: r.exit.code, ...counted }
    }
    let sessionId = [...this.sessions].find(([, entry]) => entry === r)?.[0]
    if (sessionId === undefined) {
      sessionId = this.nextSession++
      this.sessions.set(sessionId, r)
    }
    return { output: output.text, stdout, stderr, wallTimeSeconds, sessionId, ...counted }
  }

  async readFile (args: ReadFileArgs): Promise<Uint8Array> {
    const bytes = await this.files.readBinaryFile({ path: args.path })
    if (!bytes) throw new Error(`File not found: ${args.path}`)
    return args.maxBytes !== undefined && bytes.byteLength > args.maxBytes ? bytes.subarray(0, args.maxBytes) : bytes
  }

  async listDir (args: ListDirectoryArgs): Promise<SandboxDirectoryEntry[]> {
    const entries = await this.files.listDirectory({ path: args.path })
    if (!entries) throw new Error(`Not a directory: ${args.path}`)
    const base = args.path.replace(/\/+$/, '')
    return entries.map(e => ({ name: e.name, path: base ? `${base}/${e.name}` : e.name, type: e.type === 'directory' ? 'dir' : e.type === 'file' ? 'file' : 'other' }))
  }

  async pathExists (path: string): Promise<boolean> { return (await this.files.stat({ path })) !== null }

  async directoryExists (path: string): Promise<boolean> { return (await this.files.stat({ path }))?.type === 'directory' }

  /** Writes a manifest entry: files and directories (and local ones, read from this machine); mounts and git are refused. */
  async materializeEntry (args: MaterializeEntryArgs): Promise<void> {
    await this.materialize(args.path, args.entry)
  }

  private async materialize (path: string, entry: Entry): Promise<void> {
    switch (entry.type) {
      case 'file':
        await this.files.writeBinaryFile({ path, content: typeof entry.content === 'string' ? Buffer.from(entry.content) : entry.content })
        return
      case 'dir': {
        const made = await this.client.sandboxes.run(this.sandboxId, ['mkdir', '-p', '--', this.absolute(path)])
        if (made.exit_code !== 0) throw new Error(`could not make ${path}: ${made.stderr.trim()}`)
        for (const [name, child] of Object.entries(entry.children ?? {})) await this.materialize(`${path}/${name}`, child)
        return
      }
      case 'local_file':
        await this.files.writeBinaryFile({ path, content: await readHostFile(entry.src) })
        return
      case 'local_dir': {
        await this.materialize(path, { type: 'dir' })
        for (const item of await readdir(entry.src, { withFileTypes: true })) {
          if (item.isDirectory()) await this.materialize(`${path}/${item.name}`, { type: 'local_dir', src: join(entry.src, item.name) })
          else if (item.isFile()) await this.materialize(`${path}/${item.name}`, { type: 'local_file', src: join(entry.src, item.name) })
        }
        return
      }
      default:
        throw new Error(`${entry.type} entries are not supported by Interpreter Server sandboxes (files, directories and local files are); use a volume or fetch it from inside with a network policy`)
    }
  }

  private absolute (path: string): string {
    const where = place(path)
    return 'rel' in where ? `${HOME}${where.rel ? '/' + where.rel : ''}` : where.abs
  }

  async applyManifest (manifest: Manifest): Promise<void> {
    for (const [path, entry] of Object.entries(manifest.entries)) await this.materialize(path, entry)
    this.state.environment = { ...this.state.environment, ...await manifest.resolveEnvironment() }
  }

  /** An apply_patch editor: V4A diffs applied here to the file read from the sandbox, written back whole. */
  createEditor (): Editor {
    const read = async (path: string) => {
      const bytes = await this.files.readBinaryFile({ path })
      if (!bytes) throw new Error(`File not found: ${path}`)
      return Buffer.from(bytes).toString('utf8')
    }
    const write = async (path: string, text: string) => { await this.files.writeTextFile({ path, content: text }) }
    return {
      createFile: async (op: Extract<ApplyPatchOperation, { type: 'create_file' }>) => {
        await write(op.path, applyDiff('', op.diff, 'create'))
        return { status: 'completed', output: `Created ${op.path}` }
      },
      updateFile: async (op: Extract<ApplyPatchOperation, { type: 'update_file' }>) => {
        const updated = applyDiff(await read(op.path), op.diff)
        const moveTo = (op as { moveTo?: string }).moveTo
        await write(moveTo ?? op.path, updated)
        if (moveTo && moveTo !== op.path) await this.files.deleteFile({ path: op.path })
        return { status: 'completed', output: moveTo ? `Updated ${op.path} and moved it to ${moveTo}` : `Updated ${op.path}` }
      },
      deleteFile: async (op: Extract<ApplyPatchOperation, { type: 'delete_file' }>) => {
        if (!await this.files.deleteFile({ path: op.path })) throw new Error(`File not found: ${op.path}`)
        return { status: 'completed', output: `Deleted ${op.path}` }
      }
    }
  }

  /** An image file for the model (PNG, JPEG, GIF or WebP, up to 10 MB). */
  async viewImage (args: { path: string }): Promise<{ type: 'image', image: { data: Uint8Array<ArrayBuffer>, mediaType: string } }> {
    const bytes = await this.readFile({ path: args.path })
    if (bytes.byteLength > 10 * 1024 * 1024) throw new Error(`Image file exceeds the 10 MB limit: ${args.path}`)
    const mediaType = imageType(Buffer.from(bytes))
    if (!mediaType) throw new Error(`Unsupported image format for view_image: ${args.path}`)
    return { type: 'image', image: { data: Uint8Array.from(bytes), mediaType } }
  }

  setArchiveLimits (limits?: SandboxArchiveLimits | null): void { this.archiveLimits = limits }

  /** The workspace (/home/user) as a tar archive. */
  async persistWorkspace (): Promise<Uint8Array> {
    return new Uint8Array(await this.client.sandboxes.archive(this.sandboxId))
  }

  /** Unpacks a tar archive (persistWorkspace's, of this sandbox or another) into the workspace. */
  async hydrateWorkspace (data: WorkspaceArchiveData, options: WorkspaceArchiveOptions = {}): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data, 'base64') : data instanceof ArrayBuffer ? new Uint8Array(data) : data
    const limit = (options.archiveLimits === undefined ? this.archiveLimits : options.archiveLimits)?.maxInputBytes
    if (limit != null && bytes.byteLength > limit) throw new Error(`the workspace archive is ${bytes.byteLength} bytes, over the limit of ${limit}`)
    await this.client.sandboxes.unpack(this.sandboxId, bytes)
  }

  /**
   * A signed URL of a port (no key needed until it expires). `url` is the whole URL; with PORT_HOST_DOMAIN the
   * endpoint's host and query name the port's own host, as urlForExposedPort builds it.
   */
  async resolveExposedPort (port: number): Promise<ExposedPortEndpoint> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`not a port: ${port}`)
    const signed = await this.client.sandboxes.portUrl(this.sandboxId, port)
    const where = new URL(signed.host_url ?? signed.url)
    const endpoint: ExposedPortEndpoint = {
      host: where.hostname,
      port: Number(where.port) || (where.protocol === 'https:' ? 443 : 80),
      tls: where.protocol === 'https:',
      url: signed.url,
      ...(signed.host_url ? { query: where.search.slice(1), host_url: signed.host_url } : {})
    }
    this.state.exposedPorts = { ...this.state.exposedPorts, [String(port)]: endpoint }
    return endpoint
  }
}

/** The media type of PNG, JPEG, GIF or WebP bytes; null for anything else. */
function imageType (b: Buffer): string | null {
  if (b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'image/png'
  if (b.subarray(0, 3).equals(Buffer.from([0xff, 0xd8, 0xff]))) return 'image/jpeg'
  if (b.subarray(0, 4).toString('latin1') === 'GIF8') return 'image/gif'
  if (b.subarray(0, 4).toString('latin1') === 'RIFF' && b.subarray(8, 12).toString('latin1') === 'WEBP') return 'image/webp'
  return null
}

/** The manifest the SDK's default root ('/workspace') moved to ours; a root elsewhere is refused. */
function rooted (manifest: Manifest | undefined): Manifest {
  if (!manifest) return new Manifest({ root: HOME })
  if (manifest.root === HOME) return manifest
  if (manifest.root !== '/workspace') throw new Error(`Interpreter Server sandboxes keep their workspace at ${HOME}; the manifest's root ${manifest.root} cannot be used`)
  return new Manifest({
    root: HOME,
    entries: manifest.entries,
    environment: Object.fromEntries(Object.entries(manifest.environment).map(([k, v]) => [k, v.init()]))
  })
}

/** Sandboxes of Interpreter Server for the Agents SDK: `new InterpreterSandboxClient({ url, apiKey })`. */
export class InterpreterSandboxClient implements SandboxClient<InterpreterSandboxClientOptions, InterpreterSessionState> {
  readonly backendId = BACKEND_ID
  readonly supportsDefaultOptions = true
  readonly client: InterpreterClient

  constructor (options: ClientOptions & { sandbox?: CreateSandbox }, private readonly defaults: CreateSandbox = options.sandbox ?? {}) {
    this.client = new InterpreterClient(options)
  }

  async create (args?: SandboxClientCreateArgs<InterpreterSandboxClientOptions> | Manifest, manifestOptions?: InterpreterSandboxClientOptions): Promise<InterpreterAgentsSession> {
    const normal = args instanceof Manifest ? { manifest: args, options: manifestOptions } : args ?? {}
    const manifest = rooted(normal.manifest instanceof Manifest ? normal.manifest : normal.manifest ? new Manifest(normal.manifest) : undefined)
    const sandbox = await this.client.sandboxes.create({ ...this.defaults, ...normal.options?.sandbox })
    const session = new InterpreterAgentsSession(this.client, { manifest, sandboxId: sandbox.id, server: this.client.url, environment: {}, workspaceReady: false })
    try {
      await session.applyManifest(manifest)
    } catch (err) {
      await session.shutdown().catch(() => {})
      throw err
    }
    session.state.workspaceReady = true
    return session
  }

  async resume (state: InterpreterSessionState): Promise<InterpreterAgentsSession> {
    if (state.server !== this.client.url) throw new Error(`this session's sandbox lives on ${state.server}, not on ${this.client.url}`)
    const session = new InterpreterAgentsSession(this.client, state)
    await session.start() // 404 when the sandbox is gone, or belongs to another key
    return session
  }

  async delete (state: InterpreterSessionState): Promise<void> {
    await new InterpreterAgentsSession(this.client, state).shutdown()
  }

  /** The sandbox id and server, the manifest's root and the environment the manifest does not mark ephemeral. */
  async serializeSessionState (state: InterpreterSessionState): Promise<Record<string, unknown>> {
    const ephemeral = new Set(Object.entries(state.manifest.environment).filter(([, v]) => v.ephemeral).map(([k]) => k))
    return {
      sandboxId: state.sandboxId,
      server: state.server,
      root: state.manifest.root,
      environment: Object.fromEntries(Object.entries(state.environment ?? {}).filter(([k]) => !ephemeral.has(k))),
      workspaceReady: state.workspaceReady ?? true,
      ...(state.exposedPorts ? { exposedPorts: state.exposedPorts } : {})
    }
  }

  async deserializeSessionState (raw: Record<string, unknown>): Promise<InterpreterSessionState> {
    if (typeof raw.sandboxId !== 'string' || typeof raw.server !== 'string') throw new Error('not an Interpreter Server session state: sandboxId and server are needed')
    const environment = raw.environment && typeof raw.environment === 'object' ? raw.environment as Record<string, string> : {}
    return {
      sandboxId: raw.sandboxId,
      server: raw.server,
      manifest: new Manifest({ root: typeof raw.root === 'string' ? raw.root : HOME }),
      environment,
      workspaceReady: raw.workspaceReady !== false,
      ...(raw.exposedPorts && typeof raw.exposedPorts === 'object' ? { exposedPorts: raw.exposedPorts as Record<string, ExposedPortEndpoint> } : {})
    }
  }
}
