// Languages: hello-world time per language (a fresh sandbox's second run, median of 3, through the execute route),
// and per image profile its size and the idle memory of a warm sandbox. Usage: npm run bench:languages
import { execFileSync } from 'node:child_process'
import Docker from 'dockerode'
import { Server, ms, pct, sleep } from './server.js'
import { PROGRAMS } from '../test/services/sandbox/programs.js'
import { sandboxImageTag, type ImageProfile } from '../services/sandbox/image.js'

async function idleMemoryMb (namespace: string): Promise<number> {
  const docker = new Docker()
  const [c] = await docker.listContainers({ filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })
  const stats = await docker.getContainer(c.Id).stats({ stream: false }) as unknown as { memory_stats: { usage: number, stats: Record<string, number> } }
  return (stats.memory_stats.usage - (stats.memory_stats.stats.inactive_file ?? stats.memory_stats.stats.total_inactive_file ?? 0)) / 1024 / 1024
}

async function main (): Promise<void> {
  const sizes: string[] = []
  let times: Array<[string, number]> = []
  for (const profile of ['slim', 'full'] as ImageProfile[]) {
    execFileSync(process.execPath, ['--import', 'tsx', 'scripts/build-image.ts'], { env: { ...process.env, SANDBOX_IMAGE_PROFILE: profile }, stdio: 'ignore' })
    const info = await new Docker().getImage(sandboxImageTag(profile)).inspect()
    const server = new Server(`lang-${profile}`, { SANDBOX_IMAGE_PROFILE: profile, POOL_SIZE: '1', EXECUTION_TIMEOUT_MS: '60000' })
    await server.start()
    await server.waitWarm()
    await sleep(1000)
    sizes.push(`| ${profile} | ${(info.Size / 1e6).toFixed(0)} MB | ${(await idleMemoryMb(server.namespace)).toFixed(1)} MiB |`)
    if (profile === 'full') {
      const [id] = await server.sandboxes(1)
      times = []
      for (const [language, code] of Object.entries(PROGRAMS)) {
        const runs: number[] = []
        for (let i = 0; i < 4; i++) {
          const t0 = performance.now()
          const res = await fetch(`${server.base}/v1/sandboxes/${id}/execute`, { method: 'POST', headers: { authorization: 'Bearer bench-server-secret', 'content-type': 'application/json' }, body: JSON.stringify({ language, code }) })
          const body = await res.json() as { stdout: string }
          if (!body.stdout.includes('42')) throw new Error(`${language}: ${JSON.stringify(body)}`)
          if (i > 0) runs.push(performance.now() - t0) // the first run also starts the kernel or warms caches
        }
        times.push([language, pct(runs, 50)])
      }
      await server.clear()
    }
    await server.stop()
  }
  const out = ['| profile | image size | idle sandbox memory |', '|---|---|---|', ...sizes, '', '| language | hello world p50 ms |', '|---|---|']
  for (const [language, t] of times) out.push(`| ${language} | ${ms(t)} |`)
  process.stdout.write(out.join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
