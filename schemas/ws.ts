import { Type, type Static } from 'typebox'
import { ChatInputMessageSchema } from './chat.js'
import { Language } from './sandboxes.js'
import { EventIdSchema } from './common.js'

/** Messages a client sends on /v1/ws (JSON text frames). */
export const ClientMessageSchema = Type.Union([
  Type.Object({ type: Type.Literal('hello'), session_id: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: false }),
  Type.Object({
    type: Type.Literal('chat'),
    content: Type.Optional(Type.String()),
    messages: Type.Optional(Type.Array(ChatInputMessageSchema, { minItems: 1 })),
    model: Type.Optional(Type.String()),
    auto_run: Type.Optional(Type.Boolean())
  }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('execute'), language: Language, code: Type.String() }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('confirm'), code_id: Type.String(), approve: Type.Boolean() }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('interrupt') }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('resume'), after: EventIdSchema }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('ping') }, { additionalProperties: false })
])
export type ClientMessage = Static<typeof ClientMessageSchema>

/** Messages the server sends. `event` frames carry the session's event log, numbered by `id`. */
export type ServerMessage =
  | { type: 'hello', session_id: string, last_event_id: string | null }
  | { type: 'event', id: string, event: string, data: unknown }
  | { type: 'ack', of: string, [key: string]: unknown }
  | { type: 'error', error: { message: string, type: string, code: string, [key: string]: unknown }, of?: string }
  | { type: 'pong' }
