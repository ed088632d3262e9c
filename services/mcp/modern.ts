// MCP 2026-07-28 (the per-request envelope, no MCP session), through the official v2 SDK: every request gets a
// server from this factory. With no session to hold state, a call names its workspace (`workspace`, "default" when
// left out): one of our sessions per key and workspace name, made on first use, so variables and files persist from
// call to call and from client to client of the same key, and the monitor shows them like any session.
import { McpServer } from '@modelcontextprotocol/server'
import type { ServerContext } from '@modelcontextprotocol/server'
import { z } from 'zod'
import type { Principal } from '../auth.js'
import type { Session } from '../../schemas/sessions.js'
import type { SessionService } from '../sessions.js'
import type { Store } from '../store/types.js'
import { INSTRUCTIONS, toolset, type CallIo, type McpDeps } from './tools.js'

const KIND = 'mcp-workspace'
const WORKSPACE = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (at most 64)').default('default')
  .describe('the workspace to use: its variables and files persist between calls that name it (any name of yours; "default" when left out)')

export interface ModernDeps extends McpDeps { sessions: SessionService, store: Store }

/** The session behind a key's named workspace, made on first use (and again once it expired or was deleted). */
export class Workspaces {
  private readonly making = new Map<string, Promise<Session>>()
  constructor (private readonly sessions: SessionService, private readonly store: Store) {}

  async session (principal: Principal, name: string): Promise<Session> {
    const known = await this.store.getNamed<{ owner: string, name: string, session_id: string }>(KIND, principal.name, name)
    const found = known ? await this.sessions.find(known.session_id) : null
    if (found && found.owner === principal.name) return found
    const key = `${principal.name}\0${name}`
    const pending = this.making.get(key)
    if (pending) return await pending
    const made = (async () => {
      const session = await this.sessions.create(principal, { title: `MCP workspace ${name}`, metadata: { source: 'mcp', workspace: name } })
      await this.store.saveNamed(KIND, { owner: principal.name, name, session_id: session.id })
      return session
    })()
    this.making.set(key, made)
    try { return await made } finally { this.making.delete(key) }
  }
}

const modernIo = (ctx: ServerContext): CallIo => ({
  ...(ctx.mcpReq._meta?.progressToken !== undefined ? { progressToken: ctx.mcpReq._meta.progressToken } : {}),
  notify: async (n) => { await ctx.mcpReq.notify(n) },
  signal: ctx.mcpReq.signal
})

/** The server of one 2026-07-28 request of `principal`: the same tools as the 2025 path, each with a workspace. */
export function modernServer (deps: ModernDeps, workspaces: Workspaces, principal: Principal): McpServer {
  const server = new McpServer({ name: 'interpreter-server', version: deps.version }, { instructions: INSTRUCTIONS })
  const tools = toolset(deps)
  const at = async (workspace: string) => await workspaces.session(principal, workspace)
  const { execute_code: exec, list_files: list, read_file: read, write_file: write, reset } = tools
  server.registerTool('execute_code', { title: exec.title, description: exec.description, inputSchema: { ...exec.inputSchema, workspace: WORKSPACE } },
    async ({ workspace, ...args }, ctx) => await exec.run(await at(workspace), args, modernIo(ctx)))
  server.registerTool('list_files', { title: list.title, description: list.description, inputSchema: { ...list.inputSchema, workspace: WORKSPACE } },
    async ({ workspace, ...args }) => await list.run(await at(workspace), args))
  server.registerTool('read_file', { title: read.title, description: read.description, inputSchema: { ...read.inputSchema, workspace: WORKSPACE } },
    async ({ workspace, ...args }) => await read.run(await at(workspace), args))
  server.registerTool('write_file', { title: write.title, description: write.description, inputSchema: { ...write.inputSchema, workspace: WORKSPACE } },
    async ({ workspace, ...args }) => await write.run(await at(workspace), args))
  server.registerTool('reset', { title: reset.title, description: reset.description, inputSchema: { workspace: WORKSPACE } },
    async ({ workspace }) => await reset.run(await at(workspace)))
  return server
}
