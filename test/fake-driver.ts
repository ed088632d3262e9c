// A container engine in memory, for the pool's unit tests: containers are records, their agents answer `ready` when
// started and `pong` to pings, and each start waits until the test lets it finish (or fail).
import { Duplex } from 'node:stream'
import type { Socket } from 'node:net'
import { AgentClient } from '../services/sandbox/agent-client.js'
import type { ContainerRequest, ContainerState, ListedContainer, RuntimeRegistration, SandboxDriver } from '../services/sandbox/driver.js'

interface FakeContainer { id: string, request: ContainerRequest, running: boolean, agent?: Duplex }

export class FakeDriver implements SandboxDriver {
  readonly containers = new Map<string, FakeContainer>()
  readonly removed: string[] = []
  /** Starts under way, in the order they began; finish(i) or fail(i) settles one. */
  readonly starts: Array<{ id: string, finish: () => void, fail: (err: Error) => void }> = []
  /** Set: every start finishes at once. */
  autoStart = false
  private count = 0

  async ping (): Promise<void> {}
  async hasImage (): Promise<boolean> { return true }
  async runtime (): Promise<RuntimeRegistration | undefined> { return undefined }

  async create (request: ContainerRequest): Promise<string> {
    const id = `c${++this.count}`
    this.containers.set(id, { id, request, running: false })
    return id
  }

  async start (id: string): Promise<void> {
    const container = this.containers.get(id)!
    if (!this.autoStart) {
      await new Promise<void>((resolve, reject) => this.starts.push({ id, finish: resolve, fail: reject }))
    }
    container.running = true
    container.agent?.push(JSON.stringify({ type: 'ready' }) + '\n')
  }

  /** Finishes the oldest start still waiting. */
  finishNext (): string {
    const next = this.starts.shift()
    if (!next) throw new Error('no start is waiting')
    next.finish()
    return next.id
  }

  async attach (id: string, log: (line: string) => void): Promise<AgentClient> {
    const container = this.containers.get(id)!
    const agent = new Duplex({
      read () {},
      write (chunk: Buffer, _encoding, done) {
        for (const line of String(chunk).split('\n').filter(Boolean)) {
          const request = JSON.parse(line) as { id: string, op: string }
          if (request.op === 'ping') agent.push(JSON.stringify({ id: request.id, type: 'pong' }) + '\n')
        }
        done()
      }
    })
    container.agent = agent
    return AgentClient.overSocket(agent as unknown as Socket, log)
  }

  async inspect (id: string): Promise<ContainerState | null> {
    const container = this.containers.get(id)
    if (!container) return null
    return { running: container.running, exitCode: container.running ? 0 : 137, oomKilled: false, startedAt: new Date().toISOString(), labels: {} }
  }

  async update (): Promise<void> {}

  async remove (id: string): Promise<void> {
    const container = this.containers.get(id)
    if (!container) return
    container.agent?.push(null)
    this.containers.delete(id)
    this.removed.push(id)
  }

  // Pausing is tested against real engines (test/services/sandbox/pause.test.ts): this one cannot checkpoint.
  async canCheckpoint (): Promise<boolean> { return false }
  async checkpoint (): Promise<void> { throw new Error('the fake engine cannot checkpoint') }
  async restore (): Promise<void> { throw new Error('the fake engine cannot restore') }
  async deleteCheckpoint (): Promise<void> {}
  async fillVolume (): Promise<void> { throw new Error('the fake engine has no volumes') }
  readVolume (): NodeJS.ReadableStream { throw new Error('the fake engine has no volumes') }
  async removeVolume (): Promise<void> {}
  async listVolumes (): Promise<Array<{ name: string, labels: Record<string, string> }>> { return [] }
  async stats (): Promise<null> { return null }

  async list (): Promise<ListedContainer[]> {
    return [...this.containers.keys()].map(id => ({ id, labels: {} }))
  }

  async killedSince (): Promise<boolean> { return false }
}
