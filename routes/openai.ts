import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { randomBytes } from 'node:crypto'
import { ErrorSchema, commonErrors } from '../schemas/common.js'
import { ModelListSchema } from '../schemas/models.js'
import type { Message } from '../schemas/sessions.js'
import type { FinishReason } from '../schemas/chat.js'
import { MarkdownRenderer } from '../services/interpreter/render.js'
import { AppError } from '../services/errors.js'

const ContentPart = Type.Object({ type: Type.String(), text: Type.Optional(Type.String()), image_url: Type.Optional(Type.Object({ url: Type.String() })) })
const CompletionRequestSchema = Type.Object({
  model: Type.String(),
  messages: Type.Array(Type.Object({
    role: Type.Enum(['system', 'developer', 'user', 'assistant', 'tool']),
    content: Type.Union([Type.String(), Type.Array(ContentPart), Type.Null()])
  }), { minItems: 1 }),
  stream: Type.Optional(Type.Boolean()),
  stream_options: Type.Optional(Type.Object({ include_usage: Type.Optional(Type.Boolean()) })),
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  max_completion_tokens: Type.Optional(Type.Integer({ minimum: 1 }))
})

const CompletionSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('chat.completion'),
  created: Type.Integer(),
  model: Type.String(),
  choices: Type.Array(Type.Object({
    index: Type.Integer(),
    message: Type.Object({ role: Type.Literal('assistant'), content: Type.String() }),
    finish_reason: Type.String()
  })),
  usage: Type.Object({ prompt_tokens: Type.Integer(), completion_tokens: Type.Integer(), total_tokens: Type.Integer() })
})

const finish = (reason: FinishReason) => reason === 'step_limit' ? 'length' : 'stop'

/** The request's messages as LMC history; image parts become user images. */
function toHistory (messages: Array<{ role: string, content: string | Array<{ type: string, text?: string, image_url?: { url: string } }> | null }>): Message[] {
  const out: Message[] = []
  for (const m of messages) {
    const parts = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : (m.content ?? [])
    const role = m.role === 'developer' ? 'system' : m.role === 'tool' ? 'user' : m.role as Message['role']
    const text = parts.filter(p => p.type === 'text').map(p => p.text ?? '').join('\n')
    if (text || role !== 'user') out.push({ role, type: 'message', content: text })
    for (const p of parts) {
      const b64 = /^data:image\/\w+;base64,(.+)$/.exec(p.image_url?.url ?? '')?.[1]
      if (p.type === 'image_url' && b64) out.push({ role: 'user', type: 'image', format: 'base64.png', content: b64 })
    }
  }
  return out
}

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { runs, sessions } = app

  app.get('/models', {
    schema: { tags: ['openai'], summary: 'The configured models, in OpenAI\'s format', response: { 200: ModelListSchema, ...commonErrors } }
  }, async () => ({ object: 'list' as const, data: app.models.list().map(m => ({ id: m.name, object: 'model' as const, created: 0, owned_by: m.provider })) }))

  app.post('/chat/completions', {
    schema: {
      tags: ['openai'],
      summary: 'OpenAI-compatible chat completions that run code (auto_run)',
      description: 'Code, its output and images are rendered into the assistant content (fenced blocks, markdown data URIs). Send `X-Session-Id` to keep a sandbox and history across requests; without it each request gets a fresh sandbox, released afterwards. Streaming ends with `data: [DONE]`.',
      body: CompletionRequestSchema,
      response: { 200: CompletionSchema, 404: ErrorSchema, 409: ErrorSchema, 502: ErrorSchema, 504: ErrorSchema, ...commonErrors }
    }
  }, async (request, reply) => {
    const body = request.body
    app.models.get(body.model)
    const header = request.headers['x-session-id']
    const sessionId = typeof header === 'string' && header ? header : null
    const session = sessionId ? await sessions.get(sessionId, request.principal) : await sessions.create(request.principal, { title: 'chat.completions' })
    const history = toHistory(body.messages)
    if (!history.some(m => m.role === 'user')) throw new AppError(400, 'validation_error', 'body/messages must contain a user message')
    const run = await runs.start(session, [], { model: body.model, temperature: body.temperature, maxTokens: body.max_completion_tokens ?? body.max_tokens, autoRun: true, history, via: 'openai' })
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`
    const created = Math.floor(Date.now() / 1000)
    const renderer = new MarkdownRenderer()
    const follower = new AbortController()
    if (sessionId) reply.header('x-session-id', sessionId)
    const release = async () => {
      if (sessionId) return
      await runs.endSession(session).catch(() => {})
    }

    const chunk = (delta: Record<string, unknown>, finishReason: string | null = null) =>
      ({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [{ index: 0, delta, finish_reason: finishReason }] })
    if (body.stream) {
      reply.hijack()
      reply.raw.writeHead(200, { ...reply.getHeaders() as Record<string, string>, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' })
      reply.raw.on('close', () => follower.abort())
      const write = (data: unknown) => { if (!reply.raw.writableEnded) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`) }
      write(chunk({ role: 'assistant', content: '' }))
      for await (const { event: e } of runs.follow(session.id, run, follower.signal)) {
        if (e.type === 'chunk') {
          const text = renderer.render(e.chunk)
          if (text) write(chunk({ content: text }))
        } else if (e.type === 'run_end') {
          if (e.error) write({ error: e.error })
          else {
            write(chunk({}, finish(e.finish_reason)))
            if (body.stream_options?.include_usage) write({ id, object: 'chat.completion.chunk', created, model: body.model, choices: [], usage: e.usage })
          }
        }
      }
      follower.abort()
      if (!reply.raw.writableEnded) reply.raw.end('data: [DONE]\n\n')
      await release()
      return reply
    }

    let content = ''
    for await (const { event: e } of runs.follow(session.id, run, follower.signal)) {
      if (e.type === 'chunk') content += renderer.render(e.chunk)
    }
    follower.abort()
    const outcome = await run.done
    await release()
    if (outcome.error) throw outcome.error
    return {
      id,
      object: 'chat.completion' as const,
      created,
      model: body.model,
      choices: [{ index: 0, message: { role: 'assistant' as const, content: content.trim() }, finish_reason: finish(outcome.finishReason) }],
      usage: outcome.usage
    }
  })
}

export default routes
