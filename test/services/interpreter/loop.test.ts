import t from 'tap'
import { FakeLlm } from '../../fake-llm.js'
import { writeModelsFile, FAKE_ENV } from '../../helper.js'
import { ModelRegistry } from '../../../services/llm/registry.js'
import { runTurn, type TurnDeps } from '../../../services/interpreter/loop.js'
import { trimToContext, toChatMessages, cutForModel } from '../../../services/interpreter/history.js'
import { partialStringField } from '../../../services/interpreter/partial-json.js'
import type { Message } from '../../../schemas/sessions.js'
import type { Chunk } from '../../../schemas/chat.js'
import type { Execution } from '../../../schemas/sandboxes.js'

const fake = new FakeLlm()
let models: ModelRegistry
t.before(async () => {
  await fake.start()
  models = new ModelRegistry(writeModelsFile(fake.url), FAKE_ENV)
  models.load()
})
t.teardown(() => fake.stop())

/** The loop's collaborators, with code execution answered from a table (the sandbox is tested elsewhere). */
function deps (outputs: (code: string) => string) {
  const chunks: Chunk[] = []
  const stored: Message[] = []
  const d: TurnDeps = {
    models,
    signal: new AbortController().signal,
    emit: async (c) => { chunks.push(c) },
    fallback: async () => {},
    store: async (m) => { stored.push(...m) },
    confirm: async () => 'approved',
    execute: async (language, code, onEvent): Promise<Execution> => {
      const stdout = outputs(code)
      onEvent({ type: 'stdout', text: stdout })
      return { sandbox_id: 'sbx', language, stdout, stderr: '', results: [], error: null, execution_count: 1, duration_ms: 1, state_lost: false }
    }
  }
  return { d, chunks, stored }
}
const opts = { model: 'gpt', temperature: 0, maxTokens: 100, autoRun: true, maxSteps: 20, outputLimit: 2800 }

t.test('the step limit ends a turn that keeps calling code, and the client is told', async (t) => {
  for (let i = 0; i < 2; i++) fake.script('gpt-test', { code: { language: 'python', code: `print(${i})` } })
  const calls = fake.received.length
  const { d, chunks, stored } = deps(code => `${code.slice(6, -1)}\n`)
  const result = await runTurn([{ role: 'user', type: 'message', content: 'loop forever' }], d, { ...opts, maxSteps: 2 })
  t.equal(result.finishReason, 'step_limit')
  t.ok(chunks.some(c => c.type === 'console' && /Stopped after 2 steps/.test(String(c.content))), 'a console chunk says so')
  t.equal(stored.filter(m => m.type === 'code').length, 2, 'two steps ran')
  t.equal(fake.received.length - calls, 2, 'and the model was not called a third time')
})

t.test('long output is cut for the model (the tail kept), while clients and history get all of it', async (t) => {
  const long = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n'
  let given = ''
  fake.script('gpt-test', { code: { language: 'python', code: 'print_lots()' } }, (body) => {
    const messages = body.messages as Array<{ role: string, content: string }>
    given = messages[messages.length - 1].content
    return { text: 'ok' }
  })
  const { d, chunks, stored } = deps(() => long)
  await runTurn([{ role: 'user', type: 'message', content: 'go' }], d, opts)
  t.ok(given.length < 2900, `the model got ${given.length} characters`)
  t.match(given, /^\[output truncated: showing the last 2800 of \d+ characters\]/)
  t.ok(given.endsWith('line 1999\n'), 'the tail is kept')
  t.equal(chunks.filter(c => c.type === 'console').map(c => c.content ?? '').join(''), long, 'clients saw everything')
  t.equal(stored.find(m => m.type === 'console')?.content, long, 'history keeps everything')
})

t.test('history is trimmed to the context window by whole turns, keeping the system message and the last turn', async (t) => {
  const history: Message[] = []
  for (let i = 0; i < 10; i++) {
    history.push({ role: 'user', type: 'message', content: `question ${i} ${'x'.repeat(400)}` })
    history.push({ role: 'assistant', type: 'code', format: 'python', content: `print(${i})`, id: `call_${i}` })
    history.push({ role: 'computer', type: 'console', format: 'output', content: `${i}\n`, id: `call_${i}` })
  }
  const chat = trimToContext([{ role: 'system', content: 'sys' }, ...toChatMessages(history)], 500)
  t.equal(chat[0].role, 'system')
  t.equal(chat[1].role, 'user', 'it starts at a user message, so no tool result is orphaned')
  t.match(chat[1].content, /^question [6-9]/, 'older turns were dropped')
  t.match(chat[chat.length - 1], { role: 'tool', toolCallId: 'call_9', content: '9\n' })
  t.ok(chat.every((m, i) => m.role !== 'tool' || chat[i - 1].role === 'assistant' || chat[i - 1].role === 'tool'), 'every tool result follows its call')
})

t.test('tool arguments are read while they stream', async (t) => {
  t.same(partialStringField('{"language": "python", "code": "print(\\"hi\\")\\nx = 1', 'code'), { value: 'print("hi")\nx = 1', complete: false })
  t.same(partialStringField('{"language": "py', 'language'), { value: 'py', complete: false })
  t.same(partialStringField('{"code": "a\\u00e9b", "x": 1}', 'code'), { value: 'aéb', complete: true })
  t.same(partialStringField('{"code": "tail\\', 'code'), { value: 'tail', complete: false }, 'a half escape waits for the rest')
  t.equal(partialStringField('{"lang', 'code'), null)
  t.equal(cutForModel('short', 10), 'short')
})
