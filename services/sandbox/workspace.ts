// The workspace verbs (issue 24): commands in the foreground or background, their output followed by offset, stdin,
// signals, terminals, directory watchers and connections to ports inside a sandbox. Every outward protocol (REST, SSE,
// WebSocket, and the E2B and agent-SDK adapters after them) calls these; the agent (sandbox/agent.py) keeps the process
// table, the PTYs and the watchers, and relays port connections, all over its own channel: the sandbox keeps network
// `none`.
import { createHmac, timingSafeEqual } from 'node:crypto'
import { StringDecoder } from 'node:string_decoder'
import { Agent as HttpAgent, type AgentOptions, type ClientRequestArgs } from 'node:http'
import type { Duplex } from 'node:stream'
import { connect, type Socket } from 'node:net'
import { join, posix } from 'node:path'
import { AppError } from '../errors.js'
import { AgentGone } from './agent-client.js'
import type { SandboxService } from './service.js'
import type { FollowEvent, ProcessExit, ProcessInfo, SandboxHandle, Subscription, WatchEvent } from './sandbox.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'
import type { Principal } from '../auth.js'

export interface WorkspaceOptions {
  /** Processes one sandbox may run at once (kernels aside): SANDBOX_MAX_PROCESSES. */
  maxProcesses: number
  /** Terminals one sandbox may have open at once: SANDBOX_MAX_TERMINALS. */
  maxTerminals: number
  /** Watchers one sandbox may have at once: SANDBOX_MAX_WATCHERS. */
  maxWatchers: number
  /** How much of a process's latest output is kept for readers, and the most a foreground command returns. */
  outputLimit: number
  /** The longest a signed port URL may live. */
  maxUrlTtlS: number
  /** Signs port URLs; every replica must read the same (the store's shared secret unless configured). */
  secret: () => Promise<string>
  observeProcess?: (kind: 'command' | 'background' | 'terminal') => void
  observeProxied?: (direction: 'in' | 'out', bytes: number) => void
}

export interface CommandSpec {
  cmd: string | string[]
  cwd?: string
  env?: Record<string, string>
  timeout_ms?: number
  tag?: string
}

export interface CommandResult extends ProcessExit {
  pid: number
  stdout: string
  stderr: string
  truncated: boolean
}

export interface PortToken { sandbox: string, port: number, owner: string, expires: number }

/** The sandbox user's home: the workspace the files API reaches. */
export const HOME = '/home/user'

/**
 * A path a client wrote (absolute, `~`-relative, or relative to `cwd`) as a path relative to the workspace ('' is the
 * workspace itself); null when it leads outside /home/user or holds a NUL. Adapters whose clients name absolute paths
 * (E2B, Open Terminal, the tool server) turn the null into their own error.
 */
export function inWorkspace (path: string, cwd = HOME): string | null {
  if (typeof path !== 'string' || path.includes('\0')) return null
  const expanded = path === '~' ? HOME : path.startsWith('~/') ? HOME + path.slice(1) : path
  const full = posix.normalize(expanded.startsWith('/') ? expanded : posix.join(cwd, expanded)).replace(/\/+$/, '') || '/'
  if (full === HOME) return ''
  return full.startsWith(HOME + '/') ? full.slice(HOME.length + 1) : null
}

/** A workspace-relative path as the absolute path the sandbox sees. */
export const absolute = (rel: string): string => rel === '' || rel === '.' ? HOME : `${HOME}/${rel}`

/** argv for a command given as one shell string or as argv. */
export const argvOf = (cmd: string | string[]): string[] => typeof cmd === 'string' ? ['bash', '-c', cmd] : cmd

const TERMINAL_REPLAY = 64 * 1024

export class Workspace {
  constructor (private readonly sandboxes: SandboxService, private readonly opts: WorkspaceOptions) {}

  private async handle (record: SandboxRecord): Promise<SandboxHandle> {
    const handle = await this.sandboxes.handle(record)
    await this.sandboxes.touch(record).catch(() => {})
    return handle
  }

  private async guard<T> (record: SandboxRecord, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof AgentGone) throw new AppError(410, 'sandbox_lost', 'The sandbox stopped; its processes are gone', 'sandbox_error')
      throw err
    }
  }

  private spawnOptions (spec: CommandSpec) {
    return {
      cmd: argvOf(spec.cmd),
      ...(spec.cwd ? { cwd: spec.cwd } : {}),
      ...(spec.env ? { env: spec.env } : {}),
      ...(spec.timeout_ms ? { timeoutMs: spec.timeout_ms } : {}),
      ...(spec.tag ? { tag: spec.tag } : {}),
      keepBytes: this.opts.outputLimit,
      maxProcesses: this.opts.maxProcesses,
      maxTerminals: this.opts.maxTerminals
    }
  }

  /**
   * Runs a command to its end: stdout and stderr (together at most the output limit, then `truncated`), the exit.
   * `input` is written to its stdin, which then closes. `onEvent` sees the output as it comes.
   */
  async run (record: SandboxRecord, spec: CommandSpec & { input?: Buffer }, onEvent?: (e: FollowEvent) => void, signal?: AbortSignal): Promise<CommandResult> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => {
      let pid = 0
      const text = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') }
      const out = { stdout: '', stderr: '' }
      let truncated = false
      let exit: ProcessExit | undefined
      // Touched meanwhile, every half idle timeout, so that no reaper takes a sandbox under a long command.
      const renewal = setInterval(() => { this.sandboxes.touch(record).catch(() => {}) }, Math.max(1000, record.timeout_s * 500))
      try {
        // Started and followed in one request to the agent: its first answer carries the pid.
        const sub = await handle.spawnFollowing({ ...this.spawnOptions(spec), stdin: spec.input !== undefined }, this.opts.outputLimit, (e) => {
          if (e.type === 'proc_follow') pid = e.pid
          else if (e.type === 'proc_output') {
            const stream = e.stream === 'stderr' ? 'stderr' : 'stdout'
            out[stream] += text[stream].write(Buffer.from(e.data, 'base64'))
            if (e.truncated) truncated = true
          } else if (e.type === 'proc_exit') {
            const { id: _id, type: _type, ...rest } = e
            exit = rest
          }
          onEvent?.(e)
        })
        this.opts.observeProcess?.('command')
        const stop = () => { handle.signal(pid, 'SIGKILL').catch(() => {}) }
        signal?.addEventListener('abort', stop, { once: true })
        if (spec.input !== undefined) await handle.input(pid, spec.input, true)
        await sub.done.finally(() => signal?.removeEventListener('abort', stop))
      } finally {
        clearInterval(renewal)
      }
      out.stdout += text.stdout.end()
      out.stderr += text.stderr.end()
      if (truncated) out.stderr += `\n[output truncated: more than ${this.opts.outputLimit} bytes]\n`
      if (!exit) throw new AppError(502, 'process_lost', 'The command\'s end was not reported', 'sandbox_error')
      return { ...exit, pid, ...out, truncated }
    })
  }

  /** Starts a command in the background (on a terminal of the given size with `pty`); its entry in the process table. */
  async spawn (record: SandboxRecord, spec: CommandSpec & { stdin?: boolean, pty?: { cols: number, rows: number } }): Promise<ProcessInfo> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => {
      const pid = await handle.spawn({ ...this.spawnOptions(spec), stdin: spec.stdin === true, ...(spec.pty ? { pty: spec.pty } : {}) })
      this.opts.observeProcess?.(spec.pty ? 'terminal' : 'background')
      return await this.process(record, pid, handle)
    })
  }

  /**
   * Starts a command (on a terminal of the given size with `pty`) and follows it from its first byte in one request:
   * `onEvent` sees proc_follow (its pid) first, then all its output and its exit. The process outlives `stop()`.
   */
  async start (record: SandboxRecord, spec: CommandSpec & { stdin?: boolean, pty?: { cols: number, rows: number } }, onEvent: (e: FollowEvent) => void): Promise<Subscription> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => {
      const sub = await handle.spawnFollowing({ ...this.spawnOptions(spec), stdin: spec.stdin === true, ...(spec.pty ? { pty: spec.pty } : {}) }, 0, onEvent)
      this.opts.observeProcess?.(spec.pty ? 'terminal' : 'background')
      return sub
    })
  }

  /** Opens a terminal: a shell (or `cmd`) on a PTY of the given size. */
  async terminal (record: SandboxRecord, spec: { cmd?: string[], cwd?: string, env?: Record<string, string>, cols: number, rows: number }): Promise<number> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => {
      const pid = await handle.spawn({
        ...this.spawnOptions({ cmd: spec.cmd ?? ['bash', '-i'], ...(spec.cwd ? { cwd: spec.cwd } : {}), ...(spec.env ? { env: spec.env } : {}) }),
        pty: { cols: spec.cols, rows: spec.rows }
      })
      this.opts.observeProcess?.('terminal')
      return pid
    })
  }

  async processes (record: SandboxRecord): Promise<ProcessInfo[]> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => await handle.processes())
  }

  async process (record: SandboxRecord, pid: number, known?: SandboxHandle): Promise<ProcessInfo> {
    const handle = known ?? await this.handle(record)
    const found = (await this.guard(record, async () => await handle.processes())).find(p => p.pid === pid)
    if (!found) throw new AppError(404, 'process_not_found', `No process ${pid} in this sandbox`)
    return found
  }

  /**
   * Follows a process's output from an offset (or its last `tail` bytes; a terminal reattached gets its recent screen),
   * then live until it exits or `stop()`.
   */
  async follow (record: SandboxRecord, pid: number, from: { offset?: number, tail?: number }, onEvent: (e: FollowEvent) => void): Promise<Subscription> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => await handle.follow(pid, from, onEvent))
  }

  /**
   * What a process's output holds now, from an offset (or its last `tail` bytes): followed until the end it reported
   * then (or its exit), not live.
   */
  async kept (record: SandboxRecord, pid: number, from: { offset?: number, tail?: number }): Promise<{ offset: number, end: number, output: Array<Extract<FollowEvent, { type: 'proc_output' }>> }> {
    const output: Array<Extract<FollowEvent, { type: 'proc_output' }>> = []
    let start = 0
    let end = 0
    let reached!: () => void
    const caughtUp = new Promise<void>(resolve => { reached = resolve })
    const sub = await this.follow(record, pid, from, (e) => {
      if (e.type === 'proc_follow') { start = e.offset; end = e.end; if (end <= start) reached() }
      if (e.type === 'proc_output') { output.push(e); if (e.offset + Buffer.from(e.data, 'base64').length >= end) reached() }
      if (e.type === 'proc_exit') reached()
    })
    await Promise.race([caughtUp, sub.done])
    await sub.stop()
    return { offset: start, end, output }
  }

  /** Waits up to `ms` for a process to end (less when it ends first); its entry then. */
  async wait (record: SandboxRecord, pid: number, ms: number): Promise<ProcessInfo> {
    const info = await this.process(record, pid)
    if (!info.running || ms <= 0) return info
    let ended!: () => void
    const over = new Promise<void>(resolve => { ended = resolve })
    const timer = setTimeout(ended, ms)
    const sub = await this.follow(record, pid, { offset: info.output_bytes }, (e) => { if (e.type === 'proc_exit') ended() })
    await Promise.race([over, sub.done])
    clearTimeout(timer)
    await sub.stop()
    return await this.process(record, pid)
  }

  /** Follows a terminal, replaying its recent screen first. */
  async attach (record: SandboxRecord, pid: number, onEvent: (e: FollowEvent) => void): Promise<Subscription> {
    return await this.follow(record, pid, { tail: TERMINAL_REPLAY }, onEvent)
  }

  async input (record: SandboxRecord, pid: number, data: Buffer, eof = false): Promise<void> {
    const handle = await this.handle(record)
    await this.guard(record, async () => await handle.input(pid, data, eof))
  }

  async signal (record: SandboxRecord, pid: number, signal: string): Promise<void> {
    const handle = await this.handle(record)
    await this.guard(record, async () => await handle.signal(pid, signal))
  }

  async resize (record: SandboxRecord, pid: number, cols: number, rows: number): Promise<void> {
    const handle = await this.handle(record)
    await this.guard(record, async () => await handle.resize(pid, cols, rows))
  }

  async watch (record: SandboxRecord, path: string, recursive: boolean, onEvent: (e: WatchEvent) => void): Promise<Subscription> {
    const handle = await this.handle(record)
    return await this.guard(record, async () => await handle.watch(path, recursive, this.opts.maxWatchers, onEvent))
  }

  /**
   * A byte stream to `port` inside the sandbox: a connection of its own to the agent's socket, which the agent turns
   * into a relay to 127.0.0.1:port. 502 `port_closed` when nothing listens there.
   */
  async connectPort (record: SandboxRecord, port: number): Promise<Socket> {
    await this.handle(record)
    const dir = this.sandboxes.agentDirOf(record)
    if (!dir) {
      throw new AppError(502, 'ports_unavailable', 'This sandbox\'s host offers no direct channel to its agent (a remote Docker host, or gVisor without --host-uds): its ports cannot be reached', 'sandbox_error')
    }
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(join(dir, 'agent.sock'))
      s.once('connect', () => { s.off('error', reject); resolve(s) })
      s.once('error', (err) => reject(new AppError(502, 'port_unreachable', `The sandbox's agent did not answer: ${err.message}`, 'sandbox_error')))
    })
    socket.setNoDelay(true)
    socket.write(JSON.stringify({ op: 'connect', id: 'port', port }) + '\n')
    // The agent greets a new channel (`ready`) before it reads the request: the answer is the line with our id.
    let parsed: { id?: string, type?: string, code?: string, value?: string } = {}
    let rest: Buffer = Buffer.alloc(0)
    for (let lines = 0; parsed.id !== 'port'; lines++) {
      const answer = await readLine(socket, 10_000, rest).catch((err: Error) => {
        socket.destroy()
        throw new AppError(502, 'port_unreachable', `The sandbox's agent did not answer: ${err.message}`, 'sandbox_error')
      })
      rest = answer.rest
      try {
        parsed = JSON.parse(answer.line) as typeof parsed
      } catch {
        parsed = { id: 'port', type: 'error', value: 'an unreadable answer' }
      }
      if (lines > 8) parsed = { id: 'port', type: 'error', value: 'no answer to connect' }
    }
    if (parsed.type !== 'done') {
      socket.destroy()
      throw new AppError(502, parsed.code === 'port_closed' ? 'port_closed' : 'port_unreachable', parsed.value ?? `port ${port} cannot be reached`, 'sandbox_error', { port })
    }
    if (rest.length) socket.unshift(rest)
    socket.once('close', () => {
      this.opts.observeProxied?.('in', socket.bytesWritten)
      this.opts.observeProxied?.('out', socket.bytesRead)
    })
    return socket
  }

  /** A token that lets a browser reach one port of one sandbox without a key, until it expires. */
  async signPort (record: SandboxRecord, port: number, expiresInS: number): Promise<{ token: string, expires_at: string }> {
    if (expiresInS > this.opts.maxUrlTtlS) throw new AppError(400, 'validation_error', `body/expires_in must be at most ${this.opts.maxUrlTtlS}`)
    const expires = Math.floor(Date.now() / 1000) + expiresInS
    const payload = Buffer.from(JSON.stringify({ s: record.id, p: port, o: record.owner, e: expires })).toString('base64url')
    return { token: `${payload}.${await this.mac(payload)}`, expires_at: new Date(expires * 1000).toISOString() }
  }

  /** What a signed port token grants; 401 when it is malformed, tampered with or expired. */
  async verifyPort (token: string): Promise<PortToken> {
    const refuse = (why: string) => new AppError(401, 'invalid_port_token', `This port URL is not valid: ${why}`, 'authentication_error')
    const [payload, mac, extra] = token.split('.')
    if (!payload || !mac || extra !== undefined) throw refuse('malformed')
    const want = Buffer.from(await this.mac(payload))
    const got = Buffer.from(mac)
    if (want.length !== got.length || !timingSafeEqual(want, got)) throw refuse('its signature does not match')
    let claims: { s?: unknown, p?: unknown, o?: unknown, e?: unknown }
    try {
      claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as typeof claims
    } catch {
      throw refuse('malformed')
    }
    if (typeof claims.s !== 'string' || typeof claims.p !== 'number' || typeof claims.o !== 'string' || typeof claims.e !== 'number') throw refuse('malformed')
    if (claims.e * 1000 <= Date.now()) throw refuse('it has expired')
    return { sandbox: claims.s, port: claims.p, owner: claims.o, expires: claims.e }
  }

  /**
   * The host name label of a sandbox's port (PORT_HOST_DOMAIN): `<port>-<the id in hex>`, since ids are case-sensitive
   * and host names are not (at most 5 + 1 + 2 x 24 characters: a label may have 63).
   */
  static hostLabel (sandboxId: string, port: number): string {
    return `${port}-${Buffer.from(sandboxId).toString('hex')}`
  }

  /** The sandbox and port a host label names, or null. */
  static parseHostLabel (label: string): { sandbox: string, port: number } | null {
    const m = /^(\d{1,5})-((?:[0-9a-f]{2}){1,24})$/.exec(label)
    const port = Number(m?.[1])
    if (!m || port < 1 || port > 65535) return null
    return { sandbox: Buffer.from(m[2]!, 'hex').toString(), port }
  }

  /**
   * A token that opens one sandbox's data plane (its processes, files and ports) and nothing else: what E2B's SDKs
   * send as X-Access-Token and E2B-Traffic-Access-Token. Derived, so every replica knows it; it dies with the sandbox.
   */
  async accessToken (record: SandboxRecord): Promise<string> {
    return createHmac('sha256', await this.opts.secret()).update(`sandbox-access\n${record.id}\n${record.owner}`).digest('base64url')
  }

  async isAccessToken (record: SandboxRecord, token: string | undefined): Promise<boolean> {
    if (!token) return false
    const want = Buffer.from(await this.accessToken(record))
    const got = Buffer.from(token)
    return want.length === got.length && timingSafeEqual(want, got)
  }

  /** The principal a valid port token acts as: the sandbox's owner, for this sandbox only. */
  static principalOf (token: PortToken): Principal {
    return { name: token.owner, role: 'user' }
  }

  private async mac (payload: string): Promise<string> {
    return createHmac('sha256', await this.opts.secret()).update(`port-url\n${payload}`).digest('base64url')
  }
}

/**
 * The first line a socket sends (without its newline; `before`: bytes it sent already) and whatever came after it.
 * Read in paused mode ('readable'), so that once the listener is gone the socket is as new: the next consumer's
 * 'data' listener starts the flow (an explicit pause() would keep it stopped).
 */
function readLine (socket: Socket, timeoutMs: number, before: Buffer = Buffer.alloc(0)): Promise<{ line: string, rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffer = before
    const held = before.indexOf(10)
    if (held >= 0) return resolve({ line: before.subarray(0, held).toString(), rest: before.subarray(held + 1) })
    const timer = setTimeout(() => done(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    const onReadable = () => {
      for (let chunk: Buffer | null; (chunk = socket.read() as Buffer | null) !== null;) {
        buffer = Buffer.concat([buffer, chunk])
        const newline = buffer.indexOf(10)
        if (newline >= 0) return done(null, { line: buffer.subarray(0, newline).toString(), rest: buffer.subarray(newline + 1) })
        if (buffer.length > 64 * 1024) return done(new Error('an answer without an end'))
      }
    }
    const onEnd = () => done(new Error('the connection closed'))
    const done = (err: Error | null, value?: { line: string, rest: Buffer }) => {
      clearTimeout(timer)
      socket.off('readable', onReadable)
      socket.off('end', onEnd)
      socket.off('error', onEnd)
      if (err) reject(err)
      else resolve(value!)
    }
    socket.on('readable', onReadable)
    socket.on('end', onEnd)
    socket.on('error', onEnd)
  })
}

/**
 * Keeps HTTP connections to sandbox ports open between requests (keep-alive), one pool per sandbox and port: a
 * request to an app that keeps its connections reuses a relay instead of opening a new one through the agent. A
 * request names its sandbox in `sandbox` (the record) and its port in `port`; `host` is the sandbox id (the pool's name).
 */
export class PortAgent extends HttpAgent {
  constructor (private readonly connectPort: (record: SandboxRecord, port: number) => Promise<Socket>, options: AgentOptions = {}) {
    // Each connection is a relay of two threads in the sandbox's agent, counted against its pids limit: at most 16
    // at once per port (more requests wait for one), 4 kept idle.
    super({ keepAlive: true, maxSockets: 16, maxFreeSockets: 4, timeout: 30_000, ...options })
  }

  // Node calls this with a callback for connections made asynchronously.
  override createConnection (options: ClientRequestArgs, done?: (err: Error | null, stream: Duplex) => void): undefined {
    const { sandbox } = options as ClientRequestArgs & { sandbox?: SandboxRecord }
    const answer = done ?? (() => {})
    if (!sandbox) {
      answer(new Error('a port request without its sandbox'), undefined as unknown as Duplex)
      return undefined
    }
    this.connectPort(sandbox, Number(options.port)).then(socket => answer(null, socket), (err: Error) => answer(err, undefined as unknown as Duplex))
    return undefined
  }
}
