// runc against gVisor (runsc, over docker attach and over the agent socket), same image, same server: a cold container
// start, execute p50/p99 (print, one client), the first plot in a fresh sandbox, and a warm sandbox's idle memory.
// Usage: npm run bench:runtimes (runsc must be registered with Docker, with --host-uds=all for the socket row:
// SANDBOX_RUNSC=1 bash scripts/setup.sh).
import Docker from 'dockerode'
import { Server, ms, pct, sleep } from './server.js'

const PLOT = 'import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()'

async function idleMemoryMb (namespace: string): Promise<number> {
  const docker = new Docker()
  const [c] = await docker.listContainers({ filters: { label: [`dev.interpreter-server.namespace=${namespace}`] } })
  const stats = await docker.getContainer(c.Id).stats({ stream: false }) as unknown as { memory_stats: { usage: number, stats: Record<string, number> } }
  return (stats.memory_stats.usage - (stats.memory_stats.stats.inactive_file ?? stats.memory_stats.stats.total_inactive_file ?? 0)) / 1024 / 1024
}

const SETUPS = {
  'runc (agent socket)': {},
  'runsc (docker attach)': { SANDBOX_RUNTIME: 'runsc', SANDBOX_AGENT_CHANNEL: 'attach' },
  'runsc (agent socket, --host-uds)': { SANDBOX_RUNTIME: 'runsc' }
}

async function measure (runtime: keyof typeof SETUPS, n: number): Promise<string> {
  // No warm pool: every create starts a container.
  const env: Record<string, string> = { POOL_SIZE: '0', EXECUTION_TIMEOUT_MS: '60000', ...SETUPS[runtime] }
  const server = new Server(`rt-${n}`, env)
  await server.start()
  try {
    await server.sandboxes(1)
    await sleep(1500)
    const idle = await idleMemoryMb(server.namespace)

    const starts: number[] = []
    const plots: number[] = []
    for (let i = 0; i < 6; i++) {
      await server.clear()
      const t0 = performance.now()
      const [id] = await server.sandboxes(1)
      const started = performance.now() - t0
      const t1 = performance.now()
      const plot = await server.execute(id, PLOT)
      if (!plot.results.some(r => r.data['image/png'])) throw new Error(`${runtime}: no plot: ${JSON.stringify(plot)}`)
      if (i > 0) { starts.push(started); plots.push(performance.now() - t1) } // the first also warms the image's page cache
    }
    const [id] = await server.sandboxes(1)
    for (let i = 0; i < 50; i++) await server.execute(id, 'print(1)')
    const runs: number[] = []
    for (let i = 0; i < 500; i++) {
      const t0 = performance.now()
      await server.execute(id, `print(${i})`)
      runs.push(performance.now() - t0)
    }
    await server.clear()
    return `| ${runtime} | ${ms(pct(starts, 50))} | ${ms(pct(runs, 50))} | ${ms(pct(runs, 99))} | ${ms(pct(plots, 50))} | ${idle.toFixed(1)} |`
  } finally {
    await server.stop()
  }
}

async function main (): Promise<void> {
  const rows: string[] = []
  for (const [n, runtime] of (Object.keys(SETUPS) as Array<keyof typeof SETUPS>).entries()) rows.push(await measure(runtime, n))
  process.stdout.write(['| runtime | cold start p50 ms | execute p50 ms | execute p99 ms | first plot p50 ms | idle MiB |', '|---|---|---|---|---|---|', ...rows].join('\n') + '\n')
}

main().catch((err) => { process.stderr.write(`${(err as Error).stack}\n`); process.exit(1) })
