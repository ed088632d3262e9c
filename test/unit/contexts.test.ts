// The per-context sandboxes every "workspace per conversation" adapter uses (tools, LibreChat, Open Terminal): one
// sandbox per key and context, found again by name, made once when two first calls race, made afresh once removed,
// and the records of removed ones dropped once a key has many. Over the memory store and a fake creator.
import t from 'tap'
import { MemoryStore } from '../../services/store/memory.js'
import { ContextSandboxes, PRUNE_ABOVE } from '../../services/sandbox/contexts.js'
import type { SandboxService } from '../../services/sandbox/service.js'
import type { SandboxRecord } from '../../schemas/sandboxes.js'

t.test('one sandbox per key and context; racing first calls share it; a removed one is replaced; records are pruned', async (t) => {
  const store = new MemoryStore(60_000)
  let made = 0
  const created: Array<Record<string, unknown>> = []
  const fake = {
    create: async (principal: { name: string }, spec: Record<string, unknown>) => {
      await new Promise(resolve => setTimeout(resolve, 5))
      const record = { id: `sbx_${++made}`, owner: principal.name } as unknown as SandboxRecord
      created.push(spec)
      await store.saveSandbox(record)
      return record
    }
  } as unknown as SandboxService
  const contexts = new ContextSandboxes(fake, store)
  const alice = { name: 'alice', role: 'user' as const }
  const bob = { name: 'bob', role: 'user' as const }

  const [a, b] = await Promise.all([contexts.get(alice, 'k', 'chat-1', {}), contexts.get(alice, 'k', 'chat-1', {})])
  t.equal(a.record.id, b.record.id, 'two first calls of one context get one sandbox')
  t.equal(made, 1)
  t.equal(created[0]!.on_timeout, 'pause', 'paused when idle, unless the spec says otherwise')
  t.equal((await contexts.get(alice, 'k', 'chat-1', {})).status, 'reused')
  t.not((await contexts.get(bob, 'k', 'chat-1', {})).record.id, a.record.id, 'another key naming the same context gets its own')
  t.equal(await contexts.find(alice, 'k', 'chat-2'), null)

  await store.deleteSandbox(a.record.id)
  const again = await contexts.get(alice, 'k', 'chat-1', {})
  t.equal(again.status, 'new', 'a removed sandbox is replaced on the next use')
  t.not(again.record.id, a.record.id)

  for (let i = 0; i < PRUNE_ABOVE + 10; i++) {
    const { record } = await contexts.get(alice, 'k', `many-${i}`, {})
    if (i % 2 === 0) await store.deleteSandbox(record.id)
  }
  await new Promise(resolve => setTimeout(resolve, 50))
  const left = await store.listNamed('k', 'alice')
  t.ok(left.length <= PRUNE_ABOVE, `records of removed sandboxes are dropped (${left.length} left)`)
  t.ok(left.some(r => r.name === 'chat-1'), 'live ones stay')
  t.ok(await contexts.find(alice, 'k', 'many-1'), 'a live context is still found')
  t.equal((await store.listNamed('k', 'bob')).length, 1, 'another key\'s records are untouched')
})
