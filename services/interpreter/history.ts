import type { Message } from '../../schemas/sessions.js'
import type { ChatMessage, ToolCall } from '../llm/types.js'
import { BASH_TOOL, EDITOR_TOOL } from './claude-tools.js'

const text = (content: Message['content']) => typeof content === 'string' ? content : JSON.stringify(content)

/**
 * The tool call a stored code message was: Claude's bash (its command, or the input of a restart) or text editor (the
 * input), stored with the tool's name as format; any other code, the execute tool in its language.
 */
function callOf (m: Message, id: string): ToolCall {
  if (m.format === BASH_TOOL) return { id, name: BASH_TOOL, arguments: JSON.stringify(typeof m.content === 'string' ? { command: m.content } : m.content) }
  if (m.format === EDITOR_TOOL) return { id, name: EDITOR_TOOL, arguments: JSON.stringify(m.content) }
  return { id, name: 'execute', arguments: JSON.stringify({ language: m.format ?? 'python', code: text(m.content) }) }
}

/** Stored LMC messages as a provider-neutral conversation: code becomes a tool call, its console output and images the result. */
export function toChatMessages (messages: Message[], outputLimit = Infinity): ChatMessage[] {
  const out: ChatMessage[] = []
  let assistant: { content: string, toolCalls: ToolCall[] } | null = null
  const results = new Map<string, { content: string, images: string[], isError?: boolean }>()
  const flush = () => {
    if (!assistant) return
    out.push({ role: 'assistant', content: assistant.content, ...(assistant.toolCalls.length ? { toolCalls: assistant.toolCalls } : {}) })
    for (const call of assistant.toolCalls) {
      const result = results.get(call.id)
      out.push({ role: 'tool', toolCallId: call.id, content: cutForModel(result?.content || '(no output)', outputLimit), ...(result?.images.length ? { images: result.images } : {}), ...(result?.isError ? { isError: true } : {}) })
    }
    assistant = null
    results.clear()
  }
  let generated = 0
  for (const m of messages) {
    if (m.role === 'user' || m.role === 'system') {
      flush()
      if (m.type === 'message') out.push({ role: m.role, content: text(m.content) })
      else if (m.role === 'user' && m.type === 'image') out.push({ role: 'user', content: '(image)', images: [text(m.content)] })
      continue
    }
    if (m.role === 'assistant' && m.type === 'message') {
      if (assistant?.toolCalls.length) flush()
      assistant ??= { content: '', toolCalls: [] }
      assistant.content += text(m.content)
    } else if (m.role === 'assistant' && m.type === 'code') {
      assistant ??= { content: '', toolCalls: [] }
      const id = m.id ?? `call_history_${++generated}`
      assistant.toolCalls.push(callOf(m, id))
    } else if (m.role === 'computer' && assistant?.toolCalls.length) {
      const id = m.id ?? assistant.toolCalls[assistant.toolCalls.length - 1].id
      const result = results.get(id) ?? { content: '', images: [] }
      if (m.type === 'image') result.images.push(text(m.content))
      else if (m.type === 'console') {
        result.content += text(m.content)
        if (m.format === 'error') result.isError = true
      }
      results.set(id, result)
    }
  }
  flush()
  return out
}

/** Cuts text for the model, keeping the tail (where errors and results usually are). */
export function cutForModel (output: string, limit: number): string {
  if (output.length <= limit) return output
  return `[output truncated: showing the last ${limit} of ${output.length} characters]\n${output.slice(-limit)}`
}

const estimateTokens = (m: ChatMessage) => Math.ceil(((m.content?.length ?? 0) + ('toolCalls' in m && m.toolCalls ? JSON.stringify(m.toolCalls).length : 0)) / 4) + 8 + ('images' in m && m.images ? m.images.length * 800 : 0)

/**
 * Drops the oldest turns (a turn starts at a user message, so tool calls stay with their results) until the
 * conversation fits the context window; the system message and the last turn always stay.
 */
export function trimToContext (messages: ChatMessage[], budgetTokens: number): ChatMessage[] {
  const system = messages.filter(m => m.role === 'system')
  const rest = messages.filter(m => m.role !== 'system')
  const starts = rest.map((m, i) => m.role === 'user' ? i : -1).filter(i => i >= 0)
  let from = 0
  const total = (xs: ChatMessage[]) => xs.reduce((sum, m) => sum + estimateTokens(m), 0)
  for (const start of starts.slice(1)) {
    if (total(system) + total(rest.slice(from)) <= budgetTokens) break
    from = start
  }
  return [...system, ...rest.slice(from)]
}
