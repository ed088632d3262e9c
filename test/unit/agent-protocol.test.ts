// The agent protocol typed once (schemas/agent.ts): the JSON Schema beside the agent is what the types say, every op
// and event type the Python agent and its kernels use is in it, and the check the tests run catches a bad event.
import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Compile } from 'typebox/compile'
import { AgentEventSchema, AgentRequests } from '../../schemas/agent.js'
import { AGENT_SCHEMA_FILE, agentSchemaText } from '../../scripts/agent-schema.js'
import { PACKAGE_ROOT } from '../../services/paths.js'

const source = (file: string) => readFileSync(join(PACKAGE_ROOT, 'sandbox', file), 'utf8')

t.test('sandbox/protocol.schema.json is generated from schemas/agent.ts (npx tsx scripts/agent-schema.ts)', async (t) => {
  t.equal(readFileSync(AGENT_SCHEMA_FILE, 'utf8'), agentSchemaText())
})

t.test('every op the agent serves and every event type it or its kernels send is in the protocol', async (t) => {
  const agent = source('agent.py')
  const ops = [...agent.matchAll(/def op_([a-z_]+)\(/g)].map(m => m[1]).filter(op => op !== 'unknown')
  ops.push(...[...agent.matchAll(/req\.get\('op'\) == '([a-z_]+)'/g)].map(m => m[1])) // read before dispatch (connect)
  t.same(ops.sort(), Object.keys(AgentRequests).sort(), 'the ops')
  const types = new Set(AgentEventSchema.anyOf.map(s => s.properties.type.const as string))
  const sent = new Set<string>()
  for (const file of ['agent.py', 'kernel_python.py']) {
    for (const m of source(file).matchAll(/'type': '([a-z_]+)'/g)) sent.add(m[1])
  }
  sent.delete('running') // the python kernel tells the agent it holds the code; the agent keeps it to itself
  for (const type of sent) t.ok(types.has(type), `${type} is a protocol event`)
  t.ok(sent.size >= 10)
})

t.test('the check catches an event the types do not allow', async (t) => {
  const check = Compile(AgentEventSchema)
  t.ok(check.Check({ id: 'a1', type: 'end', status: 'ok', execution_count: 1, duration_ms: 2.5, state_lost: false }))
  t.ok(check.Check({ type: 'ready' }))
  t.notOk(check.Check({ id: 'a1', type: 'end', status: 'finished', execution_count: 1, duration_ms: 2, state_lost: false }), 'an unknown status')
  t.notOk(check.Check({ id: 'a1', type: 'stdout' }), 'output without its text')
  t.notOk(check.Check({ id: 'a1', type: 'teleport' }), 'an unknown event')
})
