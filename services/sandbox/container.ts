import type Docker from 'dockerode'
import { AGENT_DIR_IN_CONTAINER } from './agent-socket.js'
import type { VolumeBind } from './volumes.js'

export interface SandboxLimits {
  image: string
  runtime?: string
  cpus: number
  memoryMb: number
  pids: number
  workspaceMb: number
  tmpMb: number
  killGraceMs: number
  /** Python modules the kernel imports before the sandbox counts as ready. */
  preload?: string
}

export const LABEL = 'dev.interpreter-server.sandbox'
export const NAMESPACE_LABEL = 'dev.interpreter-server.namespace'
/** The server process that made the container (its bus id), so that other processes leave it alone while that one lives. */
export const INSTANCE_LABEL = 'dev.interpreter-server.instance'
/** The host directory holding the agent's unix socket, when it has one. */
export const AGENT_DIR_LABEL = 'dev.interpreter-server.agent-dir'
const MB = 1024 * 1024

/** The hardened container: no network, read-only root, tmpfs workspace, no capabilities but those the agent needs. */
export function containerSpec (limits: SandboxLimits, namespace: string, instance?: string, agentDir?: string, volumes: VolumeBind[] = []): Docker.ContainerCreateOptions {
  const binds = [...(agentDir ? [`${agentDir}:${AGENT_DIR_IN_CONTAINER}:rw`] : []), ...volumes.map(v => `${v.source}:${v.path}:${v.readOnly ? 'ro' : 'rw'}`)]
  const gvisor = limits.runtime === 'runsc'
  return {
    Image: limits.image,
    OpenStdin: true,
    StdinOnce: false,
    AttachStdin: true,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    NetworkDisabled: true,
    Labels: { [LABEL]: 'true', [NAMESPACE_LABEL]: namespace, ...(instance ? { [INSTANCE_LABEL]: instance } : {}), ...(agentDir ? { [AGENT_DIR_LABEL]: agentDir } : {}) },
    Env: [
      `KERNEL_KILL_GRACE_MS=${limits.killGraceMs}`,
      ...(limits.preload ? [`SANDBOX_PRELOAD=${limits.preload}`] : []),
      ...(agentDir ? [`AGENT_SOCKET_DIR=${AGENT_DIR_IN_CONTAINER}`] : []),
      ...(gvisor ? [`KERNEL_NPROC=${limits.pids}`] : [])
    ],
    HostConfig: {
      NetworkMode: 'none',
      // The only host mounts: the agent's socket directory (root's alone; kernels cannot enter it), and the named
      // volumes the sandbox asked for (each a size-capped file system of its own).
      ...(binds.length ? { Binds: binds } : {}),
      ReadonlyRootfs: true,
      Tmpfs: {
        '/home/user': `rw,nosuid,nodev,size=${limits.workspaceMb}m,uid=1000,gid=1000,mode=0700`,
        // exec: compiled languages run their binaries from here (user code can do as much through python anyway).
        '/tmp': `rw,exec,nosuid,nodev,size=${limits.tmpMb}m,mode=1777`
      },
      ShmSize: 16 * MB,
      // gVisor's Sentry runs the sandbox's tasks on host threads of its own: the host limit must leave it room, and the
      // pids limit proper is RLIMIT_NPROC on the kernels, which gVisor enforces inside (under runc it would count
      // uid 1000's processes in every sandbox together, so there the cgroup limit is the one).
      PidsLimit: gvisor ? limits.pids * 16 : limits.pids,
      Memory: limits.memoryMb * MB,
      MemorySwap: limits.memoryMb * MB,
      NanoCpus: Math.round(limits.cpus * 1e9),
      CapDrop: ['ALL'],
      // The agent needs these to start kernels as uid 1000 and to signal them; the kernels get none.
      CapAdd: ['SETUID', 'SETGID', 'KILL'],
      SecurityOpt: ['no-new-privileges'],
      Init: true,
      Ulimits: [
        { Name: 'nofile', Soft: 1024, Hard: 1024 },
        { Name: 'fsize', Soft: limits.workspaceMb * MB, Hard: limits.workspaceMb * MB }
      ],
      LogConfig: { Type: 'json-file', Config: { 'max-size': '1m', 'max-file': '1' } },
      ...(limits.runtime ? { Runtime: limits.runtime } : {})
    }
  }
}
