import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ErrorSchema, EventIdSchema, IdParamsSchema, commonErrors } from '../schemas/common.js'
import { ChatRequestSchema, ConfirmSchema } from '../schemas/chat.js'
import { MessageSchema, UsageSchema, type Message } from '../schemas/sessions.js'
import { forwardEvents, openSse } from './sse.js'
import { AppError } from '../services/errors.js'

const ChatResponseSchema = Type.Object({
  object: Type.Literal('chat.turn'),
  session_id: Type.String(),
  run_id: Type.String(),
  messages: Type.Array(MessageSchema, { description: 'the messages this turn added (assistant text, code, console output, images)' }),
  usage: UsageSchema,
  finish_reason: Type.String({ description: 'stop, step_limit or interrupted' })
})

const EVENT_ID = new RegExp((EventIdSchema as { pattern?: string }).pattern!) // what Redis takes as a stream id (each part within 64 bits)

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { runs, sessions, events } = app
  const errors = { 404: ErrorSchema, 409: ErrorSchema, 502: ErrorSchema, 504: ErrorSchema, ...commonErrors }

  app.post('/chat', {
    preHandler: app.limitPerTarget,
    schema: {
      tags: ['chat'],
      summary: 'Send messages; the model answers and runs code in the session sandbox',
      description: 'Without `stream`, the whole turn as JSON. With `stream: true`, Server-Sent Events: `message` (LMC chunks), `fallback`, `error`, and `done` with the session id and usage; each has an `id:` for `Last-Event-ID` on GET /v1/sessions/{id}/events. Without `session_id` a session is created; its id is in the response and the `X-Session-Id` header.',
      body: ChatRequestSchema,
      response: { 200: ChatResponseSchema, ...errors }
    }
  }, async (request, reply) => {
    const body = request.body
    const llm = body.config?.llm ?? {}
    app.models.get(llm.model) // an unknown model is a 400 before anything is created
    const session = body.session_id
      ? await sessions.get(body.session_id, request.principal)
      : await sessions.create(request.principal, { settings: { ...(llm.model ? { model: llm.model } : {}), ...(body.auto_run !== undefined ? { auto_run: body.auto_run } : {}) } })
    reply.header('x-session-id', session.id)
    const input: Message[] = body.messages.map(m => ({ role: m.role, type: m.type ?? 'message', content: m.content, ...(m.format ? { format: m.format } : {}) }))
    const run = await runs.start(session, input, { model: llm.model, temperature: llm.temperature, maxTokens: llm.max_tokens, autoRun: body.auto_run, via: 'chat' })

    if (!body.stream) {
      const outcome = await run.done
      if (outcome.error) throw outcome.error
      return { object: 'chat.turn' as const, session_id: session.id, run_id: run.id, messages: outcome.messages, usage: outcome.usage, finish_reason: outcome.finishReason }
    }
    const sse = openSse(reply)
    const follower = new AbortController()
    reply.raw.on('close', () => follower.abort())
    // The run goes on if the client leaves; it can resume from the last id it saw on /v1/sessions/:id/events.
    await forwardEvents(sse, runs.follow(session.id, run, follower.signal), app.config.WS_SLOW_CLOSE_MS)
    follower.abort()
    sse.end()
    return reply
  })

  app.get('/sessions/:id/events', {
    schema: {
      tags: ['chat'],
      summary: "Replay and follow a session's event log (SSE)",
      description: 'Sends every event after `after` (or the `Last-Event-ID` header; `after=now`: only events from now on), then new ones as they happen, with a comment line every 15 s. Each event is sent exactly once, in order, by any server process sharing the Redis.',
      params: IdParamsSchema,
      querystring: Type.Object({ after: Type.Optional(Type.String()) }),
      response: { 200: Type.String({ description: 'text/event-stream' }), ...errors }
    }
  }, async (request, reply) => {
    const session = await sessions.get(request.params.id, request.principal)
    const header = request.headers['last-event-id']
    let after = (typeof header === 'string' && header) || request.query.after
    if (after !== undefined && after !== 'now' && !EVENT_ID.test(after)) throw new AppError(400, 'validation_error', 'querystring/after must be an event id such as 1732000000000-0, or now')
    if (after === 'now') after = await events.lastId(session.id) ?? undefined
    const sse = openSse(reply)
    const follower = new AbortController()
    reply.raw.on('close', () => follower.abort())
    const heartbeat = setInterval(() => sse.comment('ping'), 15_000)
    try {
      await forwardEvents(sse, events.follow(session.id, after, follower.signal), app.config.WS_SLOW_CLOSE_MS)
    } finally {
      follower.abort()
      clearInterval(heartbeat)
      sse.end()
    }
    return reply
  })

  app.post('/sessions/:id/confirm', {
    preHandler: app.limitPerTarget,
    schema: { tags: ['chat'], summary: 'Approve or decline the code block a run waits on (auto_run off)', params: IdParamsSchema, body: ConfirmSchema, response: { 200: Type.Object({ code_id: Type.String(), approved: Type.Boolean() }), ...errors } }
  }, async (request) => {
    const session = await sessions.get(request.params.id, request.principal)
    await runs.confirm(session.id, request.body.code_id, request.body.approve)
    return { code_id: request.body.code_id, approved: request.body.approve }
  })

  app.post('/sessions/:id/interrupt', {
    preHandler: app.limitPerTarget,
    schema: { tags: ['chat'], summary: 'Stop the running turn: the model stream and the code', params: IdParamsSchema, response: { 200: Type.Object({ interrupted: Type.Boolean() }), ...errors } }
  }, async (request) => {
    const session = await sessions.get(request.params.id, request.principal)
    return { interrupted: await runs.interrupt(session.id) }
  })
}

export default routes
