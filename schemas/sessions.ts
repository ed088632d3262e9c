import { Type, type Static } from 'typebox'
import { Metadata } from './common.js'
import { NetworkPolicySchema } from './sandboxes.js'

/** LMC, Open Interpreter's message format. */
export const MessageSchema = Type.Object({
  role: Type.Union([Type.Literal('user'), Type.Literal('assistant'), Type.Literal('computer'), Type.Literal('system')]),
  type: Type.Enum(['message', 'code', 'console', 'image', 'file', 'confirmation']),
  format: Type.Optional(Type.String()),
  content: Type.Union([Type.String(), Type.Record(Type.String(), Type.Unknown())]),
  recipient: Type.Optional(Type.String()),
  id: Type.Optional(Type.String()),
  created_at: Type.Optional(Type.String({ format: 'date-time' }))
})
export type Message = Static<typeof MessageSchema>

export const SessionSettingsSchema = Type.Object({
  model: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  auto_run: Type.Optional(Type.Boolean()),
  system_message: Type.Optional(Type.String({ maxLength: 32768 })),
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  network: Type.Optional(NetworkPolicySchema)
})

export const UsageSchema = Type.Object({
  prompt_tokens: Type.Integer(),
  completion_tokens: Type.Integer(),
  total_tokens: Type.Integer()
})

export const SessionSchema = Type.Object({
  id: Type.String(),
  object: Type.Literal('session'),
  title: Type.Union([Type.String(), Type.Null()]),
  owner: Type.String({ description: 'name of the API key that created it' }),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  settings: SessionSettingsSchema,
  metadata: Metadata,
  message_count: Type.Integer(),
  sandbox_id: Type.Union([Type.String(), Type.Null()]),
  usage: UsageSchema
})
export type Session = Static<typeof SessionSchema>

export const CreateSessionSchema = Type.Object({
  title: Type.Optional(Type.String({ maxLength: 256 })),
  settings: Type.Optional(SessionSettingsSchema),
  metadata: Type.Optional(Metadata)
}, { additionalProperties: false })

export const UpdateSessionSchema = Type.Object({
  title: Type.Optional(Type.String({ maxLength: 256 })),
  settings: Type.Optional(SessionSettingsSchema),
  metadata: Type.Optional(Metadata)
}, { additionalProperties: false, minProperties: 1 })
export type SessionPatch = Static<typeof UpdateSessionSchema>

export const SessionListSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(SessionSchema),
  has_more: Type.Boolean(),
  next_offset: Type.Union([Type.Integer(), Type.Null()])
})

export const MessageListSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(MessageSchema),
  has_more: Type.Boolean(),
  next_offset: Type.Union([Type.Integer(), Type.Null()])
})
