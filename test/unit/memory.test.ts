// The in-memory event log and store (a server without Redis) forget what Redis's TTLs would: a session's log and
// record untouched for SESSION_TTL_S go, also when nobody asks for them again (before, the event log never expired).
import t from 'tap'
import { MemoryEventLog } from '../../services/events.js'
import { MemoryStore } from '../../services/store/memory.js'
import type { RunEvent } from '../../schemas/chat.js'

const event = (n: number) => ({ type: 'chunk', run_id: 'r', chunk: { role: 'assistant', type: 'message', content: `m${n}` } }) as unknown as RunEvent
/** The clock the code reads, moved by the test (no sleeping, so no timing luck). */
let now = Date.now()
const realNow = Date.now
t.before(() => { Date.now = () => now })
t.teardown(() => { Date.now = realNow })

t.test('an event log untouched for the TTL is gone; one appended to lives on', async (t) => {
  const log = new MemoryEventLog(1024 * 1024, 60_000)
  await log.append('old', event(1))
  await log.append('kept', event(1))
  now += 40_000
  await log.append('kept', event(2))
  now += 40_000
  t.equal(await log.lastId('old'), null, 'the idle log expired')
  t.not(await log.lastId('kept'), null, 'appending renews')
  now += 120_000
  await log.append('new', event(1)) // a later append sweeps the logs nobody asks for
  t.equal(log.size, 1, 'only the fresh log is held in memory')
  await log.delete('new')
  t.equal(log.size, 0)
})

t.test('the memory store drops expired sessions on a later save, not only when they are read', async (t) => {
  const store = new MemoryStore(60_000)
  const session = (id: string) => ({ id, owner: 'alice', title: null, created_at: new Date(now).toISOString(), updated_at: new Date(now).toISOString(), settings: {}, sandbox_id: null, message_count: 0 }) as never
  await store.saveSession(session('ses_a'))
  now += 120_000
  await store.saveSession(session('ses_b'))
  t.equal((store as unknown as { sessions: Map<string, unknown> }).sessions.size, 1, 'the expired session was dropped')
  t.equal(await store.getSession('ses_a'), null)
  t.ok(await store.getSession('ses_b'))
})
