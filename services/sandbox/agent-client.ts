import { EventEmitter } from 'node:events'
import { PassThrough, type Duplex, type Readable } from 'node:stream'
import type { Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import type Docker from 'dockerode'
import { Compile } from 'typebox/compile'
import { AppError } from '../errors.js'
import { AgentEventSchema, type AgentEvent, type AgentOp, type AgentRequest } from '../../schemas/agent.js'

export type { AgentEvent }

/** With AGENT_PROTOCOL_CHECK=1 (the tests), every event is checked against the typed protocol (schemas/agent.ts). */
let eventChecks: Map<string, ReturnType<typeof Compile>> | false | undefined
function checkEvent (event: AgentEvent): void {
  // Decided once, on the first event (false, not null: ??= would ask again on every event).
  if (eventChecks === undefined) {
    eventChecks = process.env.AGENT_PROTOCOL_CHECK === '1' && new Map(AgentEventSchema.anyOf.map(schema => [schema.properties.type.const as string, Compile(schema)]))
  }
  if (!eventChecks) return
  const check = eventChecks.get(event.type)
  if (check?.Check(event)) return
  const problems = check ? [...check.Errors(event)].slice(0, 3).map(e => `${e.instancePath || '/'} ${e.message}`).join('; ') : 'an unknown event type'
  // Loud on purpose: in the tests a protocol violation is an uncaught error that fails the suite.
  queueMicrotask(() => { throw new Error(`agent protocol violation: ${JSON.stringify(event).slice(0, 300)}: ${problems}`) })
}
type Pending = { onEvent: (e: AgentEvent) => void, resolve: () => void, reject: (e: Error) => void, started: boolean, timer?: NodeJS.Timeout }

/** How long a non-execute call (files, interrupt, restart, env) may go without a word from the agent. */
export const AGENT_CALL_IDLE_MS = 30_000

const TERMINAL = new Set(['end', 'done', 'pong', 'files', 'spawned', 'processes', 'kernels', 'proc_exit'])
// Request ids: unique among every replica talking to one agent (a random prefix per process), and cheap (a counter).
const ID_PREFIX = randomBytes(6).toString('base64url')
let idCount = 0
const nextId = () => `${ID_PREFIX}${(idCount++).toString(36)}`

export class AgentGone extends Error {
  override name = 'AgentGone'
}

/** The agent said nothing about one request for longer than its deadline: the sandbox is wedged or overloaded. */
export class AgentTimeout extends AppError {
  constructor (op: string, idleMs: number) {
    super(503, 'sandbox_unresponsive', `The sandbox did not answer (${op}) within ${Math.round(idleMs / 1000)} s; try again, or delete it`, 'sandbox_error', { retry_after: 5 })
    this.name = 'AgentTimeout'
  }
}

/** How this process reaches the agent: its unix socket (direct), or the `docker attach` stream (through dockerd). */
export type AgentChannel = 'socket' | 'attach'

/**
 * Speaks the agent's JSON-lines protocol over one stream: a connection to the agent's unix socket, or a `docker
 * attach` stream. Requests carry random ids, so several server processes can talk to the same agent and each sees
 * only its own answers.
 */
export class AgentClient extends EventEmitter {
  private readonly pending = new Map<string, Pending>()
  private buffer = ''
  private closed = false

  private constructor (private readonly stream: Duplex, input: Readable, readonly channel: AgentChannel, private readonly onLog?: (line: string) => void) {
    super()
    input.setEncoding('utf8')
    input.on('data', (chunk: string) => this.receive(chunk))
    stream.on('end', () => this.fail(new AgentGone('the sandbox agent closed its stream')))
    stream.on('close', () => this.fail(new AgentGone('the sandbox agent closed its stream')))
    stream.on('error', (err: Error) => this.fail(new AgentGone(`sandbox stream error: ${err.message}`)))
  }

  /** Over `docker attach`: stdout carries events, stderr the agent's log lines. */
  static overAttach (stream: Duplex, modem: Docker['modem'], onLog?: (line: string) => void): AgentClient {
    const stdout = new PassThrough()
    const stderr = new PassThrough()
    modem.demuxStream(stream, stdout, stderr)
    stderr.setEncoding('utf8')
    stderr.on('data', (chunk: string) => onLog?.(chunk))
    return new AgentClient(stream, stdout, 'attach', onLog)
  }

  /** Over a connection to the agent's unix socket: no dockerd, no shim, no stream framing on the way. */
  static overSocket (socket: Socket, onLog?: (line: string) => void): AgentClient {
    socket.setNoDelay?.(true)
    return new AgentClient(socket, socket, 'socket', onLog)
  }

  get alive (): boolean { return !this.closed }

  private receive (chunk: string): void {
    this.buffer += chunk
    let newline: number
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline)
      this.buffer = this.buffer.slice(newline + 1)
      if (!line.trim()) continue
      let event: AgentEvent
      try {
        event = JSON.parse(line) as AgentEvent
      } catch {
        this.onLog?.(line)
        continue
      }
      this.dispatch(event)
    }
  }

  private dispatch (event: AgentEvent): void {
    checkEvent(event)
    const pending = event.id === undefined ? undefined : this.pending.get(event.id)
    if (!pending) {
      if (event.id === undefined) this.emit(event.type, event)
      return
    }
    if (event.type === 'start') pending.started = true
    pending.timer?.refresh()
    pending.onEvent(event)
    if (TERMINAL.has(event.type) || (event.type === 'error' && !pending.started)) {
      this.pending.delete(event.id!)
      clearTimeout(pending.timer)
      pending.resolve()
    }
  }

  private fail (err: Error): void {
    if (this.closed) return
    this.closed = true
    for (const pending of this.pending.values()) {
      clearTimeout(pending.timer)
      pending.reject(err)
    }
    this.pending.clear()
    this.emit('gone', err)
  }

  /**
   * Sends one request; `onEvent` sees every event answering it; resolves after the last one. It rejects with
   * AgentTimeout when `idleMs` pass without an event for it (each event restarts the clock).
   */
  request<O extends AgentOp> (op: O, body: AgentRequest<O>, onEvent: (e: AgentEvent) => void = () => {}, idleMs = AGENT_CALL_IDLE_MS): Promise<void> {
    return this.open(op, body, onEvent, idleMs).done
  }

  /**
   * Like request, with the request's id (which proc_unfollow and unwatch name); `idleMs` 0: no deadline (a follow or a
   * watch, which may stay silent for as long as its process or directory does).
   */
  open<O extends AgentOp> (op: O, body: AgentRequest<O>, onEvent: (e: AgentEvent) => void = () => {}, idleMs = AGENT_CALL_IDLE_MS): { id: string, done: Promise<void> } {
    const id = nextId()
    if (this.closed) return { id, done: Promise.reject(new AgentGone('the sandbox agent is gone')) }
    const done = new Promise<void>((resolve, reject) => {
      const timer = idleMs > 0
        ? setTimeout(() => {
          if (this.pending.delete(id)) reject(new AgentTimeout(op, idleMs))
        }, idleMs)
        : undefined
      timer?.unref()
      this.pending.set(id, { onEvent, resolve, reject, started: false, timer })
      this.stream.write(JSON.stringify({ ...body, id, op }) + '\n')
    })
    return { id, done }
  }

  /** A request whose answer is a single event (or an error event). */
  async call<O extends AgentOp> (op: O, body: AgentRequest<O>, idleMs = AGENT_CALL_IDLE_MS): Promise<AgentEvent> {
    let last: AgentEvent | undefined
    await this.request(op, body, e => { last = e }, idleMs)
    return last!
  }

  /** Resolves on the agent's `ready` event (the python kernel is up). */
  waitReady (timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { cleanup(); reject(new Error(`sandbox agent not ready after ${timeoutMs} ms`)) }, timeoutMs)
      const onReady = () => { cleanup(); resolve() }
      const onGone = (err: Error) => { cleanup(); reject(err) }
      const cleanup = () => { clearTimeout(timer); this.off('ready', onReady); this.off('gone', onGone) }
      this.on('ready', onReady)
      this.on('gone', onGone)
    })
  }

  close (): void {
    this.fail(new AgentGone('detached'))
    this.stream.destroy()
  }
}
