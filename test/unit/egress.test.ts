// Egress policy arithmetic, without Docker or Redis: parsing allow lists, what an operator's list covers, the decision
// for a destination (with a resolver of the test's own), and the wall around a user key's sandbox (issue 20, item 11).
import t from 'tap'
import { canonicalAddress, checkAllowed, decide, embeddedV4, forbiddenAddress, parseAllowedList, parsePolicy, parseRule, userWall } from '../../services/sandbox/egress.js'

const catchIt = (fn: () => unknown): unknown => { try { fn() } catch (err) { return err } return null }

t.test('allow-list entries parse, or are a 400 naming the field', async (t) => {
  t.match(parseRule('PyPI.org.', 'f'), { host: 'pypi.org', wildcard: false, ip: false, port: null })
  t.match(parseRule('*.example.com:8443', 'f'), { host: 'example.com', wildcard: true, port: 8443 })
  t.match(parseRule('[::1]:8080', 'f'), { host: '::1', ip: true, port: 8080 })
  t.match(parseRule('10.0.0.5', 'f'), { host: '10.0.0.5', ip: true, port: null })
  t.match(parseRule('::1', 'f'), { host: '::1', ip: true, port: null }, 'a bare IPv6 address')
  for (const [raw, message] of [['', /must be a host/], ['not a host!', /is not a host name/], ['a.b:70000', /out of range/], ['*', /is not a host name/], ['*.org', /is not a host name/]] as const) {
    t.match(catchIt(() => parseRule(raw, 'network.allow[0]')), { statusCode: 400, message }, 'naming the field and the problem')
  }
  t.match(parseAllowedList('*, *.example.org,10.0.0.5:80'), [{ host: '*' }, { host: 'example.org', wildcard: true }, { host: '10.0.0.5', port: 80 }], 'the operator may write *')
  t.same(parsePolicy('none'), [])
  t.throws(() => parsePolicy({ allow: Array.from({ length: 101 }, () => 'a.org') }), { message: /at most 100/ })
  t.match(catchIt(() => parsePolicy(['a.org'])), { statusCode: 400 })
})

t.test("a user key's list must stay within the operator's; an admin's need not", async (t) => {
  const operator = parseAllowedList('*.example.org,files.example.com:8080')
  checkAllowed(parsePolicy({ allow: ['pypi.example.org', 'files.example.com:8080'] }), operator, false)
  t.match(catchIt(() => checkAllowed(parsePolicy({ allow: ['files.example.com'] }), operator, false)), { statusCode: 403, code: 'egress_not_allowed' }, 'a port the operator did not name')
  t.match(catchIt(() => checkAllowed(parsePolicy({ allow: ['*.other.org'] }), operator, false)), { statusCode: 403, message: /\*\.other\.org/ })
  checkAllowed(parsePolicy({ allow: ['evil.example.net'] }), operator, true)
})

t.test('a destination is checked against the rules, resolved, and refused on a non-public address unless named', async (t) => {
  const names: Record<string, string[]> = { 'api.example.org': ['93.184.216.34'], 'inside.example.org': ['10.1.2.3'], 'meta.example.org': ['169.254.169.254'] }
  const resolve = async (host: string) => { if (!names[host]) throw new Error('NXDOMAIN'); return names[host] }
  const rules = parsePolicy({ allow: ['*.example.org', '10.9.9.9:5432'] })
  t.same(await decide(rules, 'api.example.org', 443, resolve), { ok: true, address: '93.184.216.34' })
  t.match(await decide(rules, 'api.example.org', 22, resolve), { ok: false, reason: 'not in the allow list' }, 'only 80 and 443 without a port')
  t.match(await decide(rules, 'inside.example.org', 443, resolve), { ok: false, reason: /10\.1\.2\.3 is a private address/ }, 'a name that resolves inside')
  t.match(await decide(rules, 'meta.example.org', 80, resolve), { ok: false, reason: /metadata/ })
  t.match(await decide(rules, 'nope.example.org', 80, resolve), { ok: false, reason: 'the name does not resolve' })
  t.same(await decide(rules, '10.9.9.9', 5432, resolve), { ok: true, address: '10.9.9.9' }, 'a private address the list names')
  const wall = (address: string, port: number) => userWall(address, port, [], [])
  t.match(await decide(rules, '10.9.9.9', 5432, resolve, wall), { ok: false, reason: /private/ }, 'but not past the user wall unless the operator names it too')
})

t.test('11: the user wall knows every spelling of loopback, metadata and the server\'s own endpoints', async (t) => {
  for (const a of ['127.0.0.1', '::1', '::ffff:127.0.0.1', '::ffff:7f00:1', '::127.0.0.1', '64:ff9b::7f00:1', '2002:7f00:1::', '0.0.0.0', '::']) {
    t.ok(['loopback', 'unspecified'].includes(forbiddenAddress(a) ?? ''), `${a} is loopback or unspecified`)
  }
  t.equal(forbiddenAddress('169.254.169.254'), 'metadata')
  t.equal(forbiddenAddress('fd00:ec2:0::254'), 'metadata')
  t.equal(forbiddenAddress('::ffff:169.254.169.254'), 'metadata')
  t.equal(embeddedV4('2002:0a00:0001::1'), '10.0.0.1')
  t.equal(canonicalAddress('::ffff:10.1.2.3'), '10.1.2.3')
  const star = parseAllowedList('*')
  const own = [{ address: '10.0.0.5', port: 6379 }, { address: '*', port: 8000 }]
  t.match(userWall('127.0.0.1', 80, parseAllowedList('127.0.0.1'), own), /loopback/, 'loopback even where the operator lists it')
  t.match(userWall('169.254.169.254', 80, star, own), /metadata/)
  t.match(userWall('fd00:ec2::254', 80, star, own), /metadata/)
  t.match(userWall('10.1.1.1', 443, star, own), /private/, 'a private address needs the operator to name it')
  t.equal(userWall('10.1.1.1', 443, parseAllowedList('10.1.1.1'), own), null, 'named: allowed')
  t.match(userWall('10.0.0.5', 6379, parseAllowedList('10.0.0.5'), own), /own endpoint/, 'the server\'s Redis, even when named')
  t.match(userWall('::ffff:10.0.0.5', 6379, parseAllowedList('10.0.0.5'), own), /own endpoint/, 'in any spelling')
  t.match(userWall('93.184.216.34', 8000, star, own), /own endpoint/, 'the server\'s port on any address when it listens on all')
  t.equal(userWall('93.184.216.34', 443, star, own), null, 'a public address is the allow list\'s business')
})
