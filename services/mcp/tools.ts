import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js'
import type { CallToolResult, ServerNotification, ServerRequest } from '@modelcontextprotocol/sdk/types.js'
import type { RequestHandlerExtra } from '@modelcontextprotocol/sdk/shared/protocol.js'
import { z } from 'zod'
import type { Session } from '../../schemas/sessions.js'
import type { Execution, ExecutionEvent, Language } from '../../schemas/sandboxes.js'
import { runError, type RunManager } from '../interpreter/runs.js'
import { DEFAULT_TTL_MS, type RunTasks } from './tasks.js'
import type { SandboxService } from '../sandbox/service.js'

/** Files the read_file tool returns as text (larger or binary files come back as a base64 resource). */
const TEXT_LIMIT = 1024 * 1024
/** The most read_file returns at all (as a resource past TEXT_LIMIT); larger files are an error result saying so. */
const READ_LIMIT = 32 * 1024 * 1024

const text = (value: string): CallToolResult['content'][number] => ({ type: 'text', text: value })
const failure = (message: string): CallToolResult => ({ isError: true, content: [text(message)] })

/** Runs a tool body; an error becomes a tool result with isError (what MCP clients show the model), never a crash. */
async function tool (body: () => Promise<CallToolResult>): Promise<CallToolResult> {
  try {
    return await body()
  } catch (err) {
    const e = runError(err)
    return failure(`${e.code}: ${e.message}`)
  }
}

/** How long a call waits for the session's previous run (one being cancelled) to end before it tries anyway. */
const SETTLE_MS = 10_000
/** The characters of recent output a progress notification carries. */
const PROGRESS_TAIL = 200
/** How often a run that is still going says so (the first time after this long). */
export const PROGRESS_EVERY_MS = 1000

/**
 * What a tool body needs of the call, whichever SDK carries it (v1 for 2025-era sessions, v2 for 2026-07-28
 * requests): the progress token the client sent, a way to notify it, and the signal of its cancellation.
 */
export interface CallIo {
  progressToken?: string | number
  notify: (notification: { method: 'notifications/progress', params: { progressToken: string | number, progress: number, message: string } }) => Promise<void>
  signal: AbortSignal
}

const v1Io = (extra: RequestHandlerExtra<ServerRequest, ServerNotification>): CallIo => ({
  ...(extra._meta?.progressToken !== undefined ? { progressToken: extra._meta.progressToken } : {}),
  notify: async (n) => { await extra.sendNotification(n) },
  signal: extra.signal
})

/**
 * While a run goes on: progress notifications every second when the client asked for them (a progress token), with
 * the last line of output; a cancellation (notifications/cancelled, or the request's stream closing) interrupts it.
 * Returns what ends the watch.
 */
function watch (done: Promise<unknown>, io: CallIo, tail: () => string, interrupt: () => Promise<void>): () => void {
  const token = io.progressToken
  const started = Date.now()
  let count = 0
  const timer = token === undefined
    ? null
    : setInterval(() => {
      const last = tail().trimEnd().split('\n').pop() ?? ''
      const seconds = Math.round((Date.now() - started) / 1000)
      void io.notify({ method: 'notifications/progress', params: { progressToken: token, progress: ++count, message: `running for ${seconds} s${last ? `: ${last}` : ''}` } }).catch(() => {})
    }, PROGRESS_EVERY_MS)
  const onCancel = () => { void interrupt().catch(() => {}) }
  io.signal.addEventListener('abort', onCancel, { once: true })
  void done.catch(() => {})
  return () => {
    if (timer) clearInterval(timer)
    io.signal.removeEventListener('abort', onCancel)
  }
}

/** An execution as an MCP tool result: output, plots, the error; a non-zero exit or an error is a failure. */
function resultOf (ex: Execution, cancelled = false): CallToolResult {
  const content: CallToolResult['content'] = []
  const out = [ex.stdout, ex.stderr].filter(Boolean).join(ex.stdout.endsWith('\n') || !ex.stdout ? '' : '\n')
  if (out) content.push(text(out))
  for (const result of ex.results) {
    if (result.data['image/png']) content.push({ type: 'image', data: result.data['image/png'], mimeType: 'image/png' })
    else if (result.data['text/plain']) content.push(text(result.data['text/plain']))
  }
  if (ex.error) content.push(text([...ex.error.traceback].join('') || `${ex.error.name}: ${ex.error.value}`))
  if (ex.state_lost) content.push(text('[the kernel was restarted: earlier variables are gone]'))
  if (cancelled) content.push(text('[cancelled: the run was interrupted]'))
  // A program that failed on its own terms (a non-zero exit, a compile error) is a call that reports failure.
  const failed = ex.error !== null || (ex.exit_code !== undefined && ex.exit_code !== 0)
  if (ex.exit_code) content.push(text(`[exit code ${ex.exit_code}]`))
  if (!content.length) content.push(text('(no output)'))
  return { content, ...(failed ? { isError: true } : {}) }
}

export interface McpDeps {
  runs: RunManager
  /** The process's MCP tasks (runs that outlive their request), per key. */
  tasks: RunTasks
  sandboxes: SandboxService
  version: string
  maxUploadBytes: number
}

export const INSTRUCTIONS = 'Runs code in a hardened, stateful sandbox: variables, imports and files persist between execute_code calls until reset. Files live under /home/user (relative paths).'

/** Per session, the run a call right after a cancelled one waits (a while) for, rather than a 409. */
const previousRuns = new Map<string, Promise<void>>()
const settled = async (session: Session) => {
  await Promise.race([previousRuns.get(session.id) ?? Promise.resolve(), new Promise(resolve => setTimeout(resolve, SETTLE_MS).unref())])
}
const remember = (session: Session, done: Promise<unknown>) => {
  const settling = done.then(() => {}, () => {})
  previousRuns.set(session.id, settling)
  void settling.then(() => { if (previousRuns.get(session.id) === settling) previousRuns.delete(session.id) })
}

/**
 * The tools, written once: their names, descriptions and input shapes, and bodies over the session a call belongs
 * to (an MCP session's own on the 2025 path; the named workspace's on the 2026-07-28 path). Direct executions are
 * runs: they take the session's lock, land in its event log and show in the monitor.
 */
export function toolset (deps: McpDeps) {
  const { runs, sandboxes } = deps
  const handle = async (session: Session) => await sandboxes.handle(await runs.sessionSandbox(session))
  const languages = sandboxes.languages()
  const stateful = languages.filter(l => l.kernel).map(l => l.id)
  const execInput = {
    language: z.enum(languages.map(l => l.id) as [string, ...string[]]).default('python').describe('the language to run'),
    code: z.string().describe('the code'),
    timeout_ms: z.number().int().positive().optional().describe('interrupt after this long (state is kept when the code stops)')
  }
  return {
    execInput,
    execute_code: {
      title: 'Execute code',
      description: `Run code in the sandbox and return its output. Variables persist between calls in ${stateful.join(', ')}; the other languages compile and run as a fresh process (files persist). Plots (matplotlib, R) come back as images.`,
      inputSchema: execInput,
      run: async (session: Session, { language, code, timeout_ms: timeoutMs }: { language: string, code: string, timeout_ms?: number | undefined }, io: CallIo) => tool(async () => {
        // What was printed last, for progress notifications: clients drop a tool that stays silent for minutes.
        let tail = ''
        const onEvent = (e: ExecutionEvent) => { if (e.type === 'stdout' || e.type === 'stderr') tail = (tail + e.text).slice(-PROGRESS_TAIL) }
        await settled(session)
        const run = await runs.executeDirect(session, language as Language, code, { via: 'mcp', onEvent, ...(timeoutMs ? { timeoutMs } : {}) })
        remember(session, run.done)
        const stop = watch(run.done, io, () => tail, async () => { await runs.interrupt(session.id) })
        const outcome = await run.done.finally(stop)
        if (outcome.error) return failure(`${outcome.error.code}: ${outcome.error.message}`)
        return resultOf(outcome.execution!, io.signal.aborted)
      })
    },
    list_files: {
      title: 'List files',
      description: 'List a directory of the sandbox workspace.',
      inputSchema: { path: z.string().default('').describe('a directory relative to the workspace; empty for its top') },
      run: async (session: Session, { path }: { path: string }) => tool(async () => {
        const entries = await (await handle(session)).listFiles(path)
        return { content: [text(entries.length ? entries.map(e => `${e.type === 'directory' ? 'd' : '-'} ${String(e.size).padStart(10)} ${e.path}`).join('\n') : '(empty)')] }
      })
    },
    read_file: {
      title: 'Read a file',
      description: 'Read a file of the sandbox workspace: text as text, anything else as a base64 resource.',
      inputSchema: { path: z.string().min(1).describe('a file relative to the workspace') },
      run: async (session: Session, { path }: { path: string }) => tool(async () => {
        const bytes = await (await handle(session)).readAll(path, READ_LIMIT)
        const decoded = bytes.toString('utf8')
        if (bytes.length <= TEXT_LIMIT && Buffer.from(decoded, 'utf8').equals(bytes)) return { content: [text(decoded)] }
        const mimeType = path.endsWith('.png') ? 'image/png' : 'application/octet-stream'
        return { content: [{ type: 'resource', resource: { uri: `sandbox:///home/user/${path}`, mimeType, blob: bytes.toString('base64') } }] }
      })
    },
    write_file: {
      title: 'Write a file',
      description: 'Create or replace a file of the sandbox workspace (parent directories are made).',
      inputSchema: {
        path: z.string().min(1).describe('a file relative to the workspace'),
        content: z.string().describe('the content'),
        encoding: z.enum(['utf8', 'base64']).default('utf8').describe('how content is encoded')
      },
      run: async (session: Session, { path, content, encoding }: { path: string, content: string, encoding: 'utf8' | 'base64' }) => tool(async () => {
        const bytes = Buffer.from(content, encoding)
        const size = await (await handle(session)).writeFile(path, (async function * () { yield bytes })(), deps.maxUploadBytes)
        return { content: [text(`wrote ${size} bytes to ${path}`)] }
      })
    },
    reset: {
      title: 'Reset the sandbox',
      description: 'Remove the sandbox; the next call starts with a fresh one (no variables, no files).',
      inputSchema: {},
      run: async (session: Session) => tool(async () => {
        await runs.resetSandbox(session)
        return { content: [text('the sandbox was reset')] }
      })
    }
  }
}

/** The MCP server of one MCP session (protocol 2025-11-25 and older, through the v1 SDK): the tools, and tasks. */
export function mcpServer (deps: McpDeps, session: Session): McpServer {
  const server = new McpServer({ name: 'interpreter-server', version: deps.version }, {
    capabilities: { tasks: { requests: { tools: { call: {} } }, list: {}, cancel: {} } },
    taskStore: deps.tasks.storeFor(session.owner),
    instructions: INSTRUCTIONS
  })
  const { runs } = deps
  const tools = toolset(deps)
  const { execute_code: exec, list_files: list, read_file: read, write_file: write, reset } = tools
  server.registerTool('execute_code', { title: exec.title, description: exec.description, inputSchema: exec.inputSchema }, async (args, extra) => await exec.run(session, args, v1Io(extra)))

  server.experimental.tasks.registerToolTask('execute_code_task', {
    title: 'Execute code as a task',
    description: 'Like execute_code, for runs longer than a request should wait: returns a task at once (its id is the run id); poll tasks/get, then read tasks/result. tasks/cancel interrupts it. The sandbox runs one thing at a time.',
    inputSchema: tools.execInput,
    execution: { taskSupport: 'required' }
  }, {
    createTask: async ({ language, code, timeout_ms: timeoutMs }, extra) => {
      const task = await extra.taskStore.createTask({ ttl: extra.taskRequestedTtl ?? DEFAULT_TTL_MS })
      const store = extra.taskStore
      try {
        await settled(session)
        const run = await runs.executeDirect(session, language as Language, code, { via: 'mcp', runId: task.taskId, ...(timeoutMs ? { timeoutMs } : {}) })
        remember(session, run.done)
        deps.tasks.onCancel(task.taskId, () => { void runs.interrupt(session.id).catch(() => {}) })
        void run.done.then(async (outcome) => {
          const result = outcome.error ? failure(`${outcome.error.code}: ${outcome.error.message}`) : resultOf(outcome.execution!)
          await store.storeTaskResult(task.taskId, result.isError ? 'failed' : 'completed', result)
        }).catch(() => {})
      } catch (err) {
        const e = runError(err)
        await store.storeTaskResult(task.taskId, 'failed', failure(`${e.code}: ${e.message}`))
      }
      return { task }
    },
    getTask: async (_args, extra) => {
      const task = await extra.taskStore.getTask(extra.taskId)
      if (!task) throw new Error(`No task ${extra.taskId}`)
      return task
    },
    getTaskResult: async (_args, extra) => await extra.taskStore.getTaskResult(extra.taskId) as CallToolResult
  })

  server.registerTool('list_files', { title: list.title, description: list.description, inputSchema: list.inputSchema }, async (args) => await list.run(session, args))
  server.registerTool('read_file', { title: read.title, description: read.description, inputSchema: read.inputSchema }, async (args) => await read.run(session, args))
  server.registerTool('write_file', { title: write.title, description: write.description, inputSchema: write.inputSchema }, async (args) => await write.run(session, args))
  server.registerTool('reset', { title: reset.title, description: reset.description, inputSchema: reset.inputSchema }, async () => await reset.run(session))
  return server
}
