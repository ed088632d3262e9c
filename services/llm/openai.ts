import OpenAI from 'openai'
import type { ChatCompletionMessageParam, ChatCompletionContentPart } from 'openai/resources/chat/completions'
import type { ModelEntry } from '../../schemas/models.js'
import { classify, type ChatMessage, type LlmEvent, type LlmProvider, type StreamRequest } from './types.js'

function toOpenAI (messages: ChatMessage[], vision: boolean): ChatCompletionMessageParam[] {
  const out: ChatCompletionMessageParam[] = []
  const imageParts = (images: string[]): ChatCompletionContentPart[] =>
    images.map(b64 => ({ type: 'image_url', image_url: { url: `data:image/png;base64,${b64}` } }))
  for (const m of messages) {
    if (m.role === 'system') out.push({ role: 'system', content: m.content })
    else if (m.role === 'user') {
      out.push(vision && m.images?.length
        ? { role: 'user', content: [{ type: 'text', text: m.content }, ...imageParts(m.images)] }
        : { role: 'user', content: m.content })
    } else if (m.role === 'assistant') {
      out.push({
        role: 'assistant',
        content: m.content || null,
        ...(m.toolCalls?.length ? { tool_calls: m.toolCalls.map(c => ({ id: c.id, type: 'function' as const, function: { name: c.name, arguments: c.arguments } })) } : {})
      })
    } else {
      out.push({ role: 'tool', tool_call_id: m.toolCallId, content: m.content })
      // Tool messages cannot carry images; a vision model gets them in a user message right after.
      if (vision && m.images?.length) out.push({ role: 'user', content: [{ type: 'text', text: 'Images produced by the code above:' }, ...imageParts(m.images)] })
    }
  }
  return out
}

/** OpenAI, or any OpenAI-compatible server (Ollama, vLLM, llama.cpp, a LiteLLM proxy) through base_url. */
export class OpenAIProvider implements LlmProvider {
  private readonly client: OpenAI

  constructor (private readonly entry: ModelEntry) {
    this.client = new OpenAI({ apiKey: entry.api_key ?? 'unused', baseURL: entry.base_url, maxRetries: 0, timeout: entry.timeout_ms ?? 60_000 })
  }

  async * stream (req: StreamRequest): AsyncIterable<LlmEvent> {
    try {
      const stream = await this.client.chat.completions.create({
        model: this.entry.model,
        messages: toOpenAI(req.messages, this.entry.vision === true),
        tools: req.tools.map(t => ({ type: 'function' as const, function: { name: t.name, description: t.description, parameters: t.parameters } })),
        temperature: req.temperature,
        max_tokens: req.maxTokens,
        stream: true,
        stream_options: { include_usage: true }
      }, { signal: req.signal })
      for await (const chunk of stream) {
        if (chunk.usage) yield { type: 'usage', input: chunk.usage.prompt_tokens, output: chunk.usage.completion_tokens }
        const choice = chunk.choices?.[0]
        if (!choice) continue
        if (choice.delta?.content) yield { type: 'text', text: choice.delta.content }
        for (const call of choice.delta?.tool_calls ?? []) {
          if (call.id || call.function?.name) yield { type: 'tool_start', index: call.index, id: call.id ?? `call_${call.index}`, name: call.function?.name ?? 'execute' }
          if (call.function?.arguments) yield { type: 'tool_args', index: call.index, delta: call.function.arguments }
        }
        if (choice.finish_reason) yield { type: 'finish', reason: choice.finish_reason }
      }
    } catch (err) {
      throw classify(err, this.entry.name)
    }
  }
}
