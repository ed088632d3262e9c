import type { Message } from '../../schemas/sessions.js'
import type { Chunk, FinishReason, Usage } from '../../schemas/chat.js'
import type { Execution, ExecutionEvent, Language } from '../../schemas/sandboxes.js'
import type { ModelRegistry } from '../llm/registry.js'
import type { ChatMessage, ToolDef } from '../llm/types.js'
import { LlmError } from '../llm/types.js'
import { toChatMessages, trimToContext } from './history.js'
import { partialStringField } from './partial-json.js'
import { LANGUAGES, findLanguage, type LanguageSpec } from '../sandbox/languages.js'
import { BASH_TOOL, EDITOR_TOOL, claudeTools, type ToolOutcome } from './claude-tools.js'

/** The execute tool the model sees, offering the languages this server's image runs. */
export function executeTool (languages: LanguageSpec[] = LANGUAGES): ToolDef {
  const stateful = languages.filter(l => l.kernel).map(l => l.id)
  const fresh = languages.filter(l => !l.kernel).map(l => l.id)
  return {
    name: 'execute',
    description: `Run code in a persistent sandbox. In ${stateful.join(', ')} variables, imports and the working directory survive between calls` +
      (fresh.length ? `; ${fresh.join(', ')} run each call as a fresh program (files persist)` : '') +
      '. Returns stdout, stderr, the value of the last expression, and any plots. No network access.',
    parameters: {
      type: 'object',
      properties: {
        language: { type: 'string', enum: languages.map(l => l.id), description: languages.map(l => `${l.id}: ${l.name}`).join('; ') },
        code: { type: 'string', description: 'the code to run' }
      },
      required: ['language', 'code']
    }
  }
}

export const DEFAULT_SYSTEM_MESSAGE = 'You are Open Interpreter, a world-class programmer that can complete any goal by executing code. ' +
  'Use the execute tool to run python, javascript or shell code in a sandbox; its state persists between calls. ' +
  'Write small steps, look at their output, and continue until the task is done; then answer plainly.'

/** The language a model named (an id or an alias the server runs); python when it named none it knows. */
function languageOf (name: unknown, languages: LanguageSpec[]): Language {
  const spec = findLanguage(String(name ?? 'python'))
  return (spec && languages.includes(spec) ? spec.id : 'python') as Language
}

export type Decision = 'approved' | 'declined' | 'expired'

export interface TurnDeps {
  models: ModelRegistry
  /** Runs code in the session's sandbox. */
  execute (language: Language, code: string, onEvent: (e: ExecutionEvent) => void): Promise<Execution>
  /** Waits for the client to approve or decline a code block (auto_run off). */
  confirm (codeId: string): Promise<Decision>
  emit (chunk: Chunk): Promise<void>
  fallback (from: string, to: string, reason: string): Promise<void>
  /** Stores the messages of a finished step, so that history is consistent whatever happens next. */
  store (messages: Message[]): Promise<void>
  signal: AbortSignal
  /** Runs Claude's own tools in the session's sandbox; without it only `execute` is offered. */
  native?: {
    bash (input: Record<string, unknown>, onEvent: (e: ExecutionEvent) => void): Promise<ToolOutcome>
    edit (input: Record<string, unknown>): Promise<ToolOutcome>
  }
}

export interface TurnOptions {
  model: string
  temperature: number
  maxTokens: number
  autoRun: boolean
  maxSteps: number
  outputLimit: number
  systemMessage?: string
  /** The languages the execute tool offers (the image's); all of them by default. */
  languages?: LanguageSpec[]
}

export interface TurnResult { usage: Usage, finishReason: FinishReason }

interface PendingCall { id: string, name: string, args: string, streamed: string, started: boolean, language?: Language }

/** Whether a model is offered Claude's bash and text editor tools (an Anthropic model, unless its entry says not). */
function offersNative (model: { provider: string, native_tools?: boolean }, deps: TurnDeps): boolean {
  return model.provider === 'anthropic' && model.native_tools !== false && deps.native !== undefined
}

/**
 * One chat turn: the model answers, may call `execute`, sees the results, and goes on until it answers
 * without a tool call or the step limit is reached. Streams LMC chunks as it goes.
 */
export async function runTurn (history: Message[], deps: TurnDeps, opts: TurnOptions): Promise<TurnResult> {
  const usage: Usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 }
  const model = deps.models.get(opts.model)
  const system = opts.systemMessage ?? model.system_message ?? DEFAULT_SYSTEM_MESSAGE
  const conversation = [...history]
  const budget = (model.context_window ?? 128_000) - opts.maxTokens
  const languages = opts.languages ?? LANGUAGES
  const tools = [executeTool(languages), ...(offersNative(model, deps) ? claudeTools() : [])]

  for (let step = 0; step < opts.maxSteps; step++) {
    const chat: ChatMessage[] = trimToContext([{ role: 'system', content: system }, ...toChatMessages(conversation, opts.outputLimit)], budget)
    let text = ''
    let textOpen = false
    const calls = new Map<number, PendingCall>()
    const closeText = async () => {
      if (textOpen) await deps.emit({ role: 'assistant', type: 'message', end: true })
      textOpen = false
    }
    try {
      for await (const event of deps.models.stream(model.name, { messages: chat, tools, temperature: opts.temperature, maxTokens: opts.maxTokens, signal: deps.signal })) {
        if (event.type === 'text') {
          if (!textOpen) await deps.emit({ role: 'assistant', type: 'message', start: true })
          textOpen = true
          text += event.text
          await deps.emit({ role: 'assistant', type: 'message', content: event.text })
        } else if (event.type === 'tool_start') {
          await closeText()
          calls.set(event.index, { id: event.id, name: event.name, args: '', streamed: '', started: false })
        } else if (event.type === 'tool_args') {
          const call = calls.get(event.index)
          if (call) {
            call.args += event.delta
            await streamCode(call, deps, languages)
          }
        } else if (event.type === 'usage') {
          usage.prompt_tokens += event.input
          usage.completion_tokens += event.output
          usage.total_tokens += event.input + event.output
        } else if (event.type === 'fallback') {
          await deps.fallback(event.from, event.to, event.reason)
        }
      }
    } catch (err) {
      await closeText()
      if (text) await deps.store([{ role: 'assistant', type: 'message', content: text }])
      if (err instanceof LlmError && err.kind === 'aborted') return { usage, finishReason: 'interrupted' }
      throw err
    }
    await closeText()

    const stepMessages: Message[] = text ? [{ role: 'assistant', type: 'message', content: text }] : []
    if (calls.size === 0) {
      await deps.store(stepMessages)
      return { usage, finishReason: 'stop' }
    }
    for (const call of calls.values()) {
      stepMessages.push(...await runCall(call, deps, opts))
      if (deps.signal.aborted) break
    }
    await deps.store(stepMessages)
    conversation.push(...stepMessages)
    if (deps.signal.aborted) return { usage, finishReason: 'interrupted' }
  }
  await deps.emit({ role: 'computer', type: 'console', format: 'output', start: true })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', content: `Stopped after ${opts.maxSteps} steps (the step limit).\n` })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', end: true })
  return { usage, finishReason: 'step_limit' }
}

/** Streams a code block while its arguments arrive, once the language is known. */
async function streamCode (call: PendingCall, deps: TurnDeps, languages: LanguageSpec[]): Promise<void> {
  if (call.name === EDITOR_TOOL) return // shown whole when it runs
  if (call.name === BASH_TOOL) {
    const command = partialStringField(call.args, 'command')
    if (!command) return
    if (!call.started) {
      call.started = true
      await deps.emit({ role: 'assistant', type: 'code', format: 'bash', id: call.id, start: true })
    }
    if (command.value.length > call.streamed.length) {
      await deps.emit({ role: 'assistant', type: 'code', format: 'bash', id: call.id, content: command.value.slice(call.streamed.length) })
      call.streamed = command.value
    }
    return
  }
  if (!call.language) {
    const language = partialStringField(call.args, 'language')
    if (!language?.complete) return
    call.language = languageOf(language.value, languages)
  }
  const code = partialStringField(call.args, 'code')
  if (!code) return
  if (!call.started) {
    call.started = true
    await deps.emit({ role: 'assistant', type: 'code', format: call.language, id: call.id, start: true })
  }
  if (code.value.length > call.streamed.length) {
    await deps.emit({ role: 'assistant', type: 'code', format: call.language, id: call.id, content: code.value.slice(call.streamed.length) })
    call.streamed = code.value
  }
}

async function runCall (call: PendingCall, deps: TurnDeps, opts: TurnOptions): Promise<Message[]> {
  if ((call.name === BASH_TOOL || call.name === EDITOR_TOOL) && deps.native) return await runNative(call, deps, deps.native, opts)
  let language: Language = call.language ?? 'python'
  let code = ''
  let invalid: string | null = null
  try {
    const args = JSON.parse(call.args || '{}') as { language?: string, code?: string }
    language = languageOf(args.language, opts.languages ?? LANGUAGES)
    code = String(args.code ?? '')
    if (call.name !== 'execute') invalid = `unknown tool "${call.name}"; the tools are execute${deps.native ? `, ${BASH_TOOL} and ${EDITOR_TOOL}` : ''}`
  } catch {
    invalid = 'the tool arguments were not valid JSON'
  }
  if (!call.started) await deps.emit({ role: 'assistant', type: 'code', format: language, id: call.id, start: true })
  if (code.length > call.streamed.length) await deps.emit({ role: 'assistant', type: 'code', format: language, id: call.id, content: code.slice(call.streamed.length) })
  await deps.emit({ role: 'assistant', type: 'code', format: language, id: call.id, end: true })
  const messages: Message[] = [{ role: 'assistant', type: 'code', format: language, content: code, id: call.id }]
  const console = (content: string): Message => ({ role: 'computer', type: 'console', format: 'output', content, id: call.id })

  if (invalid) return [...messages, console(`Error: ${invalid}`)]
  if (!opts.autoRun) {
    await deps.emit({ role: 'computer', type: 'confirmation', format: 'execution', id: call.id, content: { type: 'code', format: language, content: code, id: call.id } })
    const decision = await deps.confirm(call.id)
    if (decision !== 'approved') {
      const note = decision === 'declined' ? 'The user declined to run this code.' : 'The confirmation expired; the code was not run.'
      await emitConsole(deps, call.id, note)
      return [...messages, console(note)]
    }
  }

  const { messages: results } = await streamExecution(deps, call.id, language, code)
  return [...messages, ...results]
}

/** How a call of Claude's text editor reads in a transcript: the command, the path, and what it changes. */
export function describeEdit (input: Record<string, unknown>): string {
  const head = `${String(input.command ?? '?')} ${String(input.path ?? '')}`
  const range = Array.isArray(input.view_range) ? ` [${input.view_range.join(', ')}]` : input.insert_line !== undefined ? ` after line ${String(input.insert_line)}` : ''
  const body = ['file_text', 'old_str', 'new_str', 'insert_text'].filter(k => typeof input[k] === 'string').map(k => `--- ${k}\n${String(input[k])}`).join('\n')
  return `${head}${range}${body ? '\n' + body : ''}`
}

/**
 * Claude's bash or text editor call: shown as a code block (the command; the editor's command and path), confirmed like
 * code when auto-run is off, run in the sandbox, its result stored as console output (format `error` for an error result).
 * Stored as code with the tool's name as its format and the input as its content, so history replays the same call.
 */
async function runNative (call: PendingCall, deps: TurnDeps, native: NonNullable<TurnDeps['native']>, opts: TurnOptions): Promise<Message[]> {
  let input: Record<string, unknown> | null = null
  try {
    const parsed = JSON.parse(call.args || '{}') as unknown
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) input = parsed as Record<string, unknown>
  } catch {}
  const bash = call.name === BASH_TOOL
  const format = bash ? 'bash' : EDITOR_TOOL
  const shown = !input ? call.args : bash ? (input.restart === true ? '# restart the shell' : String(input.command ?? '')) : describeEdit(input)
  if (!call.started) await deps.emit({ role: 'assistant', type: 'code', format, id: call.id, start: true })
  if (shown.length > call.streamed.length && shown.startsWith(call.streamed)) await deps.emit({ role: 'assistant', type: 'code', format, id: call.id, content: shown.slice(call.streamed.length) })
  await deps.emit({ role: 'assistant', type: 'code', format, id: call.id, end: true })
  const content = !input ? { invalid: call.args } : bash && typeof input.command === 'string' && input.restart !== true ? input.command : input
  const stored: Message = { role: 'assistant', type: 'code', format: call.name, content, id: call.id }
  const result = (outcome: ToolOutcome): Message => ({ role: 'computer', type: 'console', format: outcome.isError ? 'error' : 'output', content: outcome.text || '(no output)', id: call.id })
  if (!input) {
    const outcome = { text: 'Error: the tool input was not a JSON object', isError: true }
    await emitConsole(deps, call.id, outcome.text)
    return [stored, result(outcome)]
  }
  if (!opts.autoRun) {
    await deps.emit({ role: 'computer', type: 'confirmation', format: 'execution', id: call.id, content: { type: 'code', format, content: shown, id: call.id } })
    const decision = await deps.confirm(call.id)
    if (decision !== 'approved') {
      const note = decision === 'declined' ? 'The user declined to run this command.' : 'The confirmation expired; the command was not run.'
      await emitConsole(deps, call.id, note)
      return [stored, result({ text: note, isError: true })]
    }
  }
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id: call.id, start: true })
  let printed = ''
  const outcome = bash
    ? await native.bash(input, (e) => {
      if (e.type === 'stdout' || e.type === 'stderr') { printed += e.text; void deps.emit({ role: 'computer', type: 'console', format: 'output', id: call.id, content: e.text }) }
    })
    : await native.edit(input)
  // What the result adds to the output printed as it came (an exit code, a timeout): shown too.
  const rest = outcome.text.startsWith(printed) ? outcome.text.slice(printed.length) : `\n${outcome.text}`
  if (rest) await deps.emit({ role: 'computer', type: 'console', format: 'output', id: call.id, content: rest })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id: call.id, end: true })
  return [stored, result(outcome)]
}

/**
 * Runs code and streams it as LMC chunks: console output as it is printed, then the images. Returns the
 * messages to store: the whole output (and a note when the kernel lost its state) and each image.
 */
export async function streamExecution (deps: Pick<TurnDeps, 'execute' | 'emit'>, id: string, language: Language, code: string): Promise<{ execution: Execution, messages: Message[] }> {
  let output = ''
  const images: string[] = []
  const print = (text: string) => {
    output += text
    void deps.emit({ role: 'computer', type: 'console', format: 'output', id, content: text }) // emit keeps call order
  }
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id, start: true })
  const execution = await deps.execute(language, code, (e) => {
    if (e.type === 'stdout' || e.type === 'stderr') print(e.text)
    else if (e.type === 'display' || e.type === 'result') {
      if (e.data['image/png']) images.push(e.data['image/png'])
      else if (e.data['text/plain']) print(`${e.data['text/plain']}\n`)
    } else if (e.type === 'error') print([...(e.traceback ?? [])].join('') || `${e.name}: ${e.value}\n`)
  })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id, end: true })
  for (const image of images) await deps.emit({ role: 'computer', type: 'image', format: 'base64.png', id, content: image })
  if (execution.state_lost) output += '\n[the sandbox kernel was restarted: earlier variables are gone]\n'
  return {
    execution,
    messages: [
      { role: 'computer', type: 'console', format: 'output', content: output || '(no output)', id },
      ...images.map((content): Message => ({ role: 'computer', type: 'image', format: 'base64.png', content, id }))
    ]
  }
}

async function emitConsole (deps: TurnDeps, id: string, content: string): Promise<void> {
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id, start: true })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id, content })
  await deps.emit({ role: 'computer', type: 'console', format: 'output', id, end: true })
}
