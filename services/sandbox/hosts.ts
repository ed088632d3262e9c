import { readFileSync } from 'node:fs'
import Docker from 'dockerode'

/** One Docker Engine sandboxes run on. */
export interface DockerHost { name: string, docker: Docker, endpoint: string, /** on this machine (a unix socket): agents can be reached over their sockets */ local: boolean }

/**
 * Reads SANDBOX_DOCKER_HOSTS: `name=endpoint` entries, comma-separated; an endpoint is unix:///path,
 * tcp://host:port (with ?ca=&cert=&key= file paths for TLS) or ssh://user@host[:port]. Unset: one host, the socket.
 */
export function parseDockerHosts (spec: string | undefined, socketPath: string): DockerHost[] {
  if (!spec) return [{ name: 'local', docker: new Docker({ socketPath }), endpoint: `unix://${socketPath}`, local: true }]
  const hosts = spec.split(',').map(s => s.trim()).filter(Boolean).map((entry, i): DockerHost => {
    const eq = entry.indexOf('=')
    const name = eq > 0 ? entry.slice(0, eq) : `host${i + 1}`
    const endpoint = eq > 0 ? entry.slice(eq + 1) : entry
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new Error(`SANDBOX_DOCKER_HOSTS: "${name}" is not a host name (letters, digits, _ . -)`)
    let url: URL
    try {
      url = new URL(endpoint)
    } catch {
      throw new Error(`SANDBOX_DOCKER_HOSTS: ${name}: "${endpoint}" is not a unix://, tcp:// or ssh:// endpoint`)
    }
    if (url.protocol === 'unix:') return { name, endpoint, docker: new Docker({ socketPath: url.pathname }), local: true }
    if (url.protocol === 'tcp:') {
      const file = (key: string) => url.searchParams.get(key) ? readFileSync(url.searchParams.get(key)!) : undefined
      const tls = url.searchParams.has('ca') || url.searchParams.has('cert')
      return { name, endpoint, docker: new Docker({ host: url.hostname, port: Number(url.port || (tls ? 2376 : 2375)), protocol: tls ? 'https' : 'http', ca: file('ca'), cert: file('cert'), key: file('key') }), local: false }
    }
    if (url.protocol === 'ssh:') {
      return { name, endpoint, docker: new Docker({ protocol: 'ssh', host: url.hostname, port: Number(url.port || 22), username: url.username || undefined } as Docker.DockerOptions), local: false }
    }
    throw new Error(`SANDBOX_DOCKER_HOSTS: ${name}: "${endpoint}" is not a unix://, tcp:// or ssh:// endpoint`)
  })
  const names = hosts.map(h => h.name)
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  if (twice) throw new Error(`SANDBOX_DOCKER_HOSTS: the name ${twice} is used twice`)
  return hosts
}

/**
 * The server's own endpoints a user's sandbox must never reach through the egress proxy: its HTTP listener, its
 * Redis and its Docker hosts reached over TCP (`*`: the port on any address, for a listener on 0.0.0.0 or ::).
 */
export function ownEndpoints (config: { HOST: string, PORT: number, REDIS_URL?: string }, hosts: DockerHost[]): Array<{ host: string, port: number }> {
  const endpoints = [{ host: config.HOST === '0.0.0.0' || config.HOST === '::' ? '*' : config.HOST, port: config.PORT }]
  if (config.REDIS_URL) {
    const redis = new URL(config.REDIS_URL)
    endpoints.push({ host: redis.hostname || '127.0.0.1', port: Number(redis.port || 6379) })
  }
  for (const { endpoint } of hosts) {
    const url = new URL(endpoint)
    if (url.protocol === 'tcp:' || url.protocol === 'ssh:') endpoints.push({ host: url.hostname, port: Number(url.port || (url.protocol === 'ssh:' ? 22 : url.searchParams.has('ca') ? 2376 : 2375)) })
  }
  return endpoints
}
