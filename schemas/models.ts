import { Type, type Static } from 'typebox'

export const ModelEntrySchema = Type.Object({
  name: Type.String({ pattern: '^[A-Za-z0-9_.:/-]{1,128}$' }),
  provider: Type.Enum(['openai', 'anthropic']),
  model: Type.String({ minLength: 1 }),
  api_key: Type.Optional(Type.String()),
  base_url: Type.Optional(Type.String({ pattern: '^https?://[^\\s]+$' })),
  temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
  max_tokens: Type.Optional(Type.Integer({ minimum: 1 })),
  context_window: Type.Optional(Type.Integer({ minimum: 512 })),
  system_message: Type.Optional(Type.String()),
  fallback: Type.Optional(Type.Array(Type.String())),
  vision: Type.Optional(Type.Boolean({ description: 'pass images (plots) back to the model' })),
  native_tools: Type.Optional(Type.Boolean({ description: 'offer Claude\'s own bash and text editor tools beside execute (anthropic models; default true)' })),
  timeout_ms: Type.Optional(Type.Integer({ minimum: 100 }))
}, { additionalProperties: false })
export type ModelEntry = Static<typeof ModelEntrySchema>

export const ModelsFileSchema = Type.Object({
  default: Type.Optional(Type.String()),
  models: Type.Array(ModelEntrySchema)
}, { additionalProperties: false })
export type ModelsFile = Static<typeof ModelsFileSchema>

/** GET /v1/models, in OpenAI's format. */
export const ModelListSchema = Type.Object({
  object: Type.Literal('list'),
  data: Type.Array(Type.Object({
    id: Type.String(),
    object: Type.Literal('model'),
    created: Type.Integer(),
    owned_by: Type.String()
  }))
})
