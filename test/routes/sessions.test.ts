import t from 'tap'
import { build, testConfig, auth, KEYS, REDIS_URL, flushPrefix, sleep } from '../helper.js'

const alice = auth(KEYS.alice)

t.test('a session is created, listed newest first with pagination, read, updated and deleted', async (t) => {
  const app = await build(t)
  const ids: string[] = []
  for (const title of ['one', 'two', 'three']) {
    const res = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title, settings: { model: 'gpt-4o', auto_run: true } } })
    t.equal(res.statusCode, 201)
    t.match(res.json(), { object: 'session', title, owner: 'alice', settings: { model: 'gpt-4o', auto_run: true }, message_count: 0, sandbox_id: null })
    ids.push(res.json().id)
    await sleep(2)
  }
  const first = (await app.inject({ method: 'GET', url: '/v1/sessions?limit=2', headers: alice })).json()
  t.same(first.data.map((s: { title: string }) => s.title), ['three', 'two'])
  t.equal(first.has_more, true)
  const second = (await app.inject({ method: 'GET', url: `/v1/sessions?limit=2&offset=${first.next_offset}`, headers: alice })).json()
  t.same(second.data.map((s: { title: string }) => s.title), ['one'])
  t.equal(second.has_more, false)
  t.equal(second.next_offset, null)

  const patched = await app.inject({ method: 'PATCH', url: `/v1/sessions/${ids[0]}`, headers: alice, payload: { title: 'renamed', settings: { temperature: 0.2 } } })
  t.equal(patched.statusCode, 200)
  t.match(patched.json(), { title: 'renamed', settings: { model: 'gpt-4o', auto_run: true, temperature: 0.2 } }, 'settings are merged')

  const messages = await app.inject({ method: 'GET', url: `/v1/sessions/${ids[0]}/messages`, headers: alice })
  t.same(messages.json(), { object: 'list', data: [], has_more: false, next_offset: null })

  await app.events.append(ids[0], { type: 'run_start', run_id: 'r1', model: 'gpt-4o' } as never)
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sessions/${ids[0]}`, headers: alice })).statusCode, 204)
  t.equal(await app.events.lastId(ids[0]), null, 'its event log went with it')
  const gone = await app.inject({ method: 'GET', url: `/v1/sessions/${ids[0]}`, headers: alice })
  t.equal(gone.statusCode, 404)
  t.equal(gone.json().error.code, 'session_not_found')
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data.length, 2)
})

t.test('bad input gets a 4xx naming the problem and changes nothing', async (t) => {
  const app = await build(t, testConfig({ BODY_LIMIT: '2048' }))
  const wrongType = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 5 } })
  t.equal(wrongType.statusCode, 400)
  t.match(wrongType.json(), { error: { type: 'invalid_request_error', code: 'validation_error', message: /body\/title/ } })

  const nested = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { settings: { temperature: 7 } } })
  t.equal(nested.statusCode, 400)
  t.match(nested.json().error.message, /body\/settings\/temperature/)

  const unknownField = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { colour: 'red' } })
  t.equal(unknownField.statusCode, 400)
  t.match(unknownField.json().error.message, /additional properties/)

  const badJson = await app.inject({ method: 'POST', url: '/v1/sessions', headers: { ...alice, 'content-type': 'application/json' }, payload: '{"title": ' })
  t.equal(badJson.statusCode, 400)
  t.equal(badJson.json().error.type, 'invalid_request_error')

  const badQuery = await app.inject({ method: 'GET', url: '/v1/sessions?limit=1000', headers: alice })
  t.equal(badQuery.statusCode, 400)
  t.match(badQuery.json().error.message, /querystring\/limit/)

  const tooBig = await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'x'.repeat(200), metadata: { blob: 'y'.repeat(1000), more: 'z'.repeat(1000) } } })
  t.equal(tooBig.statusCode, 413)
  t.same(tooBig.json(), { error: { message: 'The request body is larger than the server accepts', type: 'invalid_request_error', code: 'body_too_large' } })

  const unknownRoute = await app.inject({ method: 'GET', url: '/v1/nothing-here', headers: alice })
  t.equal(unknownRoute.statusCode, 404)
  t.equal(unknownRoute.json().error.code, 'route_not_found')

  const unknownId = await app.inject({ method: 'GET', url: '/v1/sessions/ses_doesnotexist', headers: alice })
  t.equal(unknownId.statusCode, 404)

  const emptyPatch = await app.inject({ method: 'PATCH', url: '/v1/sessions/ses_doesnotexist', headers: alice, payload: {} })
  t.equal(emptyPatch.statusCode, 400, 'an empty patch is a validation error')

  t.same((await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data, [], 'no session was half-written')
})

t.test('a session expires after SESSION_TTL_S without activity', async (t) => {
  const config = testConfig({ SESSION_TTL_S: '1' })
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const app = await build(t, config)
  const kept = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'kept alive' } })).json()
  const idle = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'idle' } })).json()
  for (let i = 0; i < 4; i++) {
    await sleep(400)
    t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${kept.id}`, headers: alice })).statusCode, 200, 'activity renews the TTL')
  }
  t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${idle.id}`, headers: alice })).statusCode, 404, 'the idle session expired')
  const list = (await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json()
  t.same(list.data.map((s: { title: string }) => s.title), ['kept alive'])
})

t.test('messages survive the app being closed and rebuilt on the same Redis', async (t) => {
  const config = testConfig()
  t.teardown(() => flushPrefix(REDIS_URL, config.REDIS_PREFIX))
  const first = await build(t, config)
  const session = await first.sessions.create({ name: 'alice', role: 'user' }, { title: 'durable' })
  await first.sessions.append(session, [
    { role: 'user', type: 'message', content: 'hello' },
    { role: 'assistant', type: 'code', format: 'python', content: 'print(1)' }
  ])
  await first.close()
  const second = await build(t, config)
  const res = await second.inject({ method: 'GET', url: `/v1/sessions/${session.id}/messages`, headers: alice })
  t.equal(res.statusCode, 200)
  t.match(res.json().data, [{ role: 'user', content: 'hello', created_at: String }, { type: 'code', content: 'print(1)' }])
  t.equal((await second.inject({ method: 'GET', url: `/v1/sessions/${session.id}`, headers: alice })).json().message_count, 2)
})

t.test('without REDIS_URL the in-process store behaves the same', async (t) => {
  const app = await build(t, testConfig({ REDIS_URL: undefined }))
  t.equal(app.store.kind, 'memory')
  const created = (await app.inject({ method: 'POST', url: '/v1/sessions', headers: alice, payload: { title: 'laptop' } })).json()
  t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: alice })).json().title, 'laptop')
  t.equal((await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: auth(KEYS.bob) })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: '/v1/sessions', headers: alice })).json().data.length, 1)
})
