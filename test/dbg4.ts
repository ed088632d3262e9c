import { build, sandboxConfig, auth, KEYS } from './helper.js'
const t = { after: () => {}, teardown: () => {} } as any
process.env.TEST_SANDBOX_RUNTIME = 'runsc'
const config = await sandboxConfig({ SANDBOX_PAUSE_MODE: 'memory', LOG_LEVEL: 'debug' })
const app = await build(t, config, { logger: { level: 'debug' } })
const alice = auth(KEYS.alice)
for (let i = 0; i < 8; i++) {
  const id = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: {} })).json().id
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code: 'x=42' } })
  const t0 = Date.now()
  const p = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/pause`, headers: alice })).json()
  const t1 = Date.now()
  const r = (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/resume`, headers: alice })).json()
  console.error('CYCLE', i, p.pause_mode, t1 - t0, Date.now() - t1, r.state_lost, r.error?.message ?? '')
  await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${id}`, headers: alice })
}
await app.close()
