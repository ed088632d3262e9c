import { randomBytes } from 'node:crypto'
import type { Message, Session } from '../../schemas/sessions.js'
import type { Chunk, FinishReason, RunEvent, Usage } from '../../schemas/chat.js'
import type { Language, SandboxRecord } from '../../schemas/sandboxes.js'
import type { SessionService } from '../sessions.js'
import type { EventLog } from '../events.js'
import type { ModelRegistry } from '../llm/registry.js'
import type { SandboxService } from '../sandbox/service.js'
import type { Store } from '../store/types.js'
import type { Logger } from '../sandbox/pool.js'
import { AppError, DependencyError } from '../errors.js'
import { LlmError } from '../llm/types.js'
import { runTurn, type Decision } from './loop.js'

export interface RunSettings { maxSteps: number, outputLimit: number, confirmTimeoutMs: number, defaultTemperature: number, defaultMaxTokens: number, autoRun: boolean }
export interface RunRequest {
  model?: string
  temperature?: number
  maxTokens?: number
  autoRun?: boolean
  /** The conversation to use instead of the stored history (the OpenAI-compatible route sends it whole). */
  history?: Message[]
}
export interface RunOutcome { runId: string, usage: Usage, finishReason: FinishReason, error?: AppError, messages: Message[] }

interface ActiveRun {
  id: string
  abort: AbortController
  pending: { codeId: string, resolve: (d: Decision) => void } | null
  executing: SandboxRecord | null
  done: Promise<RunOutcome>
  /** The id of the run_start event in the session's log: streaming clients follow from just before it. */
  startEventId: string
}

const LOCK_TTL_MS = 60 * 60 * 1000

/** What went wrong in a run, as the documented error body. */
export function runError (err: unknown): AppError {
  if (err instanceof AppError) return err
  if (err instanceof DependencyError) return err.dependency === 'redis' ? new AppError(503, 'redis_unavailable', 'The session store (Redis) is unavailable') : new AppError(503, 'docker_unavailable', 'Sandboxes are unavailable')
  if (err instanceof LlmError) {
    const codes: Record<LlmError['kind'], [number, string]> = {
      auth: [502, 'upstream_auth_error'], rate_limit: [502, 'upstream_rate_limited'], server: [502, 'upstream_error'],
      timeout: [504, 'upstream_timeout'], connection: [502, 'upstream_unreachable'], bad_request: [502, 'upstream_bad_request'], aborted: [499, 'interrupted']
    }
    const [status, code] = codes[err.kind]
    return new AppError(status, code, err.message, 'upstream_error')
  }
  return new AppError(500, 'internal_error', 'Internal server error')
}

/** Runs chat turns: one per session at a time (a lock in the store), each in the background, its events in the log. */
export class RunManager {
  private readonly active = new Map<string, ActiveRun>()

  constructor (private readonly deps: { sessions: SessionService, store: Store, events: EventLog, models: ModelRegistry, sandboxes: SandboxService, settings: RunSettings, log: Logger }) {}

  /** Starts a turn on `session` with the new `input` messages; 409 while another run holds the session. */
  async start (session: Session, input: Message[], request: RunRequest): Promise<ActiveRun> {
    const { store, events, sessions, models } = this.deps
    const model = models.get(request.model ?? session.settings.model)
    const id = `run_${randomBytes(9).toString('base64url')}`
    if (!(await store.lock(`session:${session.id}`, id, LOCK_TTL_MS))) {
      throw new AppError(409, 'run_in_progress', 'This session is already running a turn; wait for it or interrupt it', 'conflict_error')
    }
    let startEventId: string
    try {
      await sessions.append(session, input)
      startEventId = await events.append(session.id, { type: 'run_start', run_id: id, model: model.name })
    } catch (err) {
      await store.unlock(`session:${session.id}`, id).catch(() => {})
      throw err
    }
    const run: ActiveRun = { id, abort: new AbortController(), pending: null, executing: null, done: Promise.resolve(null as unknown as RunOutcome), startEventId }
    this.active.set(session.id, run)
    run.done = this.execute(run, session, model.name, request)
    return run
  }

  private async execute (run: ActiveRun, session: Session, model: string, request: RunRequest): Promise<RunOutcome> {
    const { store, events, sessions, sandboxes, settings, log } = this.deps
    let tail: Promise<unknown> = Promise.resolve()
    const append = (event: RunEvent): Promise<void> => {
      const next = tail.then(() => events.append(session.id, event))
      tail = next.catch(() => {})
      return next.then(() => {})
    }
    const stored: Message[] = []
    const history = request.history ?? (await store.listMessages(session.id, { offset: 0, limit: 100_000 })).items
    let outcome: RunOutcome
    try {
      const result = await runTurn(history, {
        models: this.deps.models,
        signal: run.abort.signal,
        emit: (chunk: Chunk) => append({ type: 'chunk', run_id: run.id, chunk }),
        fallback: async (from, to, reason) => {
          log.warn({ session: session.id, from, to, reason }, 'model fallback')
          await append({ type: 'fallback', run_id: run.id, from, to, reason })
        },
        store: async (messages) => {
          if (!messages.length) return
          await sessions.append(session, messages)
          stored.push(...messages)
        },
        confirm: (codeId) => new Promise<Decision>((resolve) => {
          const timer = setTimeout(() => finish('expired'), settings.confirmTimeoutMs)
          const onAbort = () => finish('declined')
          const finish = (d: Decision) => {
            clearTimeout(timer)
            run.abort.signal.removeEventListener('abort', onAbort)
            run.pending = null
            resolve(d)
          }
          run.abort.signal.addEventListener('abort', onAbort, { once: true })
          run.pending = { codeId, resolve: finish }
        }),
        execute: async (language, code, onEvent) => {
          const record = await this.sandboxFor(session)
          run.executing = record
          try {
            return await sandboxes.execute(record, { language, code }, onEvent)
          } finally {
            run.executing = null
          }
        }
      }, {
        model,
        temperature: request.temperature ?? session.settings.temperature ?? this.deps.models.get(model).temperature ?? settings.defaultTemperature,
        maxTokens: request.maxTokens ?? session.settings.max_tokens ?? this.deps.models.get(model).max_tokens ?? settings.defaultMaxTokens,
        autoRun: request.autoRun ?? session.settings.auto_run ?? settings.autoRun,
        maxSteps: settings.maxSteps,
        outputLimit: settings.outputLimit,
        systemMessage: session.settings.system_message
      })
      outcome = { runId: run.id, usage: result.usage, finishReason: result.finishReason, messages: stored }
    } catch (err) {
      const error = runError(err)
      if (error.statusCode >= 500 && !(err instanceof LlmError)) log.warn({ err, session: session.id }, 'run failed')
      outcome = { runId: run.id, usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }, finishReason: 'error', error, messages: stored }
    }
    try {
      await tail
      const fresh = await store.getSession(session.id) ?? session
      for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens'] as const) fresh.usage[k] += outcome.usage[k]
      await store.saveSession(fresh)
      await append({
        type: 'run_end', run_id: run.id, session_id: session.id, usage: outcome.usage, finish_reason: outcome.finishReason,
        ...(outcome.error ? { error: { message: outcome.error.message, type: outcome.error.type, code: outcome.error.code } } : {})
      })
    } catch (err) {
      log.warn({ err, session: session.id }, 'could not record the end of a run')
    } finally {
      this.active.delete(session.id)
      await store.unlock(`session:${session.id}`, run.id).catch(() => {})
    }
    return outcome
  }

  /** Runs code directly (no model) in the session's sandbox, as a run whose events go to the log like a turn's. */
  async executeDirect (session: Session, language: Language, code: string): Promise<ActiveRun> {
    const { store, events, sessions } = this.deps
    const id = `run_${randomBytes(9).toString('base64url')}`
    if (!(await store.lock(`session:${session.id}`, id, LOCK_TTL_MS))) {
      throw new AppError(409, 'run_in_progress', 'This session is already running a turn; wait for it or interrupt it', 'conflict_error')
    }
    const startEventId = await events.append(session.id, { type: 'run_start', run_id: id, model: 'direct' }).catch(async (err) => {
      await store.unlock(`session:${session.id}`, id).catch(() => {})
      throw err
    })
    const run: ActiveRun = { id, abort: new AbortController(), pending: null, executing: null, done: Promise.resolve(null as unknown as RunOutcome), startEventId }
    this.active.set(session.id, run)
    run.done = (async (): Promise<RunOutcome> => {
      const chunk = (c: Chunk) => events.append(session.id, { type: 'chunk', run_id: id, chunk: c })
      const stored: Message[] = [{ role: 'user', type: 'code', format: language, content: code, id }]
      let outcome: RunOutcome = { runId: id, usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }, finishReason: 'stop', messages: stored }
      try {
        let tail: Promise<unknown> = chunk({ role: 'computer', type: 'console', format: 'output', id, start: true })
        let output = ''
        const record = await this.sandboxFor(session)
        run.executing = record
        const execution = await this.deps.sandboxes.execute(record, { language, code }, (e) => {
          const text = e.type === 'stdout' || e.type === 'stderr' ? e.text : e.type === 'error' ? (e.traceback.join('') || `${e.name}: ${e.value}\n`) : e.type === 'result' && !e.data['image/png'] ? `${e.data['text/plain'] ?? ''}\n` : ''
          if (text) {
            output += text
            tail = tail.then(() => chunk({ role: 'computer', type: 'console', format: 'output', id, content: text }))
          }
          if ((e.type === 'display' || e.type === 'result') && e.data['image/png']) {
            stored.push({ role: 'computer', type: 'image', format: 'base64.png', content: e.data['image/png'], id })
            tail = tail.then(() => chunk({ role: 'computer', type: 'image', format: 'base64.png', id, content: e.data['image/png'] }))
          }
        })
        await tail
        await chunk({ role: 'computer', type: 'console', format: 'output', id, end: true })
        stored.splice(1, 0, { role: 'computer', type: 'console', format: 'output', content: output, id })
        await sessions.append(session, stored)
        if (execution.error?.name === 'KeyboardInterrupt' || run.abort.signal.aborted) outcome.finishReason = 'interrupted'
      } catch (err) {
        outcome = { ...outcome, finishReason: 'error', error: runError(err) }
      } finally {
        run.executing = null
      }
      await events.append(session.id, {
        type: 'run_end', run_id: id, session_id: session.id, usage: outcome.usage, finish_reason: outcome.finishReason,
        ...(outcome.error ? { error: { message: outcome.error.message, type: outcome.error.type, code: outcome.error.code } } : {})
      }).catch(() => {})
      this.active.delete(session.id)
      await store.unlock(`session:${session.id}`, id).catch(() => {})
      return outcome
    })()
    return run
  }

  /** The session's sandbox, created (from the pool) on first use. */
  private async sandboxFor (session: Session): Promise<SandboxRecord> {
    const { store, sandboxes } = this.deps
    if (session.sandbox_id) {
      const record = await store.getSandbox(session.sandbox_id)
      if (record) return record
    }
    const record = await sandboxes.create({ name: session.owner, role: 'user' }, {}, session.id)
    const fresh = await store.getSession(session.id) ?? session
    fresh.sandbox_id = record.id
    session.sandbox_id = record.id
    await store.saveSession(fresh)
    return record
  }

  /** Approves or declines the block the run waits on; 409 when it waits on another block or on none. */
  confirm (sessionId: string, codeId: string, approve: boolean): void {
    const pending = this.active.get(sessionId)?.pending
    if (!pending) throw new AppError(409, 'no_pending_confirmation', 'No code block is waiting for approval in this session', 'conflict_error')
    if (pending.codeId !== codeId) throw new AppError(409, 'confirmation_mismatch', `The code block waiting for approval is ${pending.codeId}, not ${codeId}`, 'conflict_error')
    pending.resolve(approve ? 'approved' : 'declined')
  }

  /** Stops the model stream and the running code; false when the session has no run here. */
  async interrupt (sessionId: string): Promise<boolean> {
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

  running (sessionId: string): ActiveRun | undefined {
    return this.active.get(sessionId)
  }

  async close (): Promise<void> {
    for (const run of this.active.values()) run.abort.abort()
    await Promise.all([...this.active.values()].map(r => r.done.catch(() => {})))
  }
}
