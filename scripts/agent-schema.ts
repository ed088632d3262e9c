// Writes the agent protocol (schemas/agent.ts) as JSON Schema next to the agent: sandbox/protocol.schema.json, which
// sandbox/agent.py cites. `--check` exits 1 when the file is not what the schema says (the unit tests run it).
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { agentProtocolSchema } from '../schemas/agent.js'
import { PACKAGE_ROOT } from '../services/paths.js'

export const AGENT_SCHEMA_FILE = join(PACKAGE_ROOT, 'sandbox', 'protocol.schema.json')
export const agentSchemaText = (): string => JSON.stringify(agentProtocolSchema(), null, 2) + '\n'

if (process.argv[1]?.endsWith('agent-schema.ts')) {
  const want = agentSchemaText()
  if (process.argv.includes('--check')) {
    const have = readFileSync(AGENT_SCHEMA_FILE, 'utf8')
    if (have !== want) {
      process.stderr.write(`${AGENT_SCHEMA_FILE} is out of date: run npx tsx scripts/agent-schema.ts\n`)
      process.exit(1)
    }
  } else {
    writeFileSync(AGENT_SCHEMA_FILE, want)
    process.stdout.write(`${AGENT_SCHEMA_FILE}\n`)
  }
}
