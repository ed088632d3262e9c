// Named volumes of a key: a directory that outlives its sandboxes, mounted into those that ask for it, with a size cap
// that code cannot pass. Each is an ext4 file system in a sparse image file of its size, loop-mounted by this server
// on the Docker host it shares (the socket channel's condition too), and bind-mounted into sandboxes: a full volume
// answers ENOSPC inside, and the host's disk gives it no more than its size.
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, open, readFile, rm, rmdir } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Principal } from '../auth.js'
import { AppError } from '../errors.js'
import type { Store } from '../store/types.js'
import type { Logger } from './pool.js'
import type { SandboxRecord, VolumeMount, VolumeRecord } from '../../schemas/sandboxes.js'

const run = promisify(execFile)
const KIND = 'volume'
const USER_UID = 1000
/**
 * Where a sandbox may mount a volume: a directory of its home, or under /mnt, but not /mnt/data (the image's link to
 * the home, for LibreChat: a mount there would cover the whole home).
 */
const MOUNT_PATH = /^\/(home\/user|mnt)(\/[A-Za-z0-9_.-]+)+$/
const HOME_LINK = /^\/mnt\/data(\/|$)/

export interface VolumeOptions {
  /** Where the images and their mount points live on the Docker host (SANDBOX_VOLUME_DIR), per namespace. */
  dir: string
  namespace: string
  maxPerKey: number
  maxMb: number
  /** Why this server cannot give volumes (a remote or several Docker hosts); unset: it can. */
  unavailable?: string
}

/** A volume ready to bind: its mount point on the host, and where and how the sandbox sees it. */
export interface VolumeBind { source: string, path: string, readOnly: boolean }

export class Volumes {
  constructor (private readonly store: Store, private readonly opts: VolumeOptions, private readonly log: Logger) {}

  private get base (): string { return join(this.opts.dir, this.opts.namespace) }
  private image (v: VolumeRecord): string { return join(this.base, `${v.id}.img`) }
  private mountPoint (v: VolumeRecord): string { return join(this.base, v.id) }

  private available (): void {
    if (this.opts.unavailable) throw new AppError(400, 'volumes_unavailable', `This server cannot give volumes: ${this.opts.unavailable}`)
  }

  /** A new empty volume of the key; 409 when the name is taken, 429 over SANDBOX_MAX_VOLUMES_PER_KEY. */
  async create (principal: Principal, name: string, sizeMb: number): Promise<VolumeRecord> {
    this.available()
    if (sizeMb > this.opts.maxMb) throw new AppError(400, 'validation_error', `body/size_mb must be at most ${this.opts.maxMb}`)
    if (await this.store.getNamed(KIND, principal.name, name)) throw new AppError(409, 'volume_exists', `This key already has a volume named ${name}`)
    const count = (await this.store.listNamed(KIND, principal.name)).length
    if (count >= this.opts.maxPerKey) throw new AppError(429, 'volume_limit_reached', `This key already has ${count} volumes (the limit is ${this.opts.maxPerKey}); delete one first`)
    const volume: VolumeRecord = { name, owner: principal.name, id: `vol_${randomBytes(9).toString('base64url')}`, size_mb: sizeMb, created_at: new Date().toISOString() }
    await mkdir(this.base, { recursive: true, mode: 0o700 })
    const image = this.image(volume)
    try {
      const file = await open(image, 'wx', 0o600)
      await file.truncate(sizeMb * 1024 * 1024) // sparse: the host's disk holds what is written
      await file.close()
      // No blocks kept for root, the root directory the sandbox user's.
      await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', `root_owner=${USER_UID}:${USER_UID}`, image])
      await this.mount(volume)
      await rmdir(join(this.mountPoint(volume), 'lost+found')).catch(() => {})
    } catch (err) {
      await this.unmount(volume).catch(() => {})
      await rm(image, { force: true })
      throw new AppError(503, 'volumes_unavailable', `The volume could not be made: ${(err as Error).message.split('\n')[0]}`, 'unavailable_error')
    }
    await this.store.saveNamed(KIND, volume)
    this.log.info({ volume: volume.id, owner: volume.owner, size_mb: sizeMb }, 'volume created')
    return volume
  }

  async list (principal: Principal): Promise<VolumeRecord[]> {
    const list = await this.store.listNamed<VolumeRecord>(KIND, principal.name)
    return list.sort((a, b) => b.created_at.localeCompare(a.created_at))
  }

  async get (principal: Principal, name: string): Promise<VolumeRecord> {
    const volume = await this.store.getNamed<VolumeRecord>(KIND, principal.name, name)
    if (!volume) throw new AppError(404, 'volume_not_found', `This key has no volume named ${name}`)
    return volume
  }

  /** Bytes written into a volume (what its image takes on the host's disk). */
  async usedBytes (volume: VolumeRecord): Promise<number> {
    const { stdout } = await run('du', ['-s', '--block-size=1', this.image(volume)]).catch(() => ({ stdout: '0' }))
    return Number(stdout.split('\t')[0]) || 0
  }

  /** Deletes a volume and its files; 409 while a sandbox mounts it. */
  async delete (principal: Principal, name: string, sandboxes: SandboxRecord[]): Promise<void> {
    const volume = await this.get(principal, name)
    const user = sandboxes.find(s => s.owner === volume.owner && s.volumes?.some(m => m.name === name))
    if (user) throw new AppError(409, 'volume_in_use', `The volume is mounted by the sandbox ${user.id}; delete that first`)
    await this.unmount(volume)
    await rm(this.image(volume), { force: true })
    await rmdir(this.mountPoint(volume)).catch(() => {})
    await this.store.deleteNamed(KIND, principal.name, name)
  }

  /**
   * The binds of the volumes a new sandbox of `owner` asks for (each mounted, after a reboot too): 404 for a volume
   * the key does not have, 400 for a path outside /home/user and /mnt or given twice.
   */
  async binds (owner: string, mounts: VolumeMount[]): Promise<VolumeBind[]> {
    if (!mounts.length) return []
    this.available()
    const paths = new Set<string>()
    const binds: VolumeBind[] = []
    for (const [i, m] of mounts.entries()) {
      if (!MOUNT_PATH.test(m.path) || HOME_LINK.test(m.path) || m.path.split('/').includes('..') || m.path.split('/').includes('.')) {
        throw new AppError(400, 'validation_error', `body/volumes/${i}/path must be a directory under /home/user or /mnt, other than /mnt/data (not ${m.path})`)
      }
      if (paths.has(m.path)) throw new AppError(400, 'validation_error', `body/volumes/${i}/path: ${m.path} is given twice`)
      paths.add(m.path)
      const volume = await this.store.getNamed<VolumeRecord>(KIND, owner, m.name)
      if (!volume) throw new AppError(404, 'volume_not_found', `This key has no volume named ${m.name}`)
      await this.mount(volume)
      binds.push({ source: this.mountPoint(volume), path: m.path, readOnly: m.read_only === true })
    }
    return binds
  }

  private async mounted (volume: VolumeRecord): Promise<boolean> {
    const table = await readFile('/proc/self/mountinfo', 'utf8')
    const point = this.mountPoint(volume)
    return table.split('\n').some(line => line.split(' ')[4] === point)
  }

  private async mount (volume: VolumeRecord): Promise<void> {
    if (await this.mounted(volume)) return
    await mkdir(this.mountPoint(volume), { recursive: true, mode: 0o755 })
    await run('mount', ['-o', 'loop,nosuid,nodev', this.image(volume), this.mountPoint(volume)])
  }

  private async unmount (volume: VolumeRecord): Promise<void> {
    if (await this.mounted(volume)) await run('umount', [this.mountPoint(volume)])
  }
}
