import { Writable } from 'node:stream'
import { EventEmitter } from 'node:events'

export interface LogLine { level: number, time: number, msg?: string, [key: string]: unknown }

/**
 * Receives the server's pino lines (and passes them on to `next`, e.g. stdout), keeps the last few hundred
 * for new viewers and emits each as it comes, for the live log view.
 */
export class LogHub extends Writable {
  readonly events = new EventEmitter().setMaxListeners(0)
  private readonly recent: LogLine[] = []

  constructor (private readonly next?: NodeJS.WritableStream, private readonly keep = 500) {
    super()
  }

  override _write (chunk: Buffer, _encoding: string, done: () => void): void {
    this.next?.write(chunk)
    for (const text of String(chunk).split('\n')) {
      if (!text) continue
      try {
        const line = JSON.parse(text) as LogLine
        this.recent.push(line)
        if (this.recent.length > this.keep) this.recent.shift()
        this.events.emit('line', line)
      } catch {}
    }
    done()
  }

  backlog (): LogLine[] { return [...this.recent] }
}
