// Agent directories and the channel to agents, without Docker: where a deployment keeps its directories on each host,
// which ones a sweep may remove, and whether a runtime, as the engine reports it registered, lets the host reach a
// socket made inside a sandbox (issue 22's two defects).
import t from 'tap'
import { mkdirSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { agentDirBase, runtimeKeepsHostSockets, staleAgentDirs, AGENT_DIR_GRACE_MS } from '../../services/sandbox/agent-socket.js'

t.test('each deployment and host has its own directory under the shared base', async (t) => {
  t.equal(agentDirBase('/run/agents', 'prod', 'one'), '/run/agents/prod/one')
  t.not(agentDirBase('/run/agents', 'prod', 'one'), agentDirBase('/run/agents', 'prod', 'two'))
  t.not(agentDirBase('/run/agents', 'prod', 'one'), agentDirBase('/run/agents', 'staging', 'one'))
  t.equal(agentDirBase('/run/agents', '../x', 'a/b'), '/run/agents/.._x/a_b', 'names cannot climb out of the base')
})

t.test('a sweep removes only old directories no container uses', async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'agents-'))
  for (const name of ['sbx-used', 'sbx-young', 'sbx-old', 'other']) mkdirSync(join(base, name))
  const now = Date.now() + AGENT_DIR_GRACE_MS + 60_000 // as if every directory had been made long ago...
  t.same(await staleAgentDirs(base, new Set([join(base, 'sbx-used')]), AGENT_DIR_GRACE_MS, now), [join(base, 'sbx-old'), join(base, 'sbx-young')].sort())
  // ...and now, when they are all younger than the grace period: a container may be being created for each.
  t.same(await staleAgentDirs(base, new Set(), AGENT_DIR_GRACE_MS), [], 'young directories are never stale')
  t.same(await staleAgentDirs(join(base, 'missing'), new Set()), [], 'a base not made yet has nothing to sweep')
})

t.test('the socket channel under a runtime: from how the engine registered it', async (t) => {
  t.ok(runtimeKeepsHostSockets({ path: 'runc' }, 'runc'), 'runc: always')
  t.ok(runtimeKeepsHostSockets(undefined, 'kata'), 'another runtime: sockets in bind mounts are host sockets')
  t.ok(runtimeKeepsHostSockets({ path: '/usr/bin/runsc', runtimeArgs: ['--network=none', '--host-uds=all'] }, 'runsc'))
  t.ok(runtimeKeepsHostSockets({ path: '/usr/bin/runsc', runtimeArgs: ['--host-uds=create'] }, 'gvisor'), 'runsc by its path, under another name')
  t.notOk(runtimeKeepsHostSockets({ path: '/usr/bin/runsc', runtimeArgs: ['--network=none'] }, 'runsc'), 'runsc without --host-uds')
  t.notOk(runtimeKeepsHostSockets({ path: '/usr/bin/runsc', runtimeArgs: ['--host-uds=open'] }, 'runsc'), '--host-uds=open only reaches out')
  t.notOk(runtimeKeepsHostSockets(undefined, 'runsc'), 'runsc not registered')
})
