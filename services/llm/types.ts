import type { ModelEntry } from '../../schemas/models.js'

/** Provider-neutral conversation, converted to each provider's wire format by its adapter. */
export type ChatMessage =
  | { role: 'system', content: string }
  | { role: 'user', content: string, images?: string[] }
  | { role: 'assistant', content: string, toolCalls?: ToolCall[] }
  | { role: 'tool', toolCallId: string, content: string, images?: string[], isError?: boolean }

export interface ToolCall { id: string, name: string, arguments: string }
/**
 * A tool the model may call. `native` names a vendor's own tool type (Claude's `bash_20250124`, `text_editor_20250728`):
 * a provider that knows it declares it as that type (the model was trained on it); any other declares the function.
 */
export interface ToolDef { name: string, description: string, parameters: Record<string, unknown>, native?: { type: string, provider: 'anthropic', options?: Record<string, unknown> } }

export type LlmEvent =
  | { type: 'text', text: string }
  | { type: 'tool_start', index: number, id: string, name: string }
  | { type: 'tool_args', index: number, delta: string }
  | { type: 'usage', input: number, output: number }
  | { type: 'finish', reason: string }

export interface StreamRequest {
  model: ModelEntry
  messages: ChatMessage[]
  tools: ToolDef[]
  temperature: number
  maxTokens: number
  signal: AbortSignal
}

export interface LlmProvider {
  stream (request: StreamRequest): AsyncIterable<LlmEvent>
}

/** Why a provider call failed, in terms that decide between falling back and giving up. */
export class LlmError extends Error {
  constructor (readonly kind: 'auth' | 'rate_limit' | 'server' | 'timeout' | 'connection' | 'bad_request' | 'aborted', readonly model: string, message: string, readonly status?: number) {
    super(message)
    this.name = 'LlmError'
  }

  get retryable (): boolean {
    return this.kind === 'rate_limit' || this.kind === 'server' || this.kind === 'timeout' || this.kind === 'connection'
  }
}

/** Maps an error of either official SDK (they share the shape) to an LlmError without leaking its details. */
export function classify (err: unknown, model: string): LlmError {
  if (err instanceof LlmError) return err
  const e = err as { status?: number, name?: string, constructor?: { name?: string } }
  const kind = e.constructor?.name ?? e.name ?? ''
  if (/UserAbort|AbortError/.test(kind)) return new LlmError('aborted', model, 'the request was interrupted')
  if (/Timeout/.test(kind)) return new LlmError('timeout', model, `model "${model}" did not answer in time`)
  if (/Connection/.test(kind)) return new LlmError('connection', model, `model "${model}" could not be reached`)
  const status = e.status
  if (status === 401 || status === 403) return new LlmError('auth', model, `the provider of model "${model}" rejected its API key`, status)
  if (status === 429) return new LlmError('rate_limit', model, `model "${model}" is rate limited by its provider`, status)
  if (status !== undefined && status >= 500) return new LlmError('server', model, `the provider of model "${model}" failed (HTTP ${status})`, status)
  if (status !== undefined) return new LlmError('bad_request', model, `the provider of model "${model}" refused the request (HTTP ${status})`, status)
  return new LlmError('connection', model, `model "${model}" failed: ${(err as Error)?.message ?? String(err)}`)
}
