// Builds the sandbox image without a container registry: debootstrap -> docker import -> Dockerfile with our agent.
import { PACKAGE_ROOT } from '../paths.js'
import { createHash } from 'node:crypto'
import { readFileSync, readdirSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { spawn } from 'node:child_process'

export const SUITE = 'bookworm'
export const BASE_PACKAGES = [
  'python3', 'python3-pip', 'python3-numpy', 'python3-pandas', 'python3-matplotlib', 'nodejs', 'bash', 'util-linux', 'procps', 'ca-certificates',
  'curl', 'python3-requests'
]
/** The full profile adds compilers and runtimes for the languages LibreChat's tool offers, all from Debian. */
export const FULL_PACKAGES = [
  'node-typescript', 'gcc', 'g++', 'libc6-dev', 'default-jdk-headless', 'php-cli', 'rustc', 'golang-go', 'gdc', 'gfortran', 'r-base-core'
]
export type ImageProfile = 'slim' | 'full'
export const imageProfile = (): ImageProfile => process.env.SANDBOX_IMAGE_PROFILE === 'slim' ? 'slim' : 'full'
const packagesOf = (profile: ImageProfile) => profile === 'slim' ? BASE_PACKAGES : [...BASE_PACKAGES, ...FULL_PACKAGES]
export const AGENT_DIR = join(PACKAGE_ROOT, 'sandbox')

const shortHash = (text: string) => createHash('sha256').update(text).digest('hex').slice(0, 12)

export function baseImageTag (profile = imageProfile()): string {
  // The slim profile keeps the hash it had before profiles existed, so existing images stay valid.
  const inputs = profile === 'slim' ? { SUITE, BASE_PACKAGES, v: 3 } : { SUITE, packages: packagesOf(profile), v: 4 }
  return `interpreter-sandbox-base:${shortHash(JSON.stringify(inputs))}`
}

/** The final image's tag: a hash of the base image's inputs and every file of the in-container agent. */
export function sandboxImageTag (profile = imageProfile(), agentDir = AGENT_DIR): string {
  const hash = createHash('sha256').update(baseImageTag(profile))
  for (const name of readdirSync(agentDir).sort()) {
    hash.update(name).update(readFileSync(join(agentDir, name)))
  }
  return `interpreter-sandbox:${hash.digest('hex').slice(0, 12)}`
}

/** The Debian mirror: $DEBIAN_MIRROR, else the first bookworm URI in this machine's apt sources. */
export function debianMirror (): string {
  if (process.env.DEBIAN_MIRROR) return process.env.DEBIAN_MIRROR
  const files = ['/etc/apt/sources.list']
  if (existsSync('/etc/apt/sources.list.d')) {
    files.push(...readdirSync('/etc/apt/sources.list.d').filter(f => /\.(list|sources)$/.test(f)).map(f => join('/etc/apt/sources.list.d', f)))
  }
  for (const file of files.filter(f => existsSync(f))) {
    const text = readFileSync(file, 'utf8')
    // deb822: a stanza with URIs: and Suites: containing the bare suite
    for (const stanza of text.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1]
      const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1]?.split(/\s+/) ?? []
      if (uri && suites.includes(SUITE) && !/^Enabled:\s*no/mi.test(stanza)) return uri
    }
    for (const line of text.split('\n')) {
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line.trim())
      if (m && m[2] === SUITE) return m[1]
    }
  }
  throw new Error(`no Debian ${SUITE} mirror found in apt sources; set DEBIAN_MIRROR`)
}

function run (cmd: string, args: string[], opts: { input?: NodeJS.ReadableStream, env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [opts.input ? 'pipe' : 'ignore', 2, 'inherit'], env: opts.env ?? process.env })
    if (opts.input && child.stdin) opts.input.pipe(child.stdin)
    child.on('error', reject)
    child.on('exit', code => code === 0 ? resolve() : reject(new Error(`${cmd} ${args.slice(0, 3).join(' ')} exited with ${code}`)))
  })
}

async function imageExists (docker: string, tag: string): Promise<boolean> {
  return await new Promise(resolve => {
    const child = spawn(docker, ['image', 'inspect', tag], { stdio: 'ignore' })
    child.on('exit', code => resolve(code === 0))
    child.on('error', () => resolve(false))
  })
}

async function buildBase (docker: string, tag: string, profile: ImageProfile, log: (m: string) => void): Promise<void> {
  const root = mkdtempSync(join(tmpdir(), 'sandbox-rootfs-'))
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', LC_ALL: 'C' }
  let procMounted = false
  try {
    const mirror = debianMirror()
    log(`debootstrap ${SUITE} from ${mirror} into ${root}`)
    await run('debootstrap', ['--variant=minbase', SUITE, root, mirror], { env })
    const chroot = (...args: string[]) => run('chroot', [root, ...args], { env })
    // Some packages' scripts (Java's) need /proc; it is unmounted before the root is packed or removed.
    await run('mount', ['-t', 'proc', 'proc', join(root, 'proc')])
    procMounted = true
    try {
      await chroot('apt-get', 'install', '-y', '-q', '--no-install-recommends', ...packagesOf(profile))
    } finally {
      await run('umount', [join(root, 'proc')])
      procMounted = false
    }
    await chroot('useradd', '--uid', '1000', '--create-home', '--home-dir', '/home/user', '--shell', '/bin/bash', 'user')
    // Pre-build matplotlib's font cache so the first plot in a sandbox is fast.
    await chroot('env', 'MPLCONFIGDIR=/opt/mplconfig', 'python3', '-c', 'import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot')
    await chroot('apt-get', 'clean')
    await run('sh', ['-c', `rm -rf "${root}"/var/lib/apt/lists/* "${root}"/usr/share/doc/* "${root}"/usr/share/man/* "${root}"/var/cache/apt/*`])
    log(`docker import as ${tag}`)
    const tar = spawn('tar', ['-C', root, '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] })
    await run(docker, ['import', '-', tag], { input: tar.stdout })
  } finally {
    // Never delete through a mounted /proc.
    if (!procMounted) rmSync(root, { recursive: true, force: true })
  }
}

export async function ensureBaseImage (docker: string, profile: ImageProfile, log: (m: string) => void): Promise<string> {
  const base = baseImageTag(profile)
  if (!(await imageExists(docker, base))) await buildBase(docker, base, profile, log)
  return base
}

/** Builds whatever is missing (base, then agent layer); returns the final tag. */
export async function buildSandboxImage (opts: { docker?: string, profile?: ImageProfile, log?: (m: string) => void } = {}): Promise<string> {
  const docker = opts.docker ?? 'docker'
  const profile = opts.profile ?? imageProfile()
  const log = opts.log ?? ((m: string) => process.stderr.write(`[image] ${m}\n`))
  const base = baseImageTag(profile)
  const tag = sandboxImageTag(profile)
  if (await imageExists(docker, tag)) {
    log(`${tag} (${profile}) is up to date`)
    return tag
  }
  await ensureBaseImage(docker, profile, log)
  log(`docker build ${tag} (${profile}) from ${base}`)
  await run(docker, ['build', '-q', '--build-arg', `BASE=${base}`, '-t', tag, '-t', `interpreter-sandbox:${profile}`, AGENT_DIR])
  return tag
}
