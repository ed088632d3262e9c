// Named volumes against the real engine: loop-mounted ext4 images bind-mounted into sandboxes.
import t from 'tap'
import { statSync } from 'node:fs'
import { join } from 'node:path'
import { readFile } from 'node:fs/promises'
import { build, sandboxConfig, auth, KEYS, REDIS_URL, flushPrefix } from '../../helper.js'
import type { VolumeRecord } from '../../../schemas/sandboxes.js'

const alice = auth(KEYS.alice)
const bob = auth(KEYS.bob)
const mounted = async (path: string) => (await readFile('/proc/self/mountinfo', 'utf8')).split('\n').some(l => l.split(' ')[4] === path)

t.test('a volume outlives its sandboxes, is shared by the key, refused to others, and stops a writer at its size', async (t) => {
  const config = await sandboxConfig({ SANDBOX_MAX_VOLUMES_PER_KEY: '2', SANDBOX_VOLUME_MAX_MB: '64' })
  const app = await build(t, config)
  t.teardown(async () => {
    for (const name of ['data', 'other']) await app.inject({ method: 'DELETE', url: `/v1/volumes/${name}`, headers: alice })
    await flushPrefix(REDIS_URL, config.REDIS_PREFIX)
  })
  const run = async (id: string, code: string) => (await app.inject({ method: 'POST', url: `/v1/sandboxes/${id}/execute`, headers: alice, payload: { code } })).json()

  const made = await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'data', size_mb: 20 } })
  t.equal(made.statusCode, 201)
  t.match(made.json(), { object: 'volume', name: 'data', size_mb: 20 })
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'data', size_mb: 20 } })).json().error.code, 'volume_exists')
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'Data!', size_mb: 20 } })).statusCode, 400)
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'big', size_mb: 65 } })).statusCode, 400, 'over SANDBOX_VOLUME_MAX_MB')
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'other', size_mb: 5 } })).statusCode, 201)
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: alice, payload: { name: 'third', size_mb: 5 } })).json().error.code, 'volume_limit_reached')
  t.same((await app.inject({ method: 'GET', url: '/v1/volumes', headers: bob })).json().data, [], "bob sees none of alice's")
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes/data', headers: bob })).statusCode, 404)

  for (const path of ['/etc', '/home/user', '/home/user/../etc', '/mnt/./x', 'relative', '/mnt/data', '/mnt/data/x']) {
    const res = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { volumes: [{ name: 'data', path }] } })
    t.equal(res.statusCode, 400, `mount path ${path} is refused`)
  }
  const bobs = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: bob, payload: { volumes: [{ name: 'data', path: '/home/user/data' }] } })
  t.equal(bobs.statusCode, 404, "bob cannot mount alice's volume")
  t.equal(bobs.json().error.code, 'volume_not_found')

  const writer = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { volumes: [{ name: 'data', path: '/home/user/data' }] } })
  t.equal(writer.statusCode, 201)
  t.same(writer.json().volumes, [{ name: 'data', path: '/home/user/data' }])
  const a = writer.json().id as string
  t.equal((await run(a, 'open("/home/user/data/shared.txt", "w").write("hello from a")\nprint("ok")')).stdout, 'ok\n')

  // The size cap: the writer gets ENOSPC inside, the host's disk holds no more than the volume's size.
  const full = await run(a, 'import errno\ntry:\n    with open("/home/user/data/fill", "wb") as f:\n        for _ in range(30): f.write(b"x" * 2**20); f.flush()\nexcept OSError as e:\n    print(errno.errorcode[e.errno])')
  t.equal(full.stdout, 'ENOSPC\n', 'a full volume is ENOSPC to the code')
  const image = join(config.SANDBOX_VOLUME_DIR, config.SANDBOX_NAMESPACE)
  const { id: volumeId } = (await app.store.getNamed<VolumeRecord>('volume', 'alice', 'data'))!
  t.ok(statSync(join(image, `${volumeId}.img`)).blocks * 512 <= 21 * 1024 * 1024, 'the image takes at most its size on the host')
  t.equal((await run(a, 'print(len(open("/home/user/data/shared.txt").read()))')).stdout, '12\n', 'what was there is intact')
  await run(a, 'import os; os.remove("/home/user/data/fill")')
  const used = (await app.inject({ method: 'GET', url: '/v1/volumes/data', headers: alice })).json().used_bytes
  t.ok(used > 0 && used < 20 * 1024 * 1024, 'used_bytes says what its files take')

  // Another sandbox of the key reads it, read-only here; after the writer is gone too.
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/volumes/data', headers: alice })).json().error.code, 'volume_in_use')
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${a}`, headers: alice })).statusCode, 204)
  const reader = (await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: alice, payload: { volumes: [{ name: 'data', path: '/mnt/shared', read_only: true }] } })).json().id as string
  t.equal((await run(reader, 'print(open("/mnt/shared/shared.txt").read())')).stdout, 'hello from a\n', 'visible to a later sandbox of the key')
  t.match((await run(reader, 'open("/mnt/shared/x", "w")')).error, { name: 'OSError' }, 'read-only where asked')

  // A pause that keeps files leaves the volume out of the workspace, and the resumed sandbox mounts it again.
  await app.inject({ method: 'POST', url: `/v1/sandboxes/${reader}/pause`, headers: alice })
  t.equal((await run(reader, 'print(open("/mnt/shared/shared.txt").read())')).stdout, 'hello from a\n', 'mounted again after a resume')

  t.equal((await app.inject({ method: 'DELETE', url: `/v1/sandboxes/${reader}`, headers: alice })).statusCode, 204)
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/volumes/data', headers: bob })).statusCode, 404)
  t.equal((await app.inject({ method: 'DELETE', url: '/v1/volumes/data', headers: alice })).statusCode, 204)
  t.notOk(await mounted(join(image, volumeId)), 'unmounted')
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes/data', headers: alice })).statusCode, 404)
})
