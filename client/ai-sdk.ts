// The AI SDK's sandbox interfaces over Interpreter Server: an `Experimental_SandboxSession` (commands, processes and
// files of one sandbox, for `experimental_sandbox` of generateText / streamText / ToolLoopAgent) and a
// `HarnessV1SandboxProvider` (@ai-sdk/harness: sessions with ports, pause and removal). Only types come from those
// packages; at run time this needs nothing but our client.
import { createHash } from 'node:crypto'
import type {
  Experimental_SandboxDirectoryEntry as SandboxDirectoryEntry, Experimental_SandboxFileStat as SandboxFileStat,
  Experimental_SandboxProcess as SandboxProcess, Experimental_SandboxSession as SandboxSession
} from 'ai'
import type { HarnessV1NetworkPolicy, HarnessV1NetworkSandboxSession, HarnessV1PortEndpoint, HarnessV1SandboxProvider } from '@ai-sdk/harness'
import { ApiError, InterpreterClient, type ClientOptions, type CommandOptions, type CreateSandbox, type Sandbox } from './index.js'

/** The sandbox user's home: the workspace that the files API serves, and where commands start. */
export const HOME = '/home/user'

/** Where a path is: relative to the workspace (the files API serves it), or an absolute path outside it (commands reach it). */
export function place (path: string, cwd = HOME): { rel: string } | { abs: string } {
  if (typeof path !== 'string' || !path || path.includes('\0')) throw new TypeError('a sandbox path must be a non-empty string without NUL')
  const parts: string[] = []
  for (const part of (path.startsWith('/') ? path : `${cwd}/${path}`).split('/')) {
    if (!part || part === '.') continue
    if (part === '..') parts.pop()
    else parts.push(part)
  }
  const abs = '/' + parts.join('/')
  if (abs === HOME) return { rel: '' }
  return abs.startsWith(HOME + '/') ? { rel: abs.slice(HOME.length + 1) } : { abs }
}

const files = (rel: string) => rel.split('/').map(encodeURIComponent).join('/')
const missing = (err: unknown) => err instanceof ApiError && (err.status === 404 || err.code === 'file_not_found')

/** Bytes as a one-chunk stream. */
function streamOf (bytes: Uint8Array): ReadableStream<Uint8Array> {
  return new ReadableStream({ start (c) { c.enqueue(bytes); c.close() } })
}

async function bytesOf (stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = []
  for await (const chunk of stream as unknown as AsyncIterable<Uint8Array>) chunks.push(chunk)
  return Buffer.concat(chunks)
}

export interface SessionOptions {
  /** A client, or what makes one (url and apiKey). */
  client: InterpreterClient | ClientOptions
  sandboxId: string
  /** Added to what `description` says of the sandbox. */
  description?: string
  /** Deadline of `run` (default: the server's EXECUTION_TIMEOUT_MS); `spawn`ed processes have none. */
  commandTimeoutMs?: number
}

const clientOf = (c: InterpreterClient | ClientOptions) => c instanceof InterpreterClient ? c : new InterpreterClient(c)

/**
 * One sandbox as an AI SDK `Experimental_SandboxSession`. Relative paths and commands start in /home/user; files there
 * go through the files API (streamed, any size up to MAX_UPLOAD_BYTES), absolute paths elsewhere through commands
 * (as the sandbox user, base64 on the way: up to ~768 KB written at once).
 */
export class InterpreterSandboxSession implements SandboxSession {
  readonly client: InterpreterClient
  readonly sandboxId: string
  readonly description: string
  private readonly timeoutMs: number | undefined

  constructor (options: SessionOptions) {
    this.client = clientOf(options.client)
    this.sandboxId = options.sandboxId
    this.timeoutMs = options.commandTimeoutMs
    this.description = `A Linux (Debian) sandbox of Interpreter Server, id ${options.sandboxId}. The working directory is ${HOME} (files there persist while the sandbox lives); ` +
      'commands run as an unprivileged user with bash, python3, node and common tools; outbound network only as its policy allows (none by default).' +
      (options.description ? ` ${options.description}` : '')
  }

  private get api () { return this.client.sandboxes }

  readonly run = async (options: { command: string, workingDirectory?: string, env?: Record<string, string>, abortSignal?: AbortSignal }): Promise<{ exitCode: number, stdout: string, stderr: string }> => {
    if (options.abortSignal) {
      // An abortable run is a spawned process, which kill() reaches.
      const proc = await this.spawn(options)
      const [stdout, stderr, exit] = await Promise.all([bytesOf(proc.stdout), bytesOf(proc.stderr), proc.wait()])
      return { exitCode: exit.exitCode, stdout: Buffer.from(stdout).toString('utf8'), stderr: Buffer.from(stderr).toString('utf8') }
    }
    const result = await this.api.run(this.sandboxId, options.command, this.commandOptions(options, this.timeoutMs))
    return { exitCode: result.exit_code, stdout: result.stdout, stderr: result.stderr }
  }

  private commandOptions (options: { workingDirectory?: string, env?: Record<string, string> }, timeoutMs?: number): CommandOptions {
    return {
      ...(options.workingDirectory ? { cwd: options.workingDirectory } : {}),
      ...(options.env && Object.keys(options.env).length ? { env: options.env } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {})
    }
  }

  readonly spawn = (async (options: { command: string, workingDirectory?: string, env?: Record<string, string>, abortSignal?: AbortSignal, stdin?: boolean }) => {
    options.abortSignal?.throwIfAborted()
    const started = await this.api.spawn(this.sandboxId, options.command, { ...this.commandOptions(options), ...(options.stdin ? { stdin: true } : {}) })
    return new SpawnedProcess(this.client, this.sandboxId, started.pid, options.stdin === true, options.abortSignal)
  }) as SandboxSession['spawn']

  readonly readFile = async (options: { path: string, abortSignal?: AbortSignal }): Promise<ReadableStream<Uint8Array> | null> => {
    const bytes = await this.readBinaryFile(options)
    return bytes ? streamOf(bytes) : null
  }

  readonly readBinaryFile = async (options: { path: string, abortSignal?: AbortSignal }): Promise<Uint8Array | null> => {
    const where = place(options.path)
    if ('rel' in where) {
      return await this.api.files.download(this.sandboxId, files(where.rel)).catch((err: unknown) => { if (missing(err)) return null; throw err })
    }
    const result = await this.api.run(this.sandboxId, ['base64', '-w0', '--', where.abs])
    if (result.exit_code !== 0) {
      if (/No such file/.test(result.stderr)) return null
      throw new Error(`could not read ${where.abs}: ${result.stderr.trim()}`)
    }
    return Buffer.from(result.stdout, 'base64')
  }

  readonly readTextFile = async (options: { path: string, abortSignal?: AbortSignal, encoding?: string, startLine?: number, endLine?: number }): Promise<string | null> => {
    const bytes = await this.readBinaryFile(options)
    if (!bytes) return null
    const text = new TextDecoder(options.encoding ?? 'utf-8').decode(bytes)
    if (options.startLine === undefined && options.endLine === undefined) return text
    const lines = text.split('\n')
    const start = Math.max(1, options.startLine ?? 1)
    const end = options.endLine === undefined ? lines.length : Math.min(lines.length, options.endLine)
    return lines.slice(start - 1, end).join('\n')
  }

  readonly writeFile = async (options: { path: string, content: ReadableStream<Uint8Array>, abortSignal?: AbortSignal }): Promise<void> => {
    await this.writeBinaryFile({ path: options.path, content: await bytesOf(options.content) })
  }

  readonly writeBinaryFile = async (options: { path: string, content: Uint8Array, abortSignal?: AbortSignal }): Promise<void> => {
    const where = place(options.path)
    if ('rel' in where) {
      if (!where.rel) throw new Error(`${HOME} is a directory`)
      await this.api.files.upload(this.sandboxId, files(where.rel), Buffer.from(options.content))
      return
    }
    const result = await this.api.run(this.sandboxId, ['sh', '-c', 'mkdir -p -- "$(dirname -- "$1")" && base64 -d > "$1"', 'sh', where.abs], { input: Buffer.from(options.content).toString('base64') })
    if (result.exit_code !== 0) throw new Error(`could not write ${where.abs}: ${result.stderr.trim()}`)
  }

  readonly writeTextFile = async (options: { path: string, content: string, abortSignal?: AbortSignal, encoding?: string }): Promise<void> => {
    if (options.encoding && !/^utf-?8$/i.test(options.encoding)) throw new Error(`only utf-8 text is written here, not ${options.encoding}`)
    await this.writeBinaryFile({ path: options.path, content: Buffer.from(options.content, 'utf8') })
  }

  readonly stat = async (options: { path: string, abortSignal?: AbortSignal }): Promise<SandboxFileStat | null> => {
    const where = place(options.path)
    const abs = 'rel' in where ? `${HOME}${where.rel ? '/' + where.rel : ''}` : where.abs
    const result = await this.api.run(this.sandboxId, ['stat', '-L', '-c', '%F\t%s', '--', abs])
    if (result.exit_code !== 0) return null
    const [kind, size] = result.stdout.trim().split('\t')
    return { type: kind === 'directory' ? 'directory' : /regular/.test(kind ?? '') ? 'file' : 'other', size: Number(size) }
  }

  readonly listDirectory = async (options: { path: string, abortSignal?: AbortSignal }): Promise<SandboxDirectoryEntry[] | null> => {
    const where = place(options.path)
    if ('rel' in where) {
      const entries = await this.api.files.list(this.sandboxId, where.rel).catch((err: unknown) => { if (missing(err) || (err instanceof ApiError && err.status === 400)) return null; throw err })
      return entries && entries.map(e => ({ name: e.name, type: e.type }))
    }
    const result = await this.api.run(this.sandboxId, ['find', where.abs, '-mindepth', '1', '-maxdepth', '1', '-printf', '%y\t%f\n'])
    if (result.exit_code !== 0) return null
    const kinds: Record<string, SandboxDirectoryEntry['type']> = { f: 'file', d: 'directory', l: 'symlink' }
    return result.stdout.split('\n').filter(Boolean).map(line => {
      const [kind, ...name] = line.split('\t')
      return { name: name.join('\t'), type: kinds[kind!] ?? 'other' }
    })
  }

  readonly deleteFile = async (options: { path: string, abortSignal?: AbortSignal }): Promise<boolean> => {
    const where = place(options.path)
    if ('rel' in where) {
      if (!where.rel) throw new Error(`${HOME} itself cannot be deleted`)
      return await this.api.files.delete(this.sandboxId, files(where.rel)).then(() => true, (err: unknown) => { if (missing(err)) return false; throw err })
    }
    const result = await this.api.run(this.sandboxId, ['sh', '-c', '[ -e "$1" ] || [ -L "$1" ] || exit 3; rm -rf -- "$1"', 'sh', where.abs])
    if (result.exit_code === 3) return false
    if (result.exit_code !== 0) throw new Error(`could not delete ${where.abs}: ${result.stderr.trim()}`)
    return true
  }
}

/** A background process: its output streamed from the server as it comes, its exit, kill, and stdin when asked for. */
class SpawnedProcess implements SandboxProcess {
  readonly stdout: ReadableStream<Uint8Array>
  readonly stderr: ReadableStream<Uint8Array>
  readonly stdin?: WritableStream<Uint8Array>
  private readonly exit: Promise<{ exitCode: number }>

  constructor (private readonly client: InterpreterClient, private readonly sandboxId: string, readonly pid: number, withStdin: boolean, abort?: AbortSignal) {
    let out!: ReadableStreamDefaultController<Uint8Array>
    let err!: ReadableStreamDefaultController<Uint8Array>
    this.stdout = new ReadableStream({ start (c) { out = c } })
    this.stderr = new ReadableStream({ start (c) { err = c } })
    const follow = new AbortController()
    const onAbort = () => { void this.kill() }
    abort?.addEventListener('abort', onAbort, { once: true })
    this.exit = client.sandboxes.output(sandboxId, pid, (stream, data) => {
      try { (stream === 'stderr' ? err : out).enqueue(new Uint8Array(data)) } catch {} // a reader that cancelled
    }, { signal: follow.signal }).then((exit) => {
      for (const c of [out, err]) { try { c.close() } catch {} }
      abort?.removeEventListener('abort', onAbort)
      if (abort?.aborted) throw abort.reason
      return { exitCode: exit.exit_code }
    }, (error: unknown) => {
      for (const c of [out, err]) { try { c.error(error) } catch {} }
      throw abort?.aborted ? abort.reason : error
    })
    this.exit.catch(() => {}) // its reader learns of it through wait()
    if (withStdin) {
      this.stdin = new WritableStream<Uint8Array>({
        write: async (chunk) => { await client.sandboxes.stdin(sandboxId, pid, chunk) },
        close: async () => { await client.sandboxes.stdin(sandboxId, pid, '', true).catch(() => {}) }
      })
    }
  }

  wait (): Promise<{ exitCode: number }> { return this.exit }

  async kill (): Promise<void> {
    await this.client.sandboxes.signal(this.sandboxId, this.pid, 'SIGKILL').catch((err: unknown) => {
      if (!(err instanceof ApiError && (err.status === 409 || err.status === 404))) throw err
    })
  }
}

/** A sandbox session the harness holds: the session, plus its ports, pause (`stop`) and removal (`destroy`). */
export class InterpreterHarnessSession extends InterpreterSandboxSession implements HarnessV1NetworkSandboxSession {
  readonly id: string
  readonly defaultWorkingDirectory = HOME
  ports: number[]

  constructor (options: SessionOptions & { ports?: number[] }) {
    super(options)
    this.id = options.sandboxId
    this.ports = [...options.ports ?? []]
  }

  /** A signed URL of the port (no key needed until it expires): ws:// for WebSockets, dialable as it is. */
  readonly getPortEndpoint = async (options: { port: number, protocol?: 'http' | 'https' | 'ws' }): Promise<HarnessV1PortEndpoint> => {
    const { url } = await this.client.sandboxes.portUrl(this.sandboxId, options.port)
    return { url: options.protocol === 'ws' ? url.replace(/^http/, 'ws') : url }
  }

  readonly getPortUrl = async (options: { port: number, protocol?: 'http' | 'https' | 'ws' }): Promise<string> => (await this.getPortEndpoint(options)).url

  /** Pauses the sandbox (its files kept, and under gVisor its memory); any later use resumes it. */
  readonly stop = async (): Promise<void> => {
    await this.client.sandboxes.pause(this.sandboxId).catch((err: unknown) => {
      if (!(err instanceof ApiError && (err.status === 409 || err.status === 404 || err.status === 410))) throw err
    })
  }

  readonly destroy = async (): Promise<void> => {
    await this.client.sandboxes.delete(this.sandboxId).catch((err: unknown) => { if (!(err instanceof ApiError && err.status === 404)) throw err })
  }

  /**
   * A new outbound policy, live: `deny-all` is no network; `custom` allows `allowedHosts` (host, host:port, *.domain)
   * through the server's egress proxy, within what the operator lets the key allow. `allow-all` and CIDR lists are
   * refused: this server allows destinations by name, and always walls off private and metadata addresses for user keys.
   */
  readonly setNetworkPolicy = async (policy: HarnessV1NetworkPolicy): Promise<void> => {
    if (policy.mode === 'deny-all') {
      await this.client.sandboxes.update(this.sandboxId, { network: 'none' })
      return
    }
    if (policy.mode === 'allow-all') throw new Error('Interpreter Server does not open a sandbox to every host: give the hosts (mode custom, allowedHosts)')
    if (policy.allowedCIDRs?.length || policy.deniedCIDRs?.length) throw new Error('Interpreter Server allows destinations by host name or address, not by CIDR range: give allowedHosts')
    const hosts = [...policy.allowedHosts ?? []]
    await this.client.sandboxes.update(this.sandboxId, { network: hosts.length ? { allow: hosts } : 'none' })
  }

  /** Any port of the sandbox is reachable through the server: the list is what the harness is told. */
  readonly setPorts = async (ports: ReadonlyArray<number>): Promise<void> => {
    this.ports = [...ports]
  }

  /** The same sandbox without lifecycle or network control: for tools. */
  readonly restricted = (): SandboxSession => new InterpreterSandboxSession({ client: this.client, sandboxId: this.sandboxId })
}

export interface HarnessProviderOptions extends ClientOptions {
  /** What each new sandbox is created with (language, resources, network, env, ...). Idle sandboxes pause by default. */
  sandbox?: CreateSandbox
  /** Ports the sessions say they expose (any port is reachable through the server). */
  ports?: number[]
}

const SESSION_KEY = 'ai-sdk.session'

/**
 * `HarnessV1SandboxProvider` over Interpreter Server. `createSession({ sessionId })` labels the sandbox with the id, so
 * `resumeSession` (from any process) finds it again; `identity` names a snapshot of the key: the first session of an
 * identity runs `onFirstCreate` and is snapshotted, later ones start from the snapshot.
 */
export function createHarnessSandboxProvider (options: HarnessProviderOptions): HarnessV1SandboxProvider {
  const client = new InterpreterClient(options)
  const session = (sandbox: Sandbox) => new InterpreterHarnessSession({ client, sandboxId: sandbox.id, ...(options.ports ? { ports: options.ports } : {}) })
  const base: CreateSandbox = { on_timeout: 'pause', ...options.sandbox }
  const labelled = (sessionId?: string): CreateSandbox => sessionId ? { ...base, metadata: { ...base.metadata, [SESSION_KEY]: sessionId } } : base
  return {
    specificationVersion: 'harness-sandbox-v1',
    providerId: 'interpreter-server',
    createSession: async ({ sessionId, identity, onFirstCreate, abortSignal } = {}) => {
      abortSignal?.throwIfAborted()
      if (identity) {
        const snapshot = `ai-sdk-${createHash('sha256').update(identity).digest('hex').slice(0, 24)}`
        const restored = await client.sandboxes.create({ ...labelled(sessionId), snapshot }).catch((err: unknown) => {
          if (err instanceof ApiError && err.code === 'snapshot_not_found') return null
          throw err
        })
        if (restored) return session(restored)
        const fresh = session(await client.sandboxes.create(labelled(sessionId)))
        await onFirstCreate?.(fresh.restricted(), { ...(abortSignal ? { abortSignal } : {}) })
        await client.sandboxes.snapshot(fresh.id, snapshot).catch((err: unknown) => { if (!(err instanceof ApiError && err.status === 409)) throw err })
        return fresh
      }
      const fresh = session(await client.sandboxes.create(labelled(sessionId)))
      await onFirstCreate?.(fresh.restricted(), { ...(abortSignal ? { abortSignal } : {}) })
      return fresh
    },
    resumeSession: async ({ sessionId }) => {
      const found = (await client.sandboxes.list()).find(s => s.metadata?.[SESSION_KEY] === sessionId)
      if (!found) throw new Error(`no sandbox of this key belongs to harness session ${sessionId}`)
      return session(found)
    }
  }
}
