import { Type, type Static } from 'typebox'

export const ErrorSchema = Type.Object({
  error: Type.Object({
    message: Type.String(),
    type: Type.String(),
    code: Type.String(),
    retry_after: Type.Optional(Type.Number({ description: 'seconds to wait before trying again (429, and 503 capacity_exhausted)' }))
  })
}, { description: 'Every 4xx and 5xx response has this body' })
export type ErrorBody = Static<typeof ErrorSchema>

export const IdParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) })

/** The largest list offset: Redis takes list and sorted-set indexes as 64-bit integers; 1e21 is not one. */
export const MAX_OFFSET = 1_000_000_000
export const OffsetSchema = Type.Integer({ minimum: 0, maximum: MAX_OFFSET, default: 0 })

/** A Redis stream id (`ms-seq`) that Redis accepts: each part fits in 64 bits. */
export const EventIdSchema = Type.String({ pattern: '^\\d{1,16}-\\d{1,16}$', description: 'an event id, as in the `id:` of an event' })

export const PageQuerySchema = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 20 }),
  offset: OffsetSchema
})
export type PageQuery = Static<typeof PageQuerySchema>

export const Metadata = Type.Record(Type.String({ maxLength: 64 }), Type.String({ maxLength: 1024 }), { description: 'free-form string pairs' })

/** The error responses every authenticated route can give. */
export const commonErrors = { 400: ErrorSchema, 401: ErrorSchema, 429: ErrorSchema, 503: ErrorSchema }
