import { chmod, chown, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { watch } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { join } from 'node:path'

/**
 * The direct channel to a sandbox's agent: a host directory per sandbox, bind-mounted into the container, where the
 * agent listens on a unix socket. The directory is root's alone (mode 0700) and kernels run as uid 1000, so only the
 * agent and this server can reach the socket; the container's network stays `none`. Talking over it skips dockerd,
 * the container shim and Docker's stream framing on every request.
 */
export const AGENT_DIR_IN_CONTAINER = '/run/agent'
const SOCKET_NAME = 'agent.sock'

/**
 * A fresh directory for one sandbox's socket: mkdtemp makes it 0700, this process's alone (the server runs as root
 * beside the engine). With `group` (a server in a container, not root) it is 0770 with that group, which the agent
 * (root in the sandbox, gid 0, without CAP_DAC_OVERRIDE) and this server share; kernels (uid 1000) are outside both.
 */
export async function makeAgentDir (base: string, group?: number): Promise<string> {
  await mkdir(base, { recursive: true, mode: 0o700 })
  const dir = await mkdtemp(join(base, 'sbx-'))
  if (group !== undefined) await shareWithGroup(dir, group, 0o770)
  return dir
}

/** Gives a path to `group` with `mode` (the agent directory, or the egress proxy's socket in it). */
export async function shareWithGroup (path: string, group: number, mode: number): Promise<void> {
  await chown(path, -1, group)
  await chmod(path, mode)
}

export async function removeAgentDir (dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true })
}

/**
 * Where one deployment (namespace) keeps the agent directories of its containers on one Docker host: each sweeps only
 * its own, so neither another host's sweep nor another deployment sharing the base directory removes them.
 */
export function agentDirBase (base: string, namespace: string, host: string): string {
  const safe = (part: string) => part.replace(/[^A-Za-z0-9_.-]/g, '_')
  return join(base, safe(namespace), safe(host))
}

/** A directory younger than this is never stale: its container may be being created, by this process or another. */
export const AGENT_DIR_GRACE_MS = 5 * 60_000

/**
 * The directories under `base` that no container in `inUse` references (left by containers removed by hand), made
 * more than `graceMs` ago.
 */
export async function staleAgentDirs (base: string, inUse: Set<string>, graceMs = AGENT_DIR_GRACE_MS, now = Date.now()): Promise<string[]> {
  const names = await readdir(base).catch(() => [] as string[])
  const candidates = names.map(n => join(base, n)).filter(dir => dir.startsWith(join(base, 'sbx-')) && !inUse.has(dir))
  const stale: string[] = []
  for (const dir of candidates) {
    const made = await stat(dir).then(s => s.birthtimeMs || s.ctimeMs, () => now)
    if (now - made > graceMs) stale.push(dir)
  }
  return stale
}

/** Whether a runtime, as the engine reports it registered, lets a socket made inside a sandbox be reached outside. */
export function runtimeKeepsHostSockets (registration: { path?: string, runtimeArgs?: string[] } | undefined, name: string): boolean {
  const gvisor = name === 'runsc' || /(^|\/)runsc$/.test(registration?.path ?? '')
  if (!gvisor) return true
  return (registration?.runtimeArgs ?? []).some(arg => /^--host-uds=(all|create)$/.test(arg))
}

function tryConnect (path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(path)
    socket.once('connect', () => { socket.off('error', reject); resolve(socket) })
    socket.once('error', reject)
  })
}

/** Resolves when something in `dir` changes, or after `ms`. */
function changeIn (dir: string, ms: number): Promise<void> {
  return new Promise((resolve) => {
    let watcher: ReturnType<typeof watch> | null = null
    const done = () => { clearTimeout(timer); watcher?.close(); resolve() }
    const timer = setTimeout(done, ms)
    try {
      watcher = watch(dir, done)
      watcher.on('error', done)
    } catch {
      // the directory may not be visible yet; the timer still ends the wait
    }
  })
}

/** Connects to the agent's socket as soon as it listens; rejects after `timeoutMs`. */
/** Tells a suspended agent (sandbox/agent.py, op_suspend) to listen again: after its restore, or a failed checkpoint. */
export async function wakeAgent (dir: string): Promise<void> {
  await writeFile(join(dir, 'resume'), '', { mode: 0o600 })
}

export async function connectAgentSocket (dir: string, timeoutMs: number): Promise<Socket> {
  const path = join(dir, SOCKET_NAME)
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      return await tryConnect(path)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // Not there yet, or bound but not yet listening: wait for the agent.
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw err
    }
    const left = deadline - Date.now()
    if (left <= 0) throw new Error(`the sandbox agent's socket did not open within ${timeoutMs} ms`)
    await changeIn(dir, Math.min(50, left))
  }
}
