// Claude's own tools in our chat loop: the real @anthropic-ai/sdk (inside the server) talks to the fake LLM, which is
// scripted to call bash_20250124 and text_editor_20250728; the calls run in the session's real sandbox.
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { FakeLlm } from '../fake-llm.js'
import { auth, KEYS, fakeLlmConfig, fakeLlmApp } from '../helper.js'

const alice = auth(KEYS.alice)
const fake = new FakeLlm()
let app: FastifyInstance

t.before(async () => {
  await fake.start()
  app = await fakeLlmApp(await fakeLlmConfig(fake.url, { POOL_SIZE: '1' }))
})
t.teardown(async () => {
  await app.close()
  await fake.stop()
})

type ToolResult = { type: 'tool_result', tool_use_id: string, is_error?: boolean, content: Array<{ type: string, text: string }> }
interface Step { name: 'bash' | 'str_replace_based_edit_tool', input: Record<string, unknown> }

/**
 * One chat turn in `session` where Claude calls each tool in turn and then answers: the tool_result Claude was sent
 * after each call, and the turn's answer.
 */
async function turn (session: string | undefined, steps: Step[]): Promise<{ results: ToolResult[], body: any, requests: Array<Record<string, unknown>> }> {
  const results: ToolResult[] = []
  const requests: Array<Record<string, unknown>> = []
  const resultOf = (body: Record<string, unknown>) => {
    requests.push(body)
    const messages = body.messages as Array<{ role: string, content: unknown }>
    const last = messages[messages.length - 1]!
    // The calls of one step are one assistant message; their results, one user message: the newest is the last.
    const block = (last.content as ToolResult[]).filter(b => b.type === 'tool_result').pop()!
    results.push(block)
  }
  fake.script('claude-test',
    ...steps.map((step, i) => (body: Record<string, unknown>) => {
      if (i === 0) requests.push(body)
      else resultOf(body)
      return { tool: step }
    }),
    (body: Record<string, unknown>) => { resultOf(body); return { text: 'done' } })
  const res = await app.inject({
    method: 'POST',
    url: '/v1/chat',
    headers: alice,
    payload: { messages: [{ role: 'user', content: 'work in the sandbox' }], ...(session ? { session_id: session } : {}), config: { llm: { model: 'claude' } } }
  })
  if (res.statusCode !== 200) throw new Error(res.body)
  return { results, body: res.json(), requests }
}
const text = (r: ToolResult) => r.content.map(c => c.text).join('')

t.test('Claude is offered its own bash and text editor beside execute; an OpenAI model only execute', async (t) => {
  const { requests, body } = await turn(undefined, [])
  const tools = requests[0]!.tools as Array<Record<string, unknown>>
  t.match(tools, [{ name: 'execute', input_schema: Object }, { type: 'bash_20250124', name: 'bash' }, { type: 'text_editor_20250728', name: 'str_replace_based_edit_tool' }])
  t.notOk('input_schema' in tools[1]!, 'a native tool is declared by its type only')
  t.equal(body.finish_reason, 'stop')
  fake.script('gpt-test', { text: 'hi' })
  const before = fake.received.length
  const res = await app.inject({ method: 'POST', url: '/v1/chat', headers: alice, payload: { messages: [{ role: 'user', content: 'hi' }], config: { llm: { model: 'gpt' } } } })
  t.equal(res.statusCode, 200)
  t.same((fake.received[before]!.body.tools as Array<{ function: { name: string } }>).map(x => x.function.name), ['execute'])
})

t.test('bash keeps one shell per session: cd and export last until restart, which starts a fresh one', async (t) => {
  const first = await turn(undefined, [
    { name: 'bash', input: { command: 'cd /tmp && export A=1' } },
    { name: 'bash', input: { command: 'echo $A; pwd' } },
    { name: 'bash', input: { command: 'echo oops >&2; (exit 3)' } }
  ])
  const session = first.body.session_id as string
  t.same(first.results.map(r => r.is_error ?? false), [false, false, false])
  t.equal(text(first.results[0]!), '(no output)', 'a command that prints nothing says so')
  t.equal(text(first.results[1]!), '1\n/tmp\n', 'the directory and the variable survived between calls')
  t.match(text(first.results[2]!), /oops\n\[exit code 3\]/, 'stderr and the exit code reach the model')
  t.match(first.body.messages, [
    { role: 'assistant', type: 'code', format: 'bash', content: 'cd /tmp && export A=1' },
    { role: 'computer', type: 'console', format: 'output' },
    { role: 'assistant', type: 'code', format: 'bash', content: 'echo $A; pwd' },
    { role: 'computer', type: 'console', format: 'output', content: '1\n/tmp\n' }
  ], 'the run stores each call as code and its result as console output, like other runs')

  const second = await turn(session, [
    { name: 'bash', input: { command: 'echo "[$A]"; pwd' } },
    { name: 'bash', input: { restart: true } },
    { name: 'bash', input: { command: 'echo "[$A]"; pwd' } },
    { name: 'bash', input: {} }
  ])
  t.equal(text(second.results[0]!), '[1]\n/tmp\n', 'the shell outlives the turn')
  t.match(text(second.results[1]!), /restarted/)
  t.equal(text(second.results[2]!), '[]\n/home/user\n', 'after restart: a fresh shell in the workspace')
  t.equal(second.results[3]!.is_error, true, 'no command and no restart is an error result')
  const history = second.requests[0]!.messages as Array<{ role: string, content: Array<Record<string, unknown>> }>
  const uses = history.flatMap(m => Array.isArray(m.content) ? m.content : []).filter(b => b.type === 'tool_use')
  t.match(uses, [{ name: 'bash', input: { command: 'cd /tmp && export A=1' } }, { name: 'bash', input: { command: 'echo $A; pwd' } }, { name: 'bash' }], 'history replays the calls as Claude made them')
})

t.test('the text editor: create, view with a range and directories, str_replace with 0, 2 and 1 matches, insert, confinement', async (t) => {
  const { results, body } = await turn(undefined, [
    { name: 'str_replace_based_edit_tool', input: { command: 'create', path: '/home/user/src/notes.txt', file_text: 'alpha\nbeta\ngamma\nbeta\ndelta\n' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/home/user/src/notes.txt', view_range: [2, 3] } },
    { name: 'str_replace_based_edit_tool', input: { command: 'str_replace', path: '/home/user/src/notes.txt', old_str: 'omega', new_str: 'x' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'str_replace', path: '/home/user/src/notes.txt', old_str: 'beta', new_str: 'x' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'str_replace', path: '/home/user/src/notes.txt', old_str: 'gamma\nbeta', new_str: 'GAMMA\nBETA' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'insert', path: 'src/notes.txt', insert_line: 0, new_str: 'top' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/home/user/src/notes.txt' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/home/user' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/etc/passwd' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/home/user/src/nope.txt' } },
    { name: 'str_replace_based_edit_tool', input: { command: 'view', path: '/home/user/src/notes.txt', view_range: [4, 99] } },
    { name: 'str_replace_based_edit_tool', input: { command: 'undo_edit', path: '/home/user/src/notes.txt' } },
    { name: 'bash', input: { command: 'cat src/notes.txt' } }
  ])
  t.equal(results[0]!.is_error, undefined, text(results[0]!))
  t.equal(text(results[1]!), '     2\tbeta\n     3\tgamma', 'view with a range: numbered lines')
  t.equal(results[2]!.is_error, true)
  t.match(text(results[2]!), /No match found for replacement/)
  t.equal(results[3]!.is_error, true)
  t.match(text(results[3]!), /Found 2 matches for replacement text/)
  t.notOk(results[4]!.is_error, text(results[4]!))
  t.match(text(results[4]!), /Successfully replaced text at exactly one location/)
  t.notOk(results[5]!.is_error)
  t.equal(text(results[6]!), '     1\ttop\n     2\talpha\n     3\tbeta\n     4\tGAMMA\n     5\tBETA\n     6\tdelta')
  t.match(text(results[7]!), /\/home\/user\/src\/\n(.|\n)*\/home\/user\/src\/notes\.txt/, 'a directory is listed two levels deep')
  t.equal(results[8]!.is_error, true)
  t.match(text(results[8]!), /outside the workspace/, 'paths are confined to the sandbox workspace')
  t.match(text(results[9]!), /does not exist/)
  t.equal(results[10]!.is_error, true, 'a range past the end is an error')
  t.match(text(results[11]!), /Unknown command "undo_edit"/, 'text_editor_20250728 has no undo_edit')
  t.equal(text(results[12]!), 'top\nalpha\nbeta\nGAMMA\nBETA\ndelta\n', 'the edits are in the sandbox, where bash sees them')
  t.match(body.messages, [{ role: 'assistant', type: 'code', format: 'str_replace_based_edit_tool', content: { command: 'create', path: '/home/user/src/notes.txt' } }], 'stored with its input')
  const errors = (body.messages as Array<{ type: string, format?: string }>).filter(m => m.type === 'console' && m.format === 'error')
  t.equal(errors.length, 6, 'error results are stored as such, so history replays is_error')
})

t.test('a view is cut to max_characters, saying so', async (t) => {
  const { ClaudeTools } = await import('../../services/interpreter/claude-tools.js')
  const { body } = await turn(undefined, [{ name: 'bash', input: { command: 'seq 1 5000 > big.txt' } }])
  const session = (await app.inject({ method: 'GET', url: `/v1/sessions/${body.session_id}`, headers: alice })).json()
  const record = await app.store.getSandbox(session.sandbox_id)
  const tools = new ClaudeTools(app.sandboxes)
  const view = await tools.edit(record!, { command: 'view', path: 'big.txt' }, 200)
  t.equal(view.isError, false)
  t.ok(view.text.length < 400, 'cut to max_characters plus a note')
  t.match(view.text, /output truncated: showing the first 200 of \d+ characters/)
})
