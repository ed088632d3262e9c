// Wire formats without Docker or Redis: Jupyter's two framings (and what a hostile frame gets), and the access log's
// redaction of keys in query strings (issue 20, item 12).
import t from 'tap'
import { JUPYTER_V1_PROTOCOL, MessageFactory, decodeFrame, encodeFrame } from '../../services/jupyter/messages.js'
import { redactUrl } from '../../plugins/request-log.js'

t.test('Jupyter messages survive both framings; anything else decodes to null, never a throw', async (t) => {
  const message = new MessageFactory('kernel-1').make('shell', 'execute_reply', { status: 'ok', execution_count: 3 }, { msg_id: 'p1' })
  for (const protocol of ['', JUPYTER_V1_PROTOCOL]) {
    const frame = encodeFrame(message, protocol)
    const back = decodeFrame(Buffer.isBuffer(frame) ? frame : Buffer.from(frame), Buffer.isBuffer(frame), protocol)
    t.same(back, { header: message.header, parent_header: message.parent_header, metadata: message.metadata, content: message.content, channel: 'shell' }, `round trip (${protocol || 'JSON'})`)
  }
  const huge = Buffer.alloc(16)
  huge.writeBigUInt64LE(2n ** 60n, 0)
  for (const [data, binary, protocol] of [
    [Buffer.from('not json'), false, ''], [Buffer.from('{"header": null}'), false, ''], [Buffer.from('[]'), false, ''],
    [Buffer.from([0, 0, 0, 0]), true, ''], [Buffer.from([0, 0, 0, 9, 0, 0, 0, 200]), true, ''],
    [huge, true, JUPYTER_V1_PROTOCOL], [Buffer.from('{}'), false, JUPYTER_V1_PROTOCOL], [Buffer.alloc(3), true, JUPYTER_V1_PROTOCOL]
  ] as const) {
    t.equal(decodeFrame(data, binary, protocol), null, `${binary ? 'binary' : 'text'} ${JSON.stringify(data.toString('latin1').slice(0, 12))} (${protocol || 'JSON'})`)
  }
})

t.test('a key in the query string is redacted whatever its spelling', async (t) => {
  t.equal(redactUrl('/x?a=1&%74oken=s3cret&b=2'), '/x?a=1&%74oken=[redacted]&b=2')
  t.equal(redactUrl('/x?TOK%45N=s3cret'), '/x?TOK%45N=[redacted]')
  t.equal(redactUrl('/x?api%5Fkey=s3cret&access_token=t'), '/x?api%5Fkey=[redacted]&access_token=[redacted]')
  t.equal(redactUrl('/x?tokenish=1&%zz=2'), '/x?tokenish=1&%zz=2', 'other names (and undecodable ones) are left alone')
  t.equal(redactUrl('/plain/path'), '/plain/path')
})
