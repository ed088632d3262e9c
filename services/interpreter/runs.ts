import { randomBytes } from 'node:crypto'
import type { Message, Session } from '../../schemas/sessions.js'
import type { Chunk, FinishReason, RunEvent, Usage } from '../../schemas/chat.js'
import type { LoggedEvent } from '../events.js'
import type { Execution, ExecutionEvent, Language, SandboxRecord } from '../../schemas/sandboxes.js'
import type { SessionService } from '../sessions.js'
import { OrderedAppender, type EventLog } from '../events.js'
import type { ModelRegistry } from '../llm/registry.js'
import type { Protocol, SandboxService } from '../sandbox/service.js'
import type { Store } from '../store/types.js'
import type { Logger } from '../sandbox/pool.js'
import type { Bus } from '../bus.js'
import { AppError, DependencyError } from '../errors.js'
import { LlmError } from '../llm/types.js'
import { runTurn, streamExecution, type Decision, type TurnDeps } from './loop.js'
import { ClaudeTools } from './claude-tools.js'

export interface RunSettings { maxSteps: number, outputLimit: number, confirmTimeoutMs: number, defaultTemperature: number, defaultMaxTokens: number, autoRun: boolean }
export interface RunRequest {
  model?: string
  temperature?: number
  maxTokens?: number
  autoRun?: boolean
  /** The conversation to use instead of the stored history (the OpenAI-compatible route sends it whole). */
  history?: Message[]
  /** The protocol the turn came through (execution metrics). */
  via: Protocol
}
export interface RunOutcome {
  runId: string
  usage: Usage
  finishReason: FinishReason
  error?: AppError
  messages: Message[]
  /** A direct execution's result as the sandbox gave it. */
  execution?: Execution
}

interface ActiveRun {
  id: string
  abort: AbortController
  pending: { codeId: string, resolve: (d: Decision) => void } | null
  executing: SandboxRecord | null
  done: Promise<RunOutcome>
  /** The id of the run_start event in the session's log: streaming clients follow from just after it. */
  startEventId: string
  /** Appends this run's events to the log strictly in call order, whether or not the caller awaits. */
  append: (event: RunEvent) => Promise<void>
  /** Settles once every event appended so far is in the log. */
  drained: () => Promise<unknown>
  /** Keeps the session's lock alive while the run lives. */
  renewal: NodeJS.Timeout
}

/** How long a process waits for the one running a session's turn to answer a relayed confirm or interrupt. */
const RELAY_TIMEOUT_MS = 3000
type Relayed = { ok: true, interrupted?: boolean } | { ok: false, error: { status: number, code: string, message: string, type: string } }
const noUsage = (): Usage => ({ prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 })
/** The store lock that makes a session run one turn at a time; its holder is the run's id. */
const sessionLock = (sessionId: string) => `session:${sessionId}`
const NoPendingConfirmation = () => new AppError(409, 'no_pending_confirmation', 'No code block is waiting for approval in this session', 'conflict_error')

/** What went wrong in a run, as the documented error body. */
export function runError (err: unknown): AppError {
  if (err instanceof AppError) return err
  if (err instanceof DependencyError) return err.toAppError()
  if (err instanceof LlmError) {
    const codes: Record<LlmError['kind'], [number, string]> = {
      auth: [502, 'upstream_auth_error'],
      rate_limit: [502, 'upstream_rate_limited'],
      server: [502, 'upstream_error'],
      timeout: [504, 'upstream_timeout'],
      connection: [502, 'upstream_unreachable'],
      bad_request: [502, 'upstream_bad_request'],
      aborted: [499, 'interrupted']
    }
    const [status, code] = codes[err.kind]
    return new AppError(status, code, err.message, 'upstream_error')
  }
  return new AppError(500, 'internal_error', 'Internal server error')
}

/**
 * Runs turns and direct executions, one per session at a time (a lock in the store). Confirm and interrupt reach
 * the run wherever it runs: here directly, in another server process over the bus.
 */
export class RunManager {
  private readonly active = new Map<string, ActiveRun>()
  private readonly claude: ClaudeTools

  constructor (private readonly deps: {
    sessions: SessionService,
    store: Store,
    events: EventLog,
    models: ModelRegistry,
    sandboxes: SandboxService,
    settings: RunSettings,
    log: Logger
    /** Reaches the other server processes (null with one process). */
    bus: Bus | null
    lockTtlMs: number
  }) {
    this.claude = new ClaudeTools(deps.sandboxes)
    deps.bus?.on('run.confirm', async (m: { session_id: string, code_id: string, approve: boolean }) =>
      this.active.has(m.session_id) ? await relayed(() => { this.confirmHere(m.session_id, m.code_id, m.approve); return { ok: true } }) : undefined)
    deps.bus?.on('run.interrupt', async (m: { session_id: string }) =>
      this.active.has(m.session_id) ? await relayed(async () => ({ ok: true, interrupted: await this.interruptHere(m.session_id) })) : undefined)
  }

  /** Starts a turn on `session` with the new `input` messages; 409 while another run holds the session. */
  async start (session: Session, input: Message[], request: RunRequest): Promise<ActiveRun> {
    const model = this.deps.models.get(request.model ?? session.settings.model)
    const run = await this.open(session, model.name, () => this.deps.sessions.append(session, input))
    run.done = this.turn(run, session, model.name, request)
    return run
  }

  /** Runs code directly (no model) in the session's sandbox, as a run whose events go to the log like a turn's. */
  async executeDirect (session: Session, language: Language, code: string, opts: { via: Protocol, timeoutMs?: number, onEvent?: (e: ExecutionEvent) => void, runId?: string }): Promise<ActiveRun> {
    const run = await this.open(session, 'direct', undefined, opts.runId)
    run.done = (async () => {
      const messages: Message[] = [{ role: 'user', type: 'code', format: language, content: code, id: run.id }]
      let outcome: RunOutcome = { runId: run.id, usage: noUsage(), finishReason: 'stop', messages }
      try {
        const emit = (chunk: Chunk) => run.append({ type: 'chunk', run_id: run.id, chunk })
        const { execution, messages: results } = await streamExecution({ emit, execute: this.executor(run, session, opts.via, opts.timeoutMs, opts.onEvent) }, run.id, language, code)
        outcome.execution = execution
        messages.push(...results)
        await this.deps.sessions.append(session, messages)
        if (execution.error?.name === 'KeyboardInterrupt' || run.abort.signal.aborted) outcome.finishReason = 'interrupted'
      } catch (err) {
        outcome = { ...outcome, finishReason: 'error', error: runError(err) }
      }
      return await this.finish(run, session, outcome)
    })()
    return run
  }

  /** Takes the session's lock (409 when held), runs `before`, logs run_start, and registers the run. */
  private async open (session: Session, model: string, before?: () => Promise<void>, given?: string): Promise<ActiveRun> {
    const { store, events } = this.deps
    const id = given ?? `run_${randomBytes(9).toString('base64url')}`
    const lock = sessionLock(session.id)
    const ttl = this.deps.lockTtlMs
    if (!(await store.lock(lock, id, ttl))) {
      throw new AppError(409, 'run_in_progress', 'This session is already running a turn; wait for it or interrupt it', 'conflict_error')
    }
    let startEventId: string
    try {
      await before?.()
      startEventId = await events.append(session.id, { type: 'run_start', run_id: id, model })
    } catch (err) {
      await store.unlock(lock, id).catch(() => {})
      throw err
    }
    const renewal = setInterval(() => {
      store.lock(lock, id, ttl).then(
        (held) => { if (!held) this.deps.log.warn({ session: session.id, run: id }, 'the session lock was lost: another run may start') },
        (err: unknown) => this.deps.log.warn({ err, session: session.id }, 'could not renew the session lock'))
    }, Math.floor(ttl / 3))
    renewal.unref()
    const appender = new OrderedAppender(events, session.id)
    const run: ActiveRun = {
      id,
      abort: new AbortController(),
      pending: null,
      executing: null,
      done: Promise.resolve(null as unknown as RunOutcome),
      startEventId,
      append: (event) => appender.append(event),
      drained: () => appender.drained(),
      renewal
    }
    this.active.set(session.id, run)
    return run
  }

  /** Adds the run's usage to the session, logs run_end, and releases the session. */
  private async finish (run: ActiveRun, session: Session, outcome: RunOutcome): Promise<RunOutcome> {
    const { store, log } = this.deps
    try {
      await run.drained()
      if (outcome.usage.total_tokens > 0) {
        const fresh = await store.getSession(session.id) ?? session
        for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens'] as const) fresh.usage[k] += outcome.usage[k]
        await store.saveSession(fresh)
      }
      await run.append({
        type: 'run_end',
        run_id: run.id,
        session_id: session.id,
        usage: outcome.usage,
        finish_reason: outcome.finishReason,
        ...(outcome.error ? { error: errorBody(outcome.error) } : {})
      })
    } catch (err) {
      log.warn({ err, session: session.id }, 'could not record the end of a run')
    } finally {
      clearInterval(run.renewal)
      this.active.delete(session.id)
      await store.unlock(sessionLock(session.id), run.id).catch(() => {})
    }
    return outcome
  }

  /**
   * Runs `work` in the session's sandbox, remembering it so that an interrupt reaches the code; `note` says when the
   * session's sandbox was lost and this is a fresh one.
   */
  private async inSandbox<T> (run: ActiveRun, session: Session, work: (record: SandboxRecord, note: string) => Promise<T>): Promise<T> {
    const before = session.sandbox_id
    const record = await this.sessionSandbox(session, run.abort.signal)
    run.executing = record
    try {
      // The session had a sandbox that is gone (lost with its host, or reaped): this run has a fresh one, and says so.
      const note = before && before !== record.id ? '[this session\'s sandbox was lost (reaped, or its host came back without it); this run has a fresh one and earlier variables and files are gone]\n' : ''
      return await work(record, note)
    } finally {
      run.executing = null
    }
  }

  /** Runs code in the session's sandbox. */
  private executor (run: ActiveRun, session: Session, via: Protocol, timeoutMs?: number, also?: (e: ExecutionEvent) => void): TurnDeps['execute'] {
    return async (language, code, ownEvent) => {
      const onEvent = also ? (e: ExecutionEvent) => { ownEvent?.(e); also(e) } : ownEvent
      return await this.inSandbox(run, session, async (record, note) => {
        if (note) onEvent?.({ type: 'stderr', text: note })
        const execution = await this.deps.sandboxes.execute(record, { language, code, ...(timeoutMs ? { timeout_ms: timeoutMs } : {}) }, onEvent, { via })
        return note ? { ...execution, stderr: note + execution.stderr, state_lost: true } : execution
      })
    }
  }

  /** Claude's bash and text editor, run in the session's sandbox. */
  private native (run: ActiveRun, session: Session, via: Protocol): NonNullable<TurnDeps['native']> {
    return {
      bash: async (input, onEvent) => await this.inSandbox(run, session, async (record, note) => {
        if (note) onEvent({ type: 'stderr', text: note })
        const outcome = await this.claude.bash(record, input, onEvent, via)
        return note ? { ...outcome, text: note + outcome.text } : outcome
      }),
      edit: async (input) => await this.inSandbox(run, session, async (record, note) => {
        const outcome = await this.claude.edit(record, input)
        return note ? { ...outcome, text: note + outcome.text } : outcome
      })
    }
  }

  private async turn (run: ActiveRun, session: Session, model: string, request: RunRequest): Promise<RunOutcome> {
    const { store, sessions, settings, log } = this.deps
    const stored: Message[] = []
    let outcome: RunOutcome
    try {
      const history = request.history ?? (await store.listMessages(session.id, { offset: 0, limit: 100_000 })).items
      const entry = this.deps.models.get(model)
      const result = await runTurn(history, {
        models: this.deps.models,
        signal: run.abort.signal,
        emit: (chunk: Chunk) => run.append({ type: 'chunk', run_id: run.id, chunk }),
        fallback: async (from, to, reason) => {
          log.warn({ session: session.id, from, to, reason }, 'model fallback')
          await run.append({ type: 'fallback', run_id: run.id, from, to, reason })
        },
        store: async (messages) => {
          if (!messages.length) return
          await sessions.append(session, messages)
          stored.push(...messages)
        },
        confirm: (codeId) => this.waitForDecision(run, codeId),
        execute: this.executor(run, session, request.via),
        native: this.native(run, session, request.via)
      }, {
        model,
        temperature: request.temperature ?? session.settings.temperature ?? entry.temperature ?? settings.defaultTemperature,
        maxTokens: request.maxTokens ?? session.settings.max_tokens ?? entry.max_tokens ?? settings.defaultMaxTokens,
        autoRun: request.autoRun ?? session.settings.auto_run ?? settings.autoRun,
        maxSteps: settings.maxSteps,
        outputLimit: settings.outputLimit,
        systemMessage: session.settings.system_message,
        languages: this.deps.sandboxes.languages()
      })
      outcome = { runId: run.id, usage: result.usage, finishReason: result.finishReason, messages: stored }
    } catch (err) {
      const error = runError(err)
      if (error.statusCode >= 500 && !(err instanceof LlmError)) log.warn({ err, session: session.id }, 'run failed')
      outcome = { runId: run.id, usage: noUsage(), finishReason: 'error', error, messages: stored }
    }
    return await this.finish(run, session, outcome)
  }

  /** Waits for confirm(); an interrupt declines, and the configured timeout expires the block. */
  private waitForDecision (run: ActiveRun, codeId: string): Promise<Decision> {
    return new Promise<Decision>((resolve) => {
      const timer = setTimeout(() => finish('expired'), this.deps.settings.confirmTimeoutMs)
      const onAbort = () => finish('declined')
      const finish = (d: Decision) => {
        clearTimeout(timer)
        run.abort.signal.removeEventListener('abort', onAbort)
        run.pending = null
        resolve(d)
      }
      run.abort.signal.addEventListener('abort', onAbort, { once: true })
      run.pending = { codeId, resolve: finish }
    })
  }

  /** The events of one run from the session's log, in order, ending with its run_end (or when `signal` aborts). */
  async * follow (sessionId: string, run: { id: string, startEventId: string }, signal: AbortSignal): AsyncIterable<LoggedEvent> {
    for await (const logged of this.deps.events.follow(sessionId, run.startEventId, signal)) {
      yield logged
      if (logged.event.type === 'run_end' && logged.event.run_id === run.id) return
    }
  }

  /** The session's sandbox, created (from the pool) on first use. */
  async sessionSandbox (session: Session, signal?: AbortSignal): Promise<SandboxRecord> {
    const { store, sandboxes } = this.deps
    if (session.sandbox_id) {
      const record = await store.getSandbox(session.sandbox_id)
      if (record) return record
    }
    // The session's network policy was checked against the key that set it (sessions routes).
    const network = session.settings.network
    const record = await sandboxes.create({ name: session.owner, role: 'user' }, network ? { network } : {}, session.id, signal, true)
    const fresh = await store.getSession(session.id) ?? session
    fresh.sandbox_id = record.id
    session.sandbox_id = record.id
    await store.saveSession(fresh)
    return record
  }

  /**
   * Ends a session everywhere: its record and messages, its event log and its sandbox. Every protocol that ends a
   * session (REST, OpenAI-compatible, MCP, Jupyter) calls this, so none can forget a part.
   */
  async endSession (session: Session): Promise<void> {
    const { store, sandboxes, events, log } = this.deps
    const fresh = await store.getSession(session.id) ?? session
    const record = fresh.sandbox_id ? await store.getSandbox(fresh.sandbox_id) : null
    await store.deleteSession(fresh)
    await events.delete(session.id).catch((err: Error) => log.warn({ err: err.message, session: session.id }, 'could not delete a session\'s event log'))
    if (record) await sandboxes.destroy(record).catch((err: Error) => log.warn({ err: err.message, session: session.id }, 'could not remove a session\'s sandbox'))
  }

  /** Keeps the session's sandbox from being reaped while a client holds a connection to it (a heartbeat). */
  async keepAlive (sessionId: string): Promise<void> {
    const { store, sandboxes } = this.deps
    const session = await store.getSession(sessionId)
    const record = session?.sandbox_id ? await store.getSandbox(session.sandbox_id) : null
    if (record) await sandboxes.touch(record)
  }

  /** Replaces the session's sandbox with nothing (the next run gets a fresh one); 409 while a run holds the session. */
  async resetSandbox (session: Session): Promise<void> {
    const { store, sandboxes } = this.deps
    const owner = `reset_${randomBytes(6).toString('base64url')}`
    if (!(await store.lock(sessionLock(session.id), owner, this.deps.lockTtlMs))) {
      throw new AppError(409, 'run_in_progress', 'This session is running; wait for it or interrupt it', 'conflict_error')
    }
    try {
      const fresh = await store.getSession(session.id) ?? session
      const record = fresh.sandbox_id ? await store.getSandbox(fresh.sandbox_id) : null
      if (record) await sandboxes.destroy(record)
      fresh.sandbox_id = null
      session.sandbox_id = null
      await store.saveSession(fresh)
    } finally {
      await store.unlock(sessionLock(session.id), owner).catch(() => {})
    }
  }

  /** Approves or declines the block the run waits on, in whichever process it runs; 409 when it waits on another block or on none. */
  async confirm (sessionId: string, codeId: string, approve: boolean): Promise<void> {
    if (this.active.has(sessionId)) return this.confirmHere(sessionId, codeId, approve)
    const answer = await this.relay('run.confirm', { session_id: sessionId, code_id: codeId, approve })
    if (!answer) throw NoPendingConfirmation()
  }

  /** Whether a run holds the session, in any process. */
  async running (sessionId: string): Promise<boolean> {
    return this.active.has(sessionId) || (await this.deps.store.lockHolder(sessionLock(sessionId))) !== null
  }

  /** Stops the model stream and the running code, in whichever process it runs; false when the session has no run. */
  async interrupt (sessionId: string): Promise<boolean> {
    if (this.active.has(sessionId)) return await this.interruptHere(sessionId)
    return (await this.relay('run.interrupt', { session_id: sessionId }))?.interrupted ?? false
  }

  /**
   * Asks the process that runs the session's turn (it holds the session's lock). Undefined when no run holds it;
   * a 503 when one does but its process does not answer (its lock then expires within RUN_LOCK_TTL_MS).
   */
  private async relay (topic: string, body: { session_id: string, [k: string]: unknown }): Promise<(Relayed & { ok: true }) | undefined> {
    const { bus, store } = this.deps
    if (!bus || !(await store.lockHolder(sessionLock(body.session_id)))) return undefined
    const answer = await bus.request<Relayed>(topic, body, RELAY_TIMEOUT_MS)
    if (!answer) {
      if (!(await store.lockHolder(sessionLock(body.session_id)))) return undefined // it ended meanwhile
      throw new AppError(503, 'run_unreachable', 'The server process running this session\'s turn did not answer; try again shortly')
    }
    if (!answer.ok) throw new AppError(answer.error.status, answer.error.code, answer.error.message, answer.error.type)
    return answer
  }

  private confirmHere (sessionId: string, codeId: string, approve: boolean): void {
    const pending = this.active.get(sessionId)?.pending
    if (!pending) throw NoPendingConfirmation()
    if (pending.codeId !== codeId) throw new AppError(409, 'confirmation_mismatch', `The code block waiting for approval is ${pending.codeId}, not ${codeId}`, 'conflict_error')
    pending.resolve(approve ? 'approved' : 'declined')
  }

  private async interruptHere (sessionId: string): Promise<boolean> {
    const run = this.active.get(sessionId)
    if (!run) return false
    run.abort.abort()
    if (run.executing) {
      const handle = await this.deps.sandboxes.handle(run.executing).catch(() => null)
      await handle?.interrupt().catch(() => {})
    }
    return true
  }

  /** Applies changed server-wide defaults (for runs started from now on). */
  configure (settings: Partial<RunSettings>): void {
    Object.assign(this.deps.settings, settings)
  }

  async close (): Promise<void> {
    for (const run of this.active.values()) run.abort.abort()
    await Promise.all([...this.active.values()].map(r => r.done.catch(() => {})))
  }
}

/** The documented error body of a run's end; a capacity refusal keeps its retry_after. */
function errorBody (e: AppError): { message: string, type: string, code: string, retry_after?: number } {
  return { message: e.message, type: e.type, code: e.code, ...(typeof e.extra.retry_after === 'number' ? { retry_after: e.extra.retry_after } : {}) }
}

/** A relayed call's answer: its result, or the AppError it threw as data. */
async function relayed (fn: () => Relayed | Promise<Relayed>): Promise<Relayed> {
  try {
    return await fn()
  } catch (err) {
    const e = runError(err)
    return { ok: false, error: { status: e.statusCode, code: e.code, message: e.message, type: e.type } }
  }
}
