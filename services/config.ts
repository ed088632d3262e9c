import { join } from 'node:path'
import { PACKAGE_ROOT } from './paths.js'
import { parseAllowedList } from './sandbox/egress.js'
import { readFileSync } from 'node:fs'
import Value from 'typebox/value'
import { EnvSchema, type Env, type ApiKeyConfig } from '../schemas/config.js'

export interface Config extends Env {
  apiKeys: ApiKeyConfig[]
  version: string
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

const KEY_NAME = /^[A-Za-z0-9_.-]{1,64}$/

export function parseApiKeys (env: Pick<Env, 'API_KEYS' | 'API_KEY'>): ApiKeyConfig[] {
  const keys: ApiKeyConfig[] = []
  for (const item of (env.API_KEYS ?? '').split(',').map(s => s.trim()).filter(Boolean)) {
    const [name, role, ...rest] = item.split(':')
    const secret = rest.join(':')
    if (!name || !KEY_NAME.test(name)) throw new ConfigError(`API_KEYS: entry "${name ?? ''}" needs a name of letters, digits, '_', '.' or '-' (name:role:secret)`)
    if (role !== 'user' && role !== 'admin') throw new ConfigError(`API_KEYS: key "${name}" has role "${role ?? ''}"; use user or admin`)
    if (secret.length < 6) throw new ConfigError(`API_KEYS: key "${name}" needs a secret of at least 6 characters`)
    keys.push({ name, role, secret })
  }
  if (env.API_KEY) keys.push({ name: 'default', role: 'admin', secret: env.API_KEY })
  return keys
}

const version = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version

/** Reads and validates the environment; a bad value throws a ConfigError naming the variable. */
export function loadConfig (source: Record<string, string | undefined> = process.env): Config {
  const raw: Record<string, unknown> = {}
  for (const name of Object.keys(EnvSchema.properties)) {
    const value = source[name]
    if (value !== undefined && value !== '') raw[name] = value
  }
  const env = Value.Default(EnvSchema, Value.Convert(EnvSchema, raw)) as Env
  const [error] = Value.Errors(EnvSchema, env)
  if (error) {
    const name = error.instancePath.replace(/^\//, '') || Object.keys(error.params ?? {}).join(', ')
    throw new ConfigError(`${name}: ${error.message} (got ${JSON.stringify(raw[name])})`)
  }
  for (const name of ['SANDBOX_EGRESS_ALLOWED', 'SANDBOX_NETWORK_DEFAULT'] as const) {
    try {
      parseAllowedList(env[name], name)
    } catch (err) {
      throw new ConfigError((err as Error).message)
    }
  }
  if (env.MAX_EXECUTION_TIMEOUT_MS < env.EXECUTION_TIMEOUT_MS) {
    throw new ConfigError('MAX_EXECUTION_TIMEOUT_MS: must not be below EXECUTION_TIMEOUT_MS')
  }
  return { ...env, apiKeys: parseApiKeys(env), version }
}

export function isLoopback (host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.')
}
