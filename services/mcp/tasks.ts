// MCP tasks (spec 2025-11-25, the SDK's experimental tasks) for runs that outlive their request: a task is one of our
// runs (its task id is the run id), kept in this process per key (MCP sessions live in one process), so a client that
// reconnects with a new MCP session of the same key polls it to its end. Bounded: tasks per key, and a lifetime.
import { randomBytes } from 'node:crypto'
import type { Request, RequestId, Result, Task } from '@modelcontextprotocol/sdk/types.js'
import type { CreateTaskOptions, TaskStore } from '@modelcontextprotocol/sdk/experimental/tasks/interfaces.js'
import { McpError, ErrorCode } from '@modelcontextprotocol/sdk/types.js'

/** How long a finished task's result is kept by default (the client may ask for less, never more than MAX_TTL_MS). */
export const DEFAULT_TTL_MS = 15 * 60_000
const MAX_TTL_MS = 60 * 60_000
/** Tasks one key keeps at once (running and finished, until their lifetime ends). */
export const MAX_TASKS_PER_KEY = 50
const POLL_MS = 500

interface Entry { owner: string, task: Task, result?: Result, expires: number, onCancel?: () => void }

export const newRunId = () => `run_${randomBytes(9).toString('base64url')}`

export class RunTasks {
  private readonly entries = new Map<string, Entry>()

  private prune (): void {
    const now = Date.now()
    for (const [id, e] of this.entries) if (e.expires <= now) this.entries.delete(id)
  }

  private own (owner: string, taskId: string): Entry | undefined {
    this.prune()
    const e = this.entries.get(taskId)
    return e && e.owner === owner ? e : undefined
  }

  /** What to do when the task is cancelled (tasks/cancel): the run's interrupt. */
  onCancel (taskId: string, fn: () => void): void {
    const e = this.entries.get(taskId)
    if (e) e.onCancel = fn
  }

  /** The SDK's TaskStore, for one key's MCP server. */
  storeFor (owner: string): TaskStore {
    const touch = (e: Entry, status: Task['status'], message?: string) => {
      e.task = { ...e.task, status, lastUpdatedAt: new Date().toISOString(), ...(message ? { statusMessage: message } : {}) }
      if (status !== 'working' && status !== 'input_required') e.expires = Date.now() + (e.task.ttl ?? DEFAULT_TTL_MS)
    }
    return {
      createTask: async (params: CreateTaskOptions, _requestId: RequestId, _request: Request): Promise<Task> => {
        this.prune()
        if ([...this.entries.values()].filter(e => e.owner === owner).length >= MAX_TASKS_PER_KEY) {
          throw new McpError(ErrorCode.InvalidRequest, `This key keeps at most ${MAX_TASKS_PER_KEY} tasks; wait for some to end`)
        }
        const now = new Date().toISOString()
        const ttl = Math.min(MAX_TTL_MS, params.ttl ?? DEFAULT_TTL_MS)
        const task: Task = { taskId: newRunId(), status: 'working', ttl, createdAt: now, lastUpdatedAt: now, pollInterval: params.pollInterval ?? POLL_MS }
        // A running task is kept while it runs (its lifetime counts from its end), within a day at most.
        this.entries.set(task.taskId, { owner, task, expires: Date.now() + 24 * 3600_000 })
        return task
      },
      getTask: async (taskId: string) => this.own(owner, taskId)?.task ?? null,
      storeTaskResult: async (taskId: string, status: 'completed' | 'failed', result: Result) => {
        const e = this.own(owner, taskId)
        if (!e) throw new McpError(ErrorCode.InvalidParams, `No task ${taskId}`)
        if (e.task.status === 'cancelled') return
        e.result = result
        touch(e, status)
      },
      getTaskResult: async (taskId: string) => {
        const e = this.own(owner, taskId)
        if (!e) throw new McpError(ErrorCode.InvalidParams, `No task ${taskId}`)
        if (!e.result) throw new McpError(ErrorCode.InvalidRequest, `Task ${taskId} has no result (${e.task.status})`)
        return e.result
      },
      updateTaskStatus: async (taskId: string, status: Task['status'], message?: string) => {
        const e = this.own(owner, taskId)
        if (!e) throw new McpError(ErrorCode.InvalidParams, `No task ${taskId}`)
        if (e.task.status === 'completed' || e.task.status === 'failed' || e.task.status === 'cancelled') return
        touch(e, status, message)
        if (status === 'cancelled') e.onCancel?.()
      },
      listTasks: async () => {
        this.prune()
        return { tasks: [...this.entries.values()].filter(e => e.owner === owner).map(e => e.task) }
      }
    }
  }
}
