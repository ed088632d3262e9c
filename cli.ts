import { parseArgs } from 'node:util'
import { config as loadDotenv } from 'dotenv'
import { loadConfig, ConfigError } from './services/config.js'

const USAGE = `usage: interpreter-server <command> [options]

commands:
  serve [--host H] [--port P]   start the HTTP server (configuration from the environment and .env)
  image                         build the sandbox image if it is missing
  chat [--model M] [--session S] [--no-auto-run]
                                interactive terminal client over the WebSocket
  exec FILE|- [--language L] [--timeout MS]
                                run code in a fresh sandbox; exit code 1 when it fails

chat and exec take --url (INTERPRETER_URL, default http://127.0.0.1:8000) and --api-key (INTERPRETER_API_KEY).
`

async function main (argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  if (command === 'serve') {
    const { values } = parseArgs({ args: rest, options: { host: { type: 'string' }, port: { type: 'string' } } })
    loadDotenv({ quiet: true })
    const config = loadConfig(process.env)
    const port = values.port === undefined ? undefined : Number(values.port)
    if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port < 65536)) throw new ConfigError(`--port: must be a port number (got ${values.port})`)
    const { serve } = await import('./server.js')
    await serve(config, { host: values.host, port })
    return -1 // keep running
  }
  if (command === 'chat' || command === 'exec') {
    loadDotenv({ quiet: true })
    const { values, positionals } = parseArgs({
      args: rest,
      allowPositionals: true,
      options: { url: { type: 'string' }, 'api-key': { type: 'string' }, model: { type: 'string' }, session: { type: 'string' }, 'no-auto-run': { type: 'boolean' }, language: { type: 'string' }, timeout: { type: 'string' } }
    })
    const url = values.url ?? process.env.INTERPRETER_URL ?? 'http://127.0.0.1:8000'
    const apiKey = values['api-key'] ?? process.env.INTERPRETER_API_KEY ?? process.env.API_KEY ?? ''
    if (!apiKey) throw new ConfigError('--api-key (or INTERPRETER_API_KEY) is required')
    const { runChat, runExec } = await import('./client/terminal.js')
    if (command === 'chat') return await runChat({ url, apiKey, model: values.model, session: values.session, autoRun: values['no-auto-run'] ? false : undefined })
    if (!positionals[0]) throw new ConfigError('exec needs a file, or - for standard input')
    const language = values.language as 'python' | 'javascript' | 'shell' | undefined
    return await runExec(positionals[0], { url, apiKey, language, timeoutMs: values.timeout ? Number(values.timeout) : undefined })
  }
  if (command === 'image') {
    const { buildSandboxImage } = await import('./services/sandbox/image.js')
    process.stdout.write(`${await buildSandboxImage()}\n`)
    return 0
  }
  process.stderr.write(USAGE)
  return command === undefined || command === 'help' || command === '--help' ? 0 : 2
}

main(process.argv.slice(2)).then((code) => { if (code >= 0) process.exit(code) }, (err: Error) => {
  process.stderr.write(err instanceof ConfigError ? `invalid configuration: ${err.message}\n` : `${err.message}\n`)
  process.exit(1)
})
