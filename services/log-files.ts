import { Writable } from 'node:stream'
import { dirname, extname, join } from 'node:path'
import roll from 'pino-roll'

export interface LogFileOptions {
  /** The combined log (every line); numbered as it rolls: server.1.log, server.2.log, ... */
  file: string
  /** Lines at level error and above; default: error.log beside the combined log. */
  errorFile?: string
  /** Roll when a file reaches this size (pino-roll's notation: 10m, 500k, 1g). */
  size: string
  /** Roll daily, hourly, or never (''). */
  frequency: string
  /** Rolled files kept besides the current one. */
  keep: number
}

type Roll = (opts: Record<string, unknown>) => Promise<NodeJS.WritableStream>

async function open (file: string, opts: LogFileOptions) {
  const extension = extname(file) || '.log'
  return await (roll as unknown as Roll)({
    file: extname(file) ? file.slice(0, -extension.length) : file,
    extension,
    size: opts.size,
    ...(opts.frequency ? { frequency: opts.frequency } : {}),
    mkdir: true,
    limit: { count: opts.keep }
  })
}

/**
 * Where log lines go besides `out` (stdout): a combined file and an error-only file, rolled by size and day through
 * pino-roll (pino's maintained rolling transport). The returned stream takes pino's JSON lines.
 */
export async function logFiles (opts: LogFileOptions, out: NodeJS.WritableStream = process.stdout): Promise<Writable> {
  const combined = await open(opts.file, opts)
  const errors = await open(opts.errorFile ?? join(dirname(opts.file), 'error.log'), opts)
  return new Writable({
    write (chunk: Buffer, _encoding, done) {
      out.write(chunk)
      combined.write(chunk)
      for (const line of String(chunk).split('\n')) {
        const level = Number(/"level":(\d+)/.exec(line)?.[1] ?? 0)
        if (level >= 50) errors.write(`${line}\n`)
      }
      done()
    },
    final (done) {
      let left = 2
      const one = () => { if (--left === 0) done() }
      for (const file of [combined, errors]) {
        file.once('close', one) // SonicBoom says it is flushed and closed with 'close'
        file.end()
      }
    }
  })
}
