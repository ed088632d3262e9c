import { Type, type Static } from 'typebox'
import { UsageSchema } from './sessions.js'

/** A streamed LMC chunk: a message in pieces, `start` and `end` around each. */
export const ChunkSchema = Type.Object({
  role: Type.Enum(['user', 'assistant', 'computer']),
  type: Type.Enum(['message', 'code', 'console', 'image', 'file', 'confirmation']),
  format: Type.Optional(Type.String()),
  content: Type.Optional(Type.Unknown()),
  id: Type.Optional(Type.String()),
  start: Type.Optional(Type.Boolean()),
  end: Type.Optional(Type.Boolean())
})
export type Chunk = Static<typeof ChunkSchema>

export type Usage = Static<typeof UsageSchema>
export type FinishReason = 'stop' | 'step_limit' | 'interrupted' | 'error'

/** What a run writes to its session's event log, in order. */
export type RunEvent =
  | { type: 'run_start', run_id: string, model: string }
  | { type: 'chunk', run_id: string, chunk: Chunk }
  | { type: 'fallback', run_id: string, from: string, to: string, reason: string }
  | { type: 'run_end', run_id: string, session_id: string, usage: Usage, finish_reason: FinishReason, error?: { message: string, type: string, code: string, retry_after?: number } }

export const ChatInputMessageSchema = Type.Object({
  role: Type.Enum(['user', 'assistant', 'computer', 'system']),
  type: Type.Optional(Type.Enum(['message', 'code', 'console', 'image', 'file'])),
  format: Type.Optional(Type.String()),
  content: Type.String({ maxLength: 1_000_000 })
}, { additionalProperties: false })

export const ChatRequestSchema = Type.Object({
  messages: Type.Array(ChatInputMessageSchema, { minItems: 1 }),
  session_id: Type.Optional(Type.String({ maxLength: 64 })),
  stream: Type.Optional(Type.Boolean()),
  auto_run: Type.Optional(Type.Boolean()),
  config: Type.Optional(Type.Object({
    llm: Type.Optional(Type.Object({
      model: Type.Optional(Type.String()),
      temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
      max_tokens: Type.Optional(Type.Integer({ minimum: 1 }))
    }, { additionalProperties: false }))
  }, { additionalProperties: false }))
}, { additionalProperties: false })
export type ChatRequest = Static<typeof ChatRequestSchema>

export const ConfirmSchema = Type.Object({ code_id: Type.String(), approve: Type.Boolean() }, { additionalProperties: false })
