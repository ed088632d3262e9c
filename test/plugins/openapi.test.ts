import t from 'tap'
import { Validator } from '@seriousme/openapi-schema-validator'
import { build, auth, KEYS } from '../helper.js'

t.test('the OpenAPI document validates and documents every route', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json()
  const validator = new Validator()
  const result = await validator.validate(doc)
  t.same(result.errors ?? [], [], 'no validation errors')
  t.ok(result.valid, 'valid OpenAPI')
  t.equal(doc.openapi, '3.1.0')
  for (const path of ['/v1/sessions', '/v1/sessions/{id}', '/v1/sessions/{id}/messages', '/v1/sandboxes', '/v1/sandboxes/{id}/execute', '/v1/health', '/v1/ready']) {
    t.ok(doc.paths[path], `${path} is documented`)
  }
  for (const [path, methods] of Object.entries(doc.paths as Record<string, Record<string, { tags?: string[], summary?: string, responses?: object }>>)) {
    for (const [method, op] of Object.entries(methods)) {
      t.ok(op.tags?.length && op.summary, `${method} ${path} has tags and a summary`)
      t.ok(op.responses && Object.keys(op.responses).length > 0, `${method} ${path} documents its responses`)
    }
  }
  const ui = await app.inject({ method: 'GET', url: '/docs' })
  t.ok(ui.statusCode < 400, 'Swagger UI is served')
})

t.test('metrics: admin only by default, Prometheus format, requests by route and status', async (t) => {
  const app = await build(t)
  await app.inject({ method: 'GET', url: '/v1/sessions', headers: auth(KEYS.alice) })
  t.equal((await app.inject({ method: 'GET', url: '/metrics' })).statusCode, 401)
  t.equal((await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.alice) })).statusCode, 403)
  const res = await app.inject({ method: 'GET', url: '/metrics', headers: auth(KEYS.admin) })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /text\/plain/)
  t.match(res.body, /http_requests_total\{method="GET",route="\/v1\/sessions",status="200"\} 1/)
  t.match(res.body, /http_request_duration_seconds_bucket/)
})
