// Claude's own client tools (bash_20250124 and text_editor_20250728), run in a session's sandbox: one persistent shell
// (a named shell kernel of the agent, so `cd` and `export` last until `restart`) and an editor over the files API,
// confined to the workspace. Results are the text of an Anthropic tool_result and whether it is an error.
import type { ExecutionEvent, SandboxRecord } from '../../schemas/sandboxes.js'
import type { ToolDef } from '../llm/types.js'
import type { Protocol, SandboxService } from '../sandbox/service.js'
import type { SandboxHandle } from '../sandbox/sandbox.js'
import { AppError } from '../errors.js'

export const BASH_TOOL = 'bash'
export const EDITOR_TOOL = 'str_replace_based_edit_tool'
const HOME = '/home/user'
/** The agent's kernel that keeps the bash tool's shell (a named kernel, apart from the execute tool's shell). */
const BASH_KERNEL = 'shell:claude-bash'
/** Files the editor reads or writes whole; larger ones are refused (the model should use bash to look at them). */
export const MAX_EDIT_BYTES = 2 * 1024 * 1024

export interface ToolOutcome { text: string, isError: boolean }

/** The tools as Claude is offered them: its own types (the model was trained on them); as functions for any other model. */
export function claudeTools (maxCharacters?: number): ToolDef[] {
  return [{
    name: BASH_TOOL,
    description: 'Run a command in a persistent bash shell in the sandbox: the directory, variables and files stay for the next command. restart: true starts a fresh shell.',
    parameters: {
      type: 'object',
      properties: { command: { type: 'string', description: 'the command to run' }, restart: { type: 'boolean', description: 'restart the shell' } }
    },
    native: { type: 'bash_20250124', provider: 'anthropic' }
  }, {
    name: EDITOR_TOOL,
    description: `View, create and edit files in the sandbox (under ${HOME}). view: a file with line numbers (view_range [start, end], end -1 = to the end) or a directory two levels deep; ` +
      'str_replace: old_str must match exactly once; create: file_text; insert: new_str after insert_line (0 = the top).',
    parameters: {
      type: 'object',
      properties: {
        command: { type: 'string', enum: ['view', 'create', 'str_replace', 'insert'] },
        path: { type: 'string' },
        view_range: { type: 'array', items: { type: 'integer' } },
        file_text: { type: 'string' },
        old_str: { type: 'string' },
        new_str: { type: 'string' },
        insert_line: { type: 'integer' }
      },
      required: ['command', 'path']
    },
    native: { type: 'text_editor_20250728', provider: 'anthropic', ...(maxCharacters ? { options: { max_characters: maxCharacters } } : {}) }
  }]
}

/** `cat -n` style: the line number right-aligned in six columns, a tab, the line. */
export function numbered (lines: string[], first: number): string {
  return lines.map((line, i) => `${String(first + i).padStart(6)}\t${line}`).join('\n')
}

/** The workspace-relative path of a path the model gave (absolute under the workspace, or relative to it). */
export function workspaceRelative (path: unknown): string {
  if (typeof path !== 'string' || !path || path.includes('\0')) throw new ToolError('The path must be a non-empty string')
  const absolute = path.startsWith('/') ? path : `${HOME}/${path}`
  const parts: string[] = []
  for (const part of absolute.split('/')) {
    if (!part || part === '.') continue
    if (part === '..') parts.pop()
    else parts.push(part)
  }
  const normal = '/' + parts.join('/')
  if (normal !== HOME && !normal.startsWith(HOME + '/')) throw new ToolError(`The path ${path} is outside the workspace: files here live under ${HOME}`)
  return normal.slice(HOME.length + 1)
}

/** An error the model should read (an Anthropic tool_result with is_error). */
export class ToolError extends Error {}

/** Cuts a view to `max` characters, saying so. */
function cut (text: string, max: number | undefined): string {
  if (!max || text.length <= max) return text
  return `${text.slice(0, max)}\n[output truncated: showing the first ${max} of ${text.length} characters; view a smaller range]`
}

function str (input: Record<string, unknown>, key: string, required = true): string {
  const value = input[key]
  if (typeof value === 'string') return value
  if (!required && value === undefined) return ''
  throw new ToolError(`${key} must be a string`)
}

export class ClaudeTools {
  constructor (private readonly sandboxes: SandboxService, private readonly maxCharacters?: number) {}

  /** The bash tool: a command in the session's persistent shell, or `restart`. */
  async bash (record: SandboxRecord, input: Record<string, unknown>, onEvent?: (e: ExecutionEvent) => void, via: Protocol = 'rest'): Promise<ToolOutcome> {
    const handle = await this.sandboxes.handle(record)
    if (input.restart === true) {
      await handle.kernelClose(BASH_KERNEL).catch((err: unknown) => { if (!(err instanceof AppError) || err.code !== 'context_not_found') throw err })
      return { text: 'The bash tool has been restarted.', isError: false }
    }
    if (typeof input.command !== 'string' || !input.command.trim()) return { text: 'Error: command is required unless restart is true', isError: true }
    await this.openShell(handle)
    const execution = await this.sandboxes.execute(record, { code: input.command, language: 'shell', kernel: BASH_KERNEL }, onEvent, { via, label: 'bash' })
    let text = execution.stdout + (execution.stderr ? (execution.stdout && !execution.stdout.endsWith('\n') ? '\n' : '') + execution.stderr : '')
    if (execution.error?.code === 'execution_timeout') return { text: `${text}\nError: the command timed out (${execution.error.value})`, isError: true }
    if (execution.error && execution.exit_code === undefined) text += `${text && !text.endsWith('\n') ? '\n' : ''}${execution.error.name}: ${execution.error.value}`
    if (execution.exit_code) text += `${text && !text.endsWith('\n') ? '\n' : ''}[exit code ${execution.exit_code}]`
    return { text: cut(text, this.maxCharacters ?? 100_000), isError: false }
  }

  private async openShell (handle: SandboxHandle): Promise<void> {
    if ((await handle.kernels()).some(k => k.kernel === BASH_KERNEL)) return
    await handle.kernelOpen(BASH_KERNEL, 'shell', HOME).catch((err: unknown) => {
      if (!(err instanceof AppError) || err.code !== 'kernel_exists') throw err
    })
  }

  /** The text editor: view, create, str_replace, insert. A ToolError is the model's mistake, answered as an error result. */
  async edit (record: SandboxRecord, input: Record<string, unknown>, maxCharacters = this.maxCharacters): Promise<ToolOutcome> {
    try {
      const handle = await this.sandboxes.handle(record)
      const path = workspaceRelative(input.path)
      const shown = `${HOME}${path ? '/' + path : ''}`
      switch (input.command) {
        case 'view': return { text: cut(await this.view(handle, path, shown, input.view_range), maxCharacters), isError: false }
        case 'create': {
          if (!path) throw new ToolError(`${shown} is a directory`)
          const text = str(input, 'file_text')
          const existed = await handle.stat(path).then(() => true, () => false)
          await this.write(handle, path, text)
          return { text: `${existed ? 'Overwrote' : 'Created'} ${shown} (${text.split('\n').length} lines).`, isError: false }
        }
        case 'str_replace': {
          const oldStr = str(input, 'old_str')
          const newStr = str(input, 'new_str', false)
          if (!oldStr) throw new ToolError('old_str must not be empty')
          const content = await this.read(handle, path, shown)
          const count = content.split(oldStr).length - 1
          if (count === 0) throw new ToolError(`No match found for replacement in ${shown}: old_str must match the file exactly, whitespace included. Please check your text and try again.`)
          if (count > 1) throw new ToolError(`Found ${count} matches for replacement text in ${shown}. Please provide more context to make a unique match.`)
          const at = content.indexOf(oldStr)
          const updated = content.slice(0, at) + newStr + content.slice(at + oldStr.length)
          await this.write(handle, path, updated)
          const line = content.slice(0, at).split('\n').length
          const lines = updated.split('\n')
          const from = Math.max(1, line - 3)
          const to = Math.min(lines.length, line + newStr.split('\n').length + 2)
          return { text: `Successfully replaced text at exactly one location in ${shown}. Lines ${from}-${to} now read:\n${numbered(lines.slice(from - 1, to), from)}`, isError: false }
        }
        case 'insert': {
          const text = typeof input.new_str === 'string' ? input.new_str : str(input, 'insert_text')
          const at = input.insert_line
          const content = await this.read(handle, path, shown)
          const lines = content.split('\n')
          const count = content.endsWith('\n') ? lines.length - 1 : lines.length
          if (typeof at !== 'number' || !Number.isInteger(at) || at < 0 || at > count) throw new ToolError(`insert_line must be an integer from 0 to ${count} (the file has ${count} lines)`)
          const updated = [...lines.slice(0, at), ...text.replace(/\n$/, '').split('\n'), ...lines.slice(at)].join('\n')
          await this.write(handle, path, updated)
          return { text: `Inserted ${text.replace(/\n$/, '').split('\n').length} lines after line ${at} of ${shown}.`, isError: false }
        }
        default:
          throw new ToolError(`Unknown command ${JSON.stringify(input.command)}: the commands are view, create, str_replace and insert`)
      }
    } catch (err) {
      if (err instanceof ToolError) return { text: `Error: ${err.message}`, isError: true }
      if (err instanceof AppError && err.statusCode < 500) return { text: `Error: ${err.message}`, isError: true }
      throw err
    }
  }

  private async view (handle: SandboxHandle, path: string, shown: string, range: unknown): Promise<string> {
    const entry = path ? await this.statOf(handle, path, shown) : { type: 'directory' }
    if (entry.type === 'directory') {
      if (range !== undefined) throw new ToolError('view_range applies to files, not directories')
      const entries = (await handle.listFiles(path, 2)).filter(e => !e.path.split('/').some(p => p.startsWith('.')))
      const lines = entries.map(e => `${HOME}/${e.path}${e.type === 'directory' ? '/' : ''}`).sort()
      return `Files and directories up to 2 levels deep in ${shown}, hidden ones left out:\n${shown}/\n${lines.join('\n')}`
    }
    const content = await this.read(handle, path, shown)
    const lines = content.split('\n')
    if (content.endsWith('\n')) lines.pop()
    if (range === undefined || range === null) return numbered(lines, 1)
    if (!Array.isArray(range) || range.length !== 2 || !range.every(n => Number.isInteger(n))) throw new ToolError('view_range must be two integers: [start, end], end -1 for the end of the file')
    const [start, end] = range as [number, number]
    if (start < 1 || start > Math.max(1, lines.length)) throw new ToolError(`view_range start ${start} is outside the file's lines 1-${lines.length}`)
    if (end !== -1 && (end < start || end > lines.length)) throw new ToolError(`view_range end ${end} must be -1 or from ${start} to ${lines.length}`)
    return numbered(lines.slice(start - 1, end === -1 ? undefined : end), start)
  }

  private async statOf (handle: SandboxHandle, path: string, shown: string) {
    return await handle.stat(path).catch((err: unknown) => {
      if (err instanceof AppError && err.code === 'file_not_found') throw new ToolError(`The path ${shown} does not exist`)
      throw err
    })
  }

  private async read (handle: SandboxHandle, path: string, shown: string): Promise<string> {
    if (!path) throw new ToolError(`${shown} is a directory`)
    const entry = await this.statOf(handle, path, shown)
    if (entry.type === 'directory') throw new ToolError(`${shown} is a directory: view lists it, the other commands take files`)
    if (entry.size > MAX_EDIT_BYTES) throw new ToolError(`${shown} is ${entry.size} bytes; the editor takes files up to ${MAX_EDIT_BYTES} bytes (use bash to look at larger ones)`)
    const bytes = await handle.readAll(path, MAX_EDIT_BYTES)
    if (bytes.includes(0)) throw new ToolError(`${shown} is a binary file`)
    return bytes.toString('utf8')
  }

  private async write (handle: SandboxHandle, path: string, content: string): Promise<void> {
    const bytes = Buffer.from(content)
    if (bytes.length > MAX_EDIT_BYTES) throw new ToolError(`The result would be ${bytes.length} bytes; the editor writes files up to ${MAX_EDIT_BYTES} bytes`)
    const parent = path.split('/').slice(0, -1).join('/')
    if (parent) await handle.mkdir(parent)
    await handle.writeFile(path, (async function * () { yield bytes })(), MAX_EDIT_BYTES)
  }
}
