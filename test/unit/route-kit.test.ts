// The one error mapper every protocol's routes use (plugins/route-kit.ts): what a client is told for errors that are
// not ours to shape (a sandbox's agent gone under a request, the router's own, a validation failure).
import t from 'tap'
import { errorBody, toAppError } from '../../plugins/route-kit.js'
import { AgentGone, AgentTimeout } from '../../services/sandbox/agent-client.js'

t.test('a sandbox whose agent went away under a request is 410 sandbox_lost, never a 500', async (t) => {
  const e = toAppError(new AgentGone('the sandbox agent closed its stream'))
  t.equal(e.statusCode, 410)
  t.same(errorBody(new AgentGone('x')).error, { message: 'The sandbox stopped while it was being used; its variables and files are lost', type: 'sandbox_error', code: 'sandbox_lost' })
})

t.test('an agent that does not answer is 503 with a retry, an unknown error a bare 500', async (t) => {
  t.match(errorBody(new AgentTimeout('list', 30_000)).error, { code: 'sandbox_unresponsive', retry_after: 5 })
  t.same(errorBody(new Error('secret detail')).error, { message: 'Internal server error', type: 'server_error', code: 'internal_error' })
})
