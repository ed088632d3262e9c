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
    files: {
      list: (id: string, path = '') => this.request<{ data: FileEntry[] }>('GET', `/v1/sandboxes/${id}/files?path=${encodeURIComponent(path)}`).then(r => r.data),
      upload: (id: string, path: string, content: Buffer | string) => this.request<{ path: string, size: number }>('PUT', `/v1/sandboxes/${id}/files/${path}`, undefined, { raw: typeof content === 'string' ? content : new Uint8Array(content), headers: { 'content-type': 'application/octet-stream' } }),
      download: (id: string, path: string) => this.request<Buffer>('GET', `/v1/sandboxes/${id}/files/${path}`, undefined, { parse: 'bytes' }),
      delete: (id: string, path: string) => this.request<void>('DELETE', `/v1/sandboxes/${id}/files/${path}`)
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

export type { Chunk, Session, Message, Sandbox, Execution, FileEntry }
