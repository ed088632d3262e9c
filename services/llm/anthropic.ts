import Anthropic from '@anthropic-ai/sdk'
import type { MessageParam, ContentBlockParam, ToolResultBlockParam } from '@anthropic-ai/sdk/resources/messages'
import type { ModelEntry } from '../../schemas/models.js'
import { classify, type ChatMessage, type LlmEvent, type LlmProvider, type StreamRequest } from './types.js'

function toAnthropic (messages: ChatMessage[], vision: boolean): { system: string, messages: MessageParam[] } {
  const system: string[] = []
  const out: MessageParam[] = []
  // Anthropic wants alternating roles: consecutive blocks of one role are merged into one message.
  const push = (role: 'user' | 'assistant', blocks: ContentBlockParam[]) => {
    const last = out[out.length - 1]
    if (last && last.role === role) (last.content as ContentBlockParam[]).push(...blocks)
    else out.push({ role, content: blocks })
  }
  const images = (list: string[] = []) => vision
    ? list.map(data => ({ type: 'image' as const, source: { type: 'base64' as const, media_type: 'image/png' as const, data } }))
    : []
  for (const m of messages) {
    if (m.role === 'system') system.push(m.content)
    else if (m.role === 'user') push('user', [{ type: 'text', text: m.content || ' ' }, ...images(m.images)])
    else if (m.role === 'assistant') {
      const blocks: ContentBlockParam[] = m.content ? [{ type: 'text', text: m.content }] : []
      for (const call of m.toolCalls ?? []) {
        let input: unknown = {}
        try { input = JSON.parse(call.arguments || '{}') } catch { input = { raw: call.arguments } }
        blocks.push({ type: 'tool_use', id: call.id, name: call.name, input })
      }
      if (blocks.length) push('assistant', blocks)
    } else {
      const result: ToolResultBlockParam = { type: 'tool_result', tool_use_id: m.toolCallId, content: [{ type: 'text', text: m.content || '(no output)' }, ...images(m.images)], ...(m.isError ? { is_error: true } : {}) }
      push('user', [result])
    }
  }
  return { system: system.join('\n\n'), messages: out }
}

export class AnthropicProvider implements LlmProvider {
  private readonly client: Anthropic

  constructor (private readonly entry: ModelEntry) {
    this.client = new Anthropic({ apiKey: entry.api_key, baseURL: entry.base_url, maxRetries: 0, timeout: entry.timeout_ms ?? 60_000 })
  }

  async * stream (req: StreamRequest): AsyncIterable<LlmEvent> {
    const { system, messages } = toAnthropic(req.messages, this.entry.vision === true)
    try {
      const stream = await this.client.messages.create({
        model: this.entry.model,
        ...(system ? { system } : {}),
        messages,
        tools: req.tools.map(t => t.native?.provider === 'anthropic'
          ? { type: t.native.type, name: t.name, ...t.native.options } as Anthropic.ToolUnion
          : { name: t.name, description: t.description, input_schema: t.parameters as Anthropic.Tool.InputSchema }),
        max_tokens: req.maxTokens, // this SDK's Messages API takes no temperature; the setting applies to openai models
        stream: true
      }, { signal: req.signal })
      let input = 0
      for await (const event of stream) {
        if (event.type === 'message_start') input = event.message.usage.input_tokens
        else if (event.type === 'content_block_start' && event.content_block.type === 'tool_use') {
          yield { type: 'tool_start', index: event.index, id: event.content_block.id, name: event.content_block.name }
        } else if (event.type === 'content_block_delta') {
          if (event.delta.type === 'text_delta') yield { type: 'text', text: event.delta.text }
          else if (event.delta.type === 'input_json_delta') yield { type: 'tool_args', index: event.index, delta: event.delta.partial_json }
        } else if (event.type === 'message_delta') {
          yield { type: 'usage', input, output: event.usage.output_tokens }
          if (event.delta.stop_reason) yield { type: 'finish', reason: event.delta.stop_reason }
        }
      }
    } catch (err) {
      throw classify(err, this.entry.name)
    }
  }
}
