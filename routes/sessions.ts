import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import type { Principal } from '../services/auth.js'
import { ErrorSchema, IdParamsSchema, OffsetSchema, PageQuerySchema, commonErrors } from '../schemas/common.js'
import { CreateSessionSchema, MessageListSchema, SessionListSchema, SessionSchema, UpdateSessionSchema } from '../schemas/sessions.js'

const page = (offset: number, limit: number, hasMore: boolean) => ({ has_more: hasMore, next_offset: hasMore ? offset + limit : null })

const routes: FastifyPluginAsyncTypebox = async (app) => {
  const { sessions } = app
  const tags = ['sessions']
  /** A session's network policy is checked against the key that sets it; its sandboxes then get it as set. */
  const checkNetwork = (principal: Principal, network: unknown) => {
    if (network !== undefined) app.sandboxes.networkRules(principal, network)
  }

  app.post('', {
    schema: { tags, summary: 'Create a session', body: CreateSessionSchema, response: { 201: SessionSchema, 403: ErrorSchema, ...commonErrors } }
  }, async (request, reply) => {
    checkNetwork(request.principal, request.body.settings?.network)
    return reply.status(201).send(await sessions.create(request.principal, request.body))
  })

  app.get('', {
    schema: { tags, summary: "List this key's sessions (every key's with all=true, admin keys only), newest first", querystring: Type.Intersect([PageQuerySchema, Type.Object({ all: Type.Boolean({ default: false }) })]), response: { 200: SessionListSchema, 403: ErrorSchema, ...commonErrors } }
  }, async (request) => {
    const { limit, offset, all } = request.query
    const result = await sessions.list(request.principal, { limit, offset }, all)
    return { object: 'list' as const, data: result.items, ...page(offset, limit, result.hasMore) }
  })

  app.get('/:id', {
    schema: { tags, summary: 'Get a session', params: IdParamsSchema, response: { 200: SessionSchema, 404: ErrorSchema, ...commonErrors } }
  }, async (request) => sessions.get(request.params.id, request.principal))

  app.patch('/:id', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: "Update a session's title, settings or metadata (a new network policy applies to its next sandbox)", params: IdParamsSchema, body: UpdateSessionSchema, response: { 200: SessionSchema, 403: ErrorSchema, 404: ErrorSchema, ...commonErrors } }
  }, async (request) => {
    checkNetwork(request.principal, request.body.settings?.network)
    return await sessions.update(request.params.id, request.principal, request.body)
  })

  app.delete('/:id', {
    preHandler: app.limitPerTarget,
    schema: { tags, summary: 'Delete a session, its history and its sandbox', params: IdParamsSchema, response: { 204: Type.Null(), 404: ErrorSchema, ...commonErrors } }
  }, async (request, reply) => {
    await app.runs.endSession(await sessions.get(request.params.id, request.principal))
    return reply.status(204).send(null)
  })

  app.get('/:id/messages', {
    schema: { tags, summary: "A session's messages (LMC), oldest first", params: IdParamsSchema, querystring: Type.Object({ limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }), offset: OffsetSchema }), response: { 200: MessageListSchema, 404: ErrorSchema, ...commonErrors } }
  }, async (request) => {
    const { limit, offset } = request.query
    const result = await sessions.messages(request.params.id, request.principal, { limit, offset })
    return { object: 'list' as const, data: result.items, ...page(offset, limit, result.hasMore) }
  })
}

export default routes
