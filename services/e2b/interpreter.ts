// E2B's code interpreter (the @e2b/code-interpreter SDK's port 49999): POST /execute answers NDJSON lines (stdout,
// stderr, result, error, number_of_executions), and /contexts manages code contexts. A context is a named kernel in the
// sandbox's agent (its own variables, its own directory); without one, code runs in its language's default kernel, the
// one REST, WebSocket and every other protocol share.
import { randomBytes } from 'node:crypto'
import { AppError } from '../errors.js'
import type { SandboxService } from '../sandbox/service.js'
import type { ExecutionEvent, KernelLanguage, SandboxRecord } from '../../schemas/sandboxes.js'
import { HOME } from './envd.js'

const KERNELS: Record<string, KernelLanguage> = Object.fromEntries([
  ...['python', 'python3'].map(n => [n, 'python']),
  ...['js', 'javascript', 'node', 'nodejs'].map(n => [n, 'javascript']),
  ...['bash', 'sh', 'shell'].map(n => [n, 'shell']),
  ['r', 'r']
]) as Record<string, KernelLanguage>
/** What the SDK calls each kernel (createCodeContext({ language }) and Context.language). */
const NAMES: Record<KernelLanguage, string> = { python: 'python', javascript: 'javascript', shell: 'bash', r: 'r' }
const MAX_CONTEXTS = 8

export interface Context { id: string, language: string, cwd: string }

/** A kernel language from E2B's name of one; 400 naming those we have for any other (typescript, java, ...). */
export function kernelOf (language: string | undefined): KernelLanguage {
  const kernel = KERNELS[(language ?? 'python').toLowerCase()]
  if (!kernel) {
    throw new AppError(400, 'unsupported_language', `The code interpreter here runs python, javascript (js), bash and r; "${language}" has no stateful kernel on this server (other languages run through POST /v1/sandboxes/{id}/execute)`)
  }
  return kernel
}

/** A context id names its kernel: `<language>-<hex>` is the agent's kernel `<language>:<hex>`; a bare language, its default. */
function kernelName (id: string): { language: KernelLanguage, kernel?: string } {
  const m = /^(python|javascript|shell|r)-([0-9a-f]{16})$/.exec(id)
  if (m) return { language: m[1] as KernelLanguage, kernel: `${m[1]}:${m[2]}` }
  const language = KERNELS[id]
  if (language && id === NAMES[language]) return { language }
  throw new AppError(404, 'context_not_found', `No code context ${id} in this sandbox`)
}

export class InterpreterService {
  /** Executions queued per sandbox in this process: E2B runs contexts side by side, our agent one run at a time. */
  private readonly queues = new Map<string, Promise<unknown>>()

  constructor (private readonly sandboxes: SandboxService) {}

  /**
   * Runs code in a context (or a language's default kernel), each event as an NDJSON line of E2B's: `write` gets the
   * lines as they come. Resolves when the execution ended.
   */
  async execute (record: SandboxRecord, req: { code: string, context_id?: string, language?: string, env_vars?: Record<string, string> }, write: (line: Record<string, unknown>) => void): Promise<void> {
    if (req.context_id && req.language) throw new AppError(400, 'validation_error', 'context_id and language cannot both be given')
    if (req.env_vars && Object.keys(req.env_vars).length) {
      throw new AppError(400, 'unsupported', 'Per-execution environment variables (envs of runCode) are not offered by this server: give them when the sandbox is created (envs)')
    }
    const target = req.context_id ? kernelName(req.context_id) : { language: kernelOf(req.language) }
    this.sandboxes.language(target.language) // 400 for one this image lacks
    const run = async () => {
      const execution = await this.sandboxes.execute(record, {
        code: req.code,
        language: target.language,
        ...(target.kernel ? { kernel: target.kernel } : {})
      }, (e) => { for (const line of this.lines(e)) write(line) }, { via: 'e2b' })
      write({ type: 'number_of_executions', execution_count: execution.execution_count })
    }
    const before = this.queues.get(record.id) ?? Promise.resolve()
    const mine = before.catch(() => {}).then(run)
    this.queues.set(record.id, mine)
    try {
      await mine
    } finally {
      if (this.queues.get(record.id) === mine) this.queues.delete(record.id)
    }
  }

  /** An execution event as E2B's output lines (none for start and end). */
  private lines (e: ExecutionEvent): Array<Record<string, unknown>> {
    const now = Date.now() * 1000
    switch (e.type) {
      case 'stdout': case 'stderr': return [{ type: e.type, text: e.text, timestamp: now }]
      case 'result': case 'display': return [{ type: 'result', ...resultData(e.data), is_main_result: e.type === 'result' }]
      case 'error': return [{ type: 'error', name: e.name, value: e.value, traceback: e.traceback.join('\n') }]
      default: return []
    }
  }

  async createContext (record: SandboxRecord, req: { language?: string, cwd?: string }): Promise<Context> {
    const language = kernelOf(req.language)
    this.sandboxes.language(language)
    const cwd = req.cwd || HOME
    if (!cwd.startsWith('/') || cwd.includes('\0') || cwd.length > 1024) throw new AppError(400, 'validation_error', 'cwd must be an absolute path')
    const handle = await this.sandboxes.handle(record)
    if ((await handle.kernels()).filter(k => k.kernel.includes(':')).length >= MAX_CONTEXTS) {
      throw new AppError(429, 'too_many_contexts', `A sandbox may have ${MAX_CONTEXTS} code contexts here; remove one first`, 'rate_limit_error')
    }
    const hex = randomBytes(8).toString('hex')
    await handle.kernelOpen(`${language}:${hex}`, language, cwd)
    return { id: `${language}-${hex}`, language: NAMES[language], cwd }
  }

  async listContexts (record: SandboxRecord): Promise<Context[]> {
    const kernels = await (await this.sandboxes.handle(record)).kernels()
    return kernels.map(k => {
      const [language, hex] = k.kernel.split(':')
      return { id: hex ? `${language}-${hex}` : NAMES[k.language], language: NAMES[k.language], cwd: k.cwd }
    })
  }

  async restartContext (record: SandboxRecord, id: string): Promise<void> {
    const { language, kernel } = kernelName(id)
    const handle = await this.sandboxes.handle(record)
    await handle.restartKernel(kernel ?? language).catch((err: unknown) => {
      // A language's default kernel that has not started yet has nothing to restart.
      if (kernel || !(err instanceof AppError) || err.code !== 'context_not_found') throw err
    })
  }

  async removeContext (record: SandboxRecord, id: string): Promise<void> {
    const { kernel } = kernelName(id)
    if (!kernel) throw new AppError(400, 'validation_error', 'A language\'s default context cannot be removed (restart it instead)')
    await (await this.sandboxes.handle(record)).kernelClose(kernel)
  }
}

/** A MIME bundle as the SDK's Result fields (text, html, png, ...; json parsed). */
function resultData (data: Record<string, string>): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  const names: Record<string, string> = Object.fromEntries([
    ['text/plain', 'text'], ['text/html', 'html'], ['text/markdown', 'markdown'], ['image/svg+xml', 'svg'], ['image/png', 'png'],
    ['image/jpeg', 'jpeg'], ['application/pdf', 'pdf'], ['text/latex', 'latex'], ['application/javascript', 'javascript']
  ])
  for (const [mime, value] of Object.entries(data)) {
    if (mime === 'application/json') {
      try { out.json = JSON.parse(value) } catch { out.json = value }
    } else {
      out[names[mime] ?? mime] = value
    }
  }
  return out
}
