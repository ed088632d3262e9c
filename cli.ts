import { parseArgs } from 'node:util'
import { config as loadDotenv } from 'dotenv'
import { loadConfig, ConfigError } from './services/config.js'

const USAGE = `usage: interpreter-server <command> [options]

commands:
  serve [--host H] [--port P]   start the HTTP server (configuration from the environment and .env)
  image                         build the sandbox image if it is missing
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
