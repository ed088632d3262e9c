// The TypeScript client: typed REST methods and a WebSocket that reconnects, resumes and iterates events.
import WebSocket from 'ws'
import type { Session, Message } from '../schemas/sessions.js'
import type { Sandbox, Execution, FileEntry, Language, CreateSandbox } from '../schemas/sandboxes.js'
import type { Chunk, Usage } from '../schemas/chat.js'

export interface ClientOptions {
  /** Base URL of the server, e.g. http://127.0.0.1:8000 */
  url: string
  apiKey: string
  /** Retries for refused connections, 429 and 503 (REST), and reconnects (WebSocket). Default 3. */
  maxRetries?: number
  /** First retry delay; doubles each time. Default 500. */
  retryDelayMs?: number
  /** Per-request timeout (REST calls, WebSocket acks). Default 60000. */
  timeoutMs?: number
  debug?: boolean | ((message: string) => void)
}

export class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, readonly type: string, message: string) {
    super(message)
    this.name = 'ApiError'
  }
}

export interface ChatTurn { object: 'chat.turn', session_id: string, run_id: string, messages: Message[], usage: Usage, finish_reason: string }
export interface ChatOptions { sessionId?: string, model?: string, autoRun?: boolean, temperature?: number, maxTokens?: number }
/** One event of a session's log, as the WebSocket delivers it. */
export interface SessionEvent { id: string, event: 'message' | 'run_start' | 'fallback' | 'error' | 'done', data: any }

export interface CommandOptions { cwd?: string, env?: Record<string, string>, timeoutMs?: number, tag?: string }
export interface CommandResult { pid: number, exit_code: number, signal: string | null, status: 'exited' | 'killed' | 'timeout', duration_ms: number, stdout: string, stderr: string, truncated: boolean }
export interface ProcessExit { pid: number, exit_code: number, signal: string | null, status: 'exited' | 'killed' | 'timeout', duration_ms: number }
export interface ProcessInfo { pid: number, cmd: string[], tag: string | null, pty: boolean, running: boolean, output_bytes: number, exit_code?: number, status?: string }

const commandBody = (o: CommandOptions) => ({
  ...(o.cwd ? { cwd: o.cwd } : {}),
  ...(o.env ? { env: o.env } : {}),
  ...(o.timeoutMs !== undefined ? { timeout_ms: o.timeoutMs } : {}),
  ...(o.tag ? { tag: o.tag } : {})
})

/** The events of a Server-Sent Events body. */
async function * sseEvents (body: ReadableStream<Uint8Array>): AsyncIterable<{ id?: string, event: string, data: unknown }> {
  const decoder = new TextDecoder()
  let buffer = ''
  for await (const piece of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(piece, { stream: true })
    let cut: number
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut)
      buffer = buffer.slice(cut + 2)
      let id: string | undefined
      let event = 'message'
      let data = ''
      for (const line of block.split('\n')) {
        if (line.startsWith('id:')) id = line.slice(3).trim()
        else if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data += line.slice(5).trimStart()
      }
      if (data) yield { ...(id !== undefined ? { id } : {}), event, data: JSON.parse(data) }
    }
  }
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

export class InterpreterClient {
  readonly url: string
  private readonly opts: Required<Omit<ClientOptions, 'debug'>> & { debug: (m: string) => void }

  constructor (options: ClientOptions) {
    const debug = options.debug === true ? (m: string) => process.stderr.write(`[interpreter-client] ${m}\n`) : typeof options.debug === 'function' ? options.debug : () => {}
    this.url = options.url.replace(/\/$/, '')
    this.opts = { maxRetries: 3, retryDelayMs: 500, timeoutMs: 60_000, ...options, debug }
  }

  /** One REST call: JSON in and out, the documented error body raised as ApiError, bounded retries. */
  async request<T> (method: string, path: string, body?: unknown, init: { raw?: BodyInit, headers?: Record<string, string>, parse?: 'json' | 'bytes' } = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      let response: Response
      try {
        response = await fetch(`${this.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${this.opts.apiKey}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...init.headers },
          body: init.raw ?? (body === undefined ? undefined : JSON.stringify(body)),
          signal: AbortSignal.timeout(this.opts.timeoutMs)
        })
      } catch (err) {
        if (attempt >= this.opts.maxRetries || (err as Error).name === 'TimeoutError') throw err
        this.opts.debug(`${method} ${path}: ${(err as Error).message}; retrying`)
        await sleep(this.opts.retryDelayMs * 2 ** attempt)
        continue
      }
      if ((response.status === 429 || response.status === 503) && attempt < this.opts.maxRetries) {
        const wait = Number(response.headers.get('retry-after')) * 1000 || this.opts.retryDelayMs * 2 ** attempt
        this.opts.debug(`${method} ${path}: ${response.status}; retrying in ${wait} ms`)
        await sleep(wait)
        continue
      }
      if (!response.ok) {
        const error = await response.json().catch(() => ({})) as { error?: { message?: string, code?: string, type?: string } }
        throw new ApiError(response.status, error.error?.code ?? 'http_error', error.error?.type ?? 'error', error.error?.message ?? `HTTP ${response.status}`)
      }
      if (response.status === 204) return undefined as T
      return (init.parse === 'bytes' ? Buffer.from(await response.arrayBuffer()) : await response.json()) as T
    }
  }

  readonly sessions = {
    create: (body: { title?: string, settings?: Session['settings'], metadata?: Record<string, string> } = {}) => this.request<Session>('POST', '/v1/sessions', body),
    list: (page: { limit?: number, offset?: number } = {}) => this.request<{ data: Session[], has_more: boolean, next_offset: number | null }>('GET', `/v1/sessions?limit=${page.limit ?? 20}&offset=${page.offset ?? 0}`),
    get: (id: string) => this.request<Session>('GET', `/v1/sessions/${id}`),
    update: (id: string, patch: { title?: string, settings?: Session['settings'], metadata?: Record<string, string> }) => this.request<Session>('PATCH', `/v1/sessions/${id}`, patch),
    delete: (id: string) => this.request<void>('DELETE', `/v1/sessions/${id}`),
    messages: (id: string) => this.request<{ data: Message[] }>('GET', `/v1/sessions/${id}/messages?limit=1000`).then(r => r.data)
  }

  chat (content: string | Message[], options: ChatOptions = {}): Promise<ChatTurn> {
    const messages = typeof content === 'string' ? [{ role: 'user', content }] : content
    return this.request<ChatTurn>('POST', '/v1/chat', {
      messages,
      ...(options.sessionId ? { session_id: options.sessionId } : {}),
      ...(options.autoRun !== undefined ? { auto_run: options.autoRun } : {}),
      config: { llm: { ...(options.model ? { model: options.model } : {}), ...(options.temperature !== undefined ? { temperature: options.temperature } : {}), ...(options.maxTokens ? { max_tokens: options.maxTokens } : {}) } }
    })
  }

  models (): Promise<string[]> {
    return this.request<{ data: Array<{ id: string }> }>('GET', '/v1/models').then(r => r.data.map(m => m.id))
  }

  readonly sandboxes = {
    create: (body: CreateSandbox = {}) => this.request<Sandbox>('POST', '/v1/sandboxes', body),
    list: () => this.request<{ data: Sandbox[] }>('GET', '/v1/sandboxes').then(r => r.data),
    get: (id: string) => this.request<Sandbox>('GET', `/v1/sandboxes/${id}`),
    delete: (id: string) => this.request<void>('DELETE', `/v1/sandboxes/${id}`),
    execute: (id: string, code: string, options: { language?: Language, timeoutMs?: number } = {}) =>
      this.request<Execution>('POST', `/v1/sandboxes/${id}/execute`, { code, ...(options.language ? { language: options.language } : {}), ...(options.timeoutMs ? { timeout_ms: options.timeoutMs } : {}) }),
    interrupt: (id: string) => this.request<{ interrupted: boolean }>('POST', `/v1/sandboxes/${id}/interrupt`),
    update: (id: string, patch: { timeout_s?: number, on_timeout?: 'remove' | 'pause', network?: CreateSandbox['network'] }) => this.request<Sandbox>('PATCH', `/v1/sandboxes/${id}`, patch),
    pause: (id: string) => this.request<Sandbox>('POST', `/v1/sandboxes/${id}/pause`),
    resume: (id: string) => this.request<Sandbox & { state_lost?: boolean }>('POST', `/v1/sandboxes/${id}/resume`),
    snapshot: (id: string, name: string) => this.request<unknown>('POST', `/v1/sandboxes/${id}/snapshots`, { name }),
    /** A command to its end: its output and exit. `cmd` as a string runs through bash -c; as an array, as is. */
    run: (id: string, cmd: string | string[], options: CommandOptions & { input?: string } = {}) =>
      this.request<CommandResult>('POST', `/v1/sandboxes/${id}/commands`, { cmd, ...commandBody(options), ...(options.input !== undefined ? { input: options.input } : {}) }),
    /** A command in the background (with a stdin pipe when asked): the process. Follow it with `output`. */
    spawn: (id: string, cmd: string | string[], options: CommandOptions & { stdin?: boolean, pty?: { cols: number, rows: number } } = {}) =>
      this.request<ProcessInfo>('POST', `/v1/sandboxes/${id}/commands`, { cmd, background: true, ...commandBody(options), ...(options.stdin ? { stdin: true } : {}), ...(options.pty ? { pty: options.pty } : {}) }),
    process: (id: string, pid: number) => this.request<ProcessInfo>('GET', `/v1/sandboxes/${id}/processes/${pid}`),
    stdin: (id: string, pid: number, data: string | Uint8Array, eof = false) =>
      this.request<void>('POST', `/v1/sandboxes/${id}/processes/${pid}/stdin`, typeof data === 'string' ? { data, eof } : { data: Buffer.from(data).toString('base64'), encoding: 'base64', eof }),
    signal: (id: string, pid: number, signal: 'SIGINT' | 'SIGTERM' | 'SIGKILL' | 'SIGHUP' = 'SIGTERM') => this.request<void>('POST', `/v1/sandboxes/${id}/processes/${pid}/signal`, { signal }),
    /** Follows a process's output from `offset` (bytes, each stream's as it came) until it exits; resolves with its exit. */
    output: (id: string, pid: number, onOutput: (stream: 'stdout' | 'stderr' | 'pty', data: Buffer) => void, options: { offset?: number, signal?: AbortSignal } = {}) =>
      this.followOutput(id, pid, onOutput, options),
    /** A URL of a port inside the sandbox that needs no key until it expires (http; use ws: for WebSockets). */
    portUrl: (id: string, port: number, expiresIn = 3600) => this.request<{ url: string, path: string, expires_at: string, host_url?: string }>('POST', `/v1/sandboxes/${id}/ports/${port}/url`, { expires_in: expiresIn }),
    /** The workspace (/home/user) as a tar archive. */
    archive: (id: string) => this.request<Buffer>('GET', `/v1/sandboxes/${id}/archive`, undefined, { parse: 'bytes' }),
    /** Unpacks a tar archive into a workspace directory (the workspace itself by default). */
    unpack: (id: string, tar: Uint8Array, path = '') => this.request<{ path: string, size: number }>('PUT', `/v1/sandboxes/${id}/archive?path=${encodeURIComponent(path)}`, undefined, { raw: new Uint8Array(tar), headers: { 'content-type': 'application/x-tar' } }),
    files: {
      list: (id: string, path = '') => this.request<{ data: FileEntry[] }>('GET', `/v1/sandboxes/${id}/files?path=${encodeURIComponent(path)}`).then(r => r.data),
      upload: (id: string, path: string, content: Buffer | string) => this.request<{ path: string, size: number }>('PUT', `/v1/sandboxes/${id}/files/${path}`, undefined, { raw: typeof content === 'string' ? content : new Uint8Array(content), headers: { 'content-type': 'application/octet-stream' } }),
      download: (id: string, path: string) => this.request<Buffer>('GET', `/v1/sandboxes/${id}/files/${path}`, undefined, { parse: 'bytes' }),
      delete: (id: string, path: string) => this.request<void>('DELETE', `/v1/sandboxes/${id}/files/${path}`)
    }
  }

  private async followOutput (id: string, pid: number, onOutput: (stream: 'stdout' | 'stderr' | 'pty', data: Buffer) => void, options: { offset?: number, signal?: AbortSignal }): Promise<ProcessExit> {
    let offset = options.offset ?? 0
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(`${this.url}/v1/sandboxes/${id}/processes/${pid}/output?encoding=base64&offset=${offset}`, {
        headers: { authorization: `Bearer ${this.opts.apiKey}`, accept: 'text/event-stream' },
        ...(options.signal ? { signal: options.signal } : {})
      })
      if (!response.ok) {
        const error = await response.json().catch(() => ({})) as { error?: { message?: string, code?: string, type?: string } }
        throw new ApiError(response.status, error.error?.code ?? 'http_error', error.error?.type ?? 'error', error.error?.message ?? `HTTP ${response.status}`)
      }
      for await (const event of sseEvents(response.body!)) {
        if (event.event === 'output') {
          const chunk = event.data as { stream: 'stdout' | 'stderr' | 'pty', data: string }
          const bytes = Buffer.from(chunk.data, 'base64')
          offset = Number(event.id ?? offset + bytes.length)
          onOutput(chunk.stream, bytes)
        } else if (event.event === 'exit') {
          return event.data as ProcessExit
        } else if (event.event === 'error') {
          const error = (event.data as { error: { code: string, type: string, message: string } }).error
          if (error.code !== 'slow_consumer') throw new ApiError(500, error.code, error.type, error.message)
        }
      }
      // The stream ended without an exit (a slow consumer, a server going away): resume from the last offset.
      if (attempt >= this.opts.maxRetries) throw new Error(`the output of process ${pid} ended without its exit`)
    }
  }

  /** Opens a WebSocket attached to a session (a new one without `sessionId`). */
  async connect (sessionId?: string): Promise<SessionSocket> {
    const socket = new SessionSocket(this.url.replace(/^http/, 'ws') + '/v1/ws', this.opts)
    await socket.open(sessionId)
    return socket
  }
}

/**
 * A WebSocket attached to one session. It pings the server, reconnects with backoff when the connection
 * drops, and then resumes after the last event it delivered, so `events()` yields each event exactly once.
 */
/** Whether event id `a` (a Redis stream id, `ms-seq`) comes after `b`. */
function after (a: string, b: string): boolean {
  if (!/^\d+-\d+$/.test(a) || !/^\d+-\d+$/.test(b)) return true
  const [am, as] = a.split('-').map(BigInt)
  const [bm, bs] = b.split('-').map(BigInt)
  return am! > bm! || (am === bm && as! > bs!)
}

export class SessionSocket {
  sessionId = ''
  lastEventId: string | null = null
  private ws: WebSocket | null = null
  private readonly queue: SessionEvent[] = []
  private wake: (() => void) | null = null
  private pendingAcks: Array<{ of: string, resolve: (f: any) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }> = []
  private closedByUser = false
  private failure: Error | null = null
  private heartbeat: NodeJS.Timeout | null = null

  constructor (private readonly url: string, private readonly opts: Required<Omit<ClientOptions, 'debug'>> & { debug: (m: string) => void }) {}

  async open (sessionId?: string): Promise<void> {
    const ws = new WebSocket(this.url, ['interpreter.v1'], { headers: { authorization: `Bearer ${this.opts.apiKey}` } })
    this.ws = ws
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve())
      ws.once('error', reject)
      ws.once('unexpected-response', (_req, res) => reject(new ApiError(res.statusCode ?? 0, 'websocket_refused', 'error', `WebSocket refused with HTTP ${res.statusCode}`)))
    })
    ws.on('message', (data) => this.receive(JSON.parse(String(data))))
    ws.on('close', () => { void this.onClose(ws) })
    ws.on('error', (err) => this.opts.debug(`socket error: ${err.message}`))
    let answered = true
    ws.on('pong', () => { answered = true })
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.heartbeat = setInterval(() => {
      if (!answered) { this.opts.debug('no pong: reconnecting'); ws.terminate(); return }
      answered = false
      ws.ping()
    }, Math.max(1000, Math.min(15_000, this.opts.timeoutMs / 2)))
    const hello = this.expect('hello')
    ws.send(JSON.stringify({ type: 'hello', ...(sessionId || this.sessionId ? { session_id: sessionId ?? this.sessionId } : {}) }))
    const answer = await hello
    this.sessionId = answer.session_id
    if (this.lastEventId) {
      this.send({ type: 'resume', after: this.lastEventId })
    } else {
      this.lastEventId = answer.last_event_id
    }
  }

  private receive (frame: any): void {
    if (frame.type === 'event') {
      const event = frame as SessionEvent & { type: string }
      // A resume replays from the id it names; an event the old live stream delivered meanwhile may come again.
      if (this.lastEventId && !after(event.id, this.lastEventId)) return
      this.lastEventId = event.id
      this.queue.push({ id: event.id, event: event.event, data: event.data })
      this.wake?.()
      return
    }
    const waiting = this.pendingAcks.findIndex(p => p.of === (frame.type === 'ack' ? frame.of : frame.type === 'error' ? frame.of : frame.type))
    if (waiting >= 0) {
      const [pending] = this.pendingAcks.splice(waiting, 1)
      clearTimeout(pending.timer)
      if (frame.type === 'error') pending.reject(new ApiError(400, frame.error.code, frame.error.type, frame.error.message))
      else pending.resolve(frame)
    } else if (frame.type === 'error') {
      this.opts.debug(`server error: ${frame.error.message}`)
    }
  }

  private async onClose (ws: WebSocket): Promise<void> {
    if (ws !== this.ws) return
    if (this.heartbeat) clearInterval(this.heartbeat)
    if (this.closedByUser) return
    for (let attempt = 0; attempt < this.opts.maxRetries; attempt++) {
      await sleep(this.opts.retryDelayMs * 2 ** attempt)
      try {
        this.opts.debug(`reconnecting (attempt ${attempt + 1}), resuming after ${this.lastEventId}`)
        await this.open(this.sessionId)
        return
      } catch (err) {
        this.opts.debug(`reconnect failed: ${(err as Error).message}`)
      }
    }
    this.failure = new Error(`the WebSocket closed and ${this.opts.maxRetries} reconnects failed`)
    this.wake?.()
  }

  private send (message: object): void {
    this.ws?.send(JSON.stringify(message))
  }

  private expect (of: string): Promise<any> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pendingAcks = this.pendingAcks.filter(p => p.timer !== timer)
        reject(new Error(`no answer to ${of} within ${this.opts.timeoutMs} ms`))
      }, this.opts.timeoutMs)
      this.pendingAcks.push({ of, resolve, reject, timer })
    })
  }

  private call (message: { type: string } & Record<string, unknown>): Promise<any> {
    const answer = this.expect(message.type)
    this.send(message)
    return answer
  }

  chat (content: string, options: { model?: string, autoRun?: boolean } = {}): Promise<{ run_id: string }> {
    return this.call({ type: 'chat', content, ...(options.model ? { model: options.model } : {}), ...(options.autoRun !== undefined ? { auto_run: options.autoRun } : {}) })
  }

  execute (language: Language, code: string): Promise<{ run_id: string }> { return this.call({ type: 'execute', language, code }) }
  confirm (codeId: string, approve: boolean): Promise<unknown> { return this.call({ type: 'confirm', code_id: codeId, approve }) }
  interrupt (): Promise<{ interrupted: boolean }> { return this.call({ type: 'interrupt' }) }

  /** Every event of the session from now on (across reconnects), exactly once, in order. */
  async * events (): AsyncIterableIterator<SessionEvent> {
    for (;;) {
      const next = this.queue.shift()
      if (next) { yield next; continue }
      if (this.failure) throw this.failure
      if (this.closedByUser) return
      await new Promise<void>(resolve => { this.wake = resolve })
      this.wake = null
    }
  }

  /** Events until the `done` of `runId`. */
  async untilDone (runId: string): Promise<SessionEvent[]> {
    const seen: SessionEvent[] = []
    for await (const event of this.events()) {
      seen.push(event)
      if (event.event === 'done' && event.data?.run_id === runId) break
    }
    return seen
  }

  close (): void {
    this.closedByUser = true
    if (this.heartbeat) clearInterval(this.heartbeat)
    this.ws?.close()
    this.wake?.()
  }
}

export type { Chunk, Session, Message, Sandbox, Execution, FileEntry, CreateSandbox }
