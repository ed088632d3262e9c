// The terminal clients behind `interpreter-server chat` and `interpreter-server exec`.
import { createInterface } from 'node:readline'
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, extname } from 'node:path'
import { InterpreterClient, type SessionEvent } from './index.js'
import type { Language } from '../schemas/sandboxes.js'

export interface TerminalOptions { url: string, apiKey: string, model?: string, session?: string, autoRun?: boolean }

const color = (code: number) => (text: string) => process.stdout.isTTY || process.env.FORCE_COLOR ? `\x1b[${code}m${text}\x1b[0m` : text
const dim = color(2)
const cyan = color(36)
const red = color(31)

const EXTENSIONS: Record<string, Language> = { '.py': 'python', '.js': 'javascript', '.mjs': 'javascript', '.sh': 'shell', '.bash': 'shell' }

/** Runs a file (or stdin) in a fresh sandbox, prints its output, and returns 1 when the code failed. */
export async function runExec (file: string, options: { url: string, apiKey: string, language?: Language, timeoutMs?: number }): Promise<number> {
  const code = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8')
  const language = options.language ?? EXTENSIONS[extname(file)] ?? 'python'
  const client = new InterpreterClient({ url: options.url, apiKey: options.apiKey })
  const sandbox = await client.sandboxes.create({ language })
  try {
    const result = await client.sandboxes.execute(sandbox.id, code, { language, ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}) })
    process.stdout.write(result.stdout)
    process.stderr.write(result.stderr)
    for (const r of result.results) if (r.type === 'result' && r.data['text/plain']) process.stdout.write(`${r.data['text/plain']}\n`)
    if (result.error) process.stderr.write(result.error.traceback.join('') || `${result.error.name}: ${result.error.value}\n`)
    return result.error ? 1 : 0
  } finally {
    await client.sandboxes.delete(sandbox.id).catch(() => {})
  }
}

/** The interactive chat: streams text, shows code and output apart, saves images, asks before running code. */
export async function runChat (options: TerminalOptions): Promise<number> {
  const client = new InterpreterClient({ url: options.url, apiKey: options.apiKey })
  const socket = await client.connect(options.session)
  const images = mkdtempSync(join(tmpdir(), 'interpreter-images-'))
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY })
  // Lines typed while a run streams are kept for the next question (rl.question would drop them: a user typing
  // ahead, or `exit` sent a moment before the prompt came back, lost their input).
  const typed: string[] = []
  let waiting: ((line: string | null) => void) | null = null
  let ended = false
  rl.on('line', (line: string) => {
    if (waiting) {
      const answer = waiting
      waiting = null
      answer(line)
    } else typed.push(line)
  })
  rl.on('close', () => { ended = true; waiting?.(null) })
  /** The next line the user typed (already, or once asked), or null once input has ended. */
  const ask = (question: string): Promise<string | null> => {
    const early = typed.shift()
    if (early !== undefined) {
      process.stdout.write(`${question}${early}\n`)
      return Promise.resolve(early)
    }
    if (ended) return Promise.resolve(null)
    rl.setPrompt(question)
    rl.prompt()
    return new Promise(resolve => { waiting = resolve })
  }
  process.stdout.write(dim(`session ${socket.sessionId}${options.model ? `, model ${options.model}` : ''}; Ctrl-C interrupts a run, twice exits\n`))
  let running = false
  let interrupts = 0
  let imageCount = 0

  rl.on('SIGINT', () => {
    if (running && interrupts === 0) {
      interrupts++
      process.stdout.write(red('\n^C interrupting (again to exit)\n'))
      void socket.interrupt().catch(() => {})
      return
    }
    socket.close()
    rl.close()
    process.exit(130)
  })

  const show = async (e: SessionEvent): Promise<void> => {
    const chunk = e.data
    if (e.event === 'fallback') process.stdout.write(dim(`\n[model ${chunk.from} failed; using ${chunk.to}]\n`))
    else if (e.event === 'error') process.stdout.write(red(`\nerror: ${chunk.error.message}\n`))
    if (e.event !== 'message') return
    if (chunk.type === 'message' && chunk.content) process.stdout.write(chunk.content)
    else if (chunk.type === 'code') {
      if (chunk.start) process.stdout.write(cyan(`\n── ${chunk.format} ──\n`))
      else if (chunk.end) process.stdout.write('\n')
      else if (chunk.content) process.stdout.write(cyan(chunk.content))
    } else if (chunk.type === 'console' && chunk.content) process.stdout.write(dim(chunk.content))
    else if (chunk.type === 'image') {
      const path = join(images, `image-${++imageCount}.png`)
      writeFileSync(path, Buffer.from(chunk.content, 'base64'))
      process.stdout.write(`\n[image saved: ${path}]\n`)
    } else if (chunk.type === 'confirmation') {
      const answer = await ask('\nRun this code? [y/N] ')
      await socket.confirm(chunk.content.id, /^y(es)?$/i.test((answer ?? '').trim()))
    }
  }

  const turn = async (content: string) => {
    running = true
    interrupts = 0
    try {
      const { run_id: runId } = await socket.chat(content, { model: options.model, autoRun: options.autoRun })
      for await (const e of socket.events()) {
        await show(e)
        if (e.event === 'done' && e.data.run_id === runId) break
      }
      process.stdout.write('\n')
    } catch (err) {
      process.stdout.write(red(`error: ${(err as Error).message}\n`))
    } finally {
      running = false
    }
  }

  for (;;) {
    const line = await ask('> ')
    if (line === null) break
    if (line.trim() === '') continue
    if (['exit', 'quit'].includes(line.trim())) break
    await turn(line)
  }
  socket.close()
  rl.close()
  return 0
}
