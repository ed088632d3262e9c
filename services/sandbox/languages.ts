import { randomBytes } from 'node:crypto'
import type { ImageProfile } from './image.js'
import type { KernelLanguage } from '../../schemas/sandboxes.js'

/**
 * The languages a sandbox runs. python, javascript, shell and r have stateful kernels; the others compile (where they
 * compile) and run as a fresh process per execution, through the sandbox's shell, so the compile has the same limits
 * and timeout as the run and its errors are the run's stderr and exit code.
 */
export interface LanguageSpec {
  id: string
  name: string
  /** Other names clients use (LibreChat's: py, js, ts, rs, f90, bash). */
  aliases: string[]
  /** The stateful kernel that runs it, if it has one. */
  kernel?: KernelLanguage
  /** The image profile that has its compiler or runtime. */
  profile: ImageProfile
  /** The source file's name in the run's scratch directory. */
  file: string
  /** Shell commands that compile and run `$__is_d/<file>` with the arguments in "$@" (names unlikely to meet the user's shell variables). */
  run: string
}

const spec = (id: string, name: string, aliases: string[], file: string, run: string, extra: Partial<LanguageSpec> = {}): LanguageSpec =>
  ({ id, name, aliases, file, run, profile: 'full', ...extra })

export const LANGUAGES: LanguageSpec[] = [
  spec('python', 'Python 3', ['py', 'python3'], 'main.py', 'python3 "$__is_d/main.py" "$@"', { kernel: 'python', profile: 'slim' }),
  spec('javascript', 'JavaScript (Node.js)', ['js', 'node', 'nodejs'], 'main.js', 'node "$__is_d/main.js" "$@"', { kernel: 'javascript', profile: 'slim' }),
  spec('shell', 'Bash', ['bash', 'sh'], 'main.sh', 'bash "$__is_d/main.sh" "$@"', { kernel: 'shell', profile: 'slim' }),
  spec('typescript', 'TypeScript (transpiled, run with Node.js)', ['ts'], 'main.ts', 'node /opt/agent/run_ts.js "$__is_d/main.ts" "$@"'),
  spec('c', 'C (gcc)', [], 'main.c', 'gcc -O1 -o "$__is_d/main" "$__is_d/main.c" -lm && "$__is_d/main" "$@"'),
  spec('cpp', 'C++ (g++)', ['c++'], 'main.cpp', 'g++ -O1 -o "$__is_d/main" "$__is_d/main.cpp" && "$__is_d/main" "$@"'),
  spec('java', 'Java (OpenJDK, single-file source)', [], 'Main.java', 'java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "$__is_d/Main.java" "$@"'),
  spec('php', 'PHP', [], 'main.php', 'php "$__is_d/main.php" "$@"'),
  spec('rust', 'Rust (rustc)', ['rs'], 'main.rs', 'rustc -o "$__is_d/main" "$__is_d/main.rs" && "$__is_d/main" "$@"'),
  spec('go', 'Go', ['golang'], 'main.go', 'GOCACHE=/tmp/.gocache GOPATH=/tmp/.gopath go run "$__is_d/main.go" "$@"'),
  spec('d', 'D (gdc)', [], 'main.d', 'gdc -o "$__is_d/main" "$__is_d/main.d" && "$__is_d/main" "$@"'),
  spec('fortran', 'Fortran (gfortran)', ['f90', 'f95'], 'main.f90', 'gfortran -o "$__is_d/main" "$__is_d/main.f90" && "$__is_d/main" "$@"'),
  spec('r', 'R (plots come back as PNG)', ['rscript'], 'main.R', 'Rscript "$__is_d/main.R" "$@"', { kernel: 'r' })
]

const byName = new Map<string, LanguageSpec>()
for (const l of LANGUAGES) for (const name of [l.id, ...l.aliases]) byName.set(name, l)

export const LANGUAGE_IDS = LANGUAGES.map(l => l.id)

export function findLanguage (name: string): LanguageSpec | undefined {
  return byName.get(name.toLowerCase())
}

export function languagesOf (profile: ImageProfile): LanguageSpec[] {
  return LANGUAGES.filter(l => profile === 'full' || l.profile === 'slim')
}

const quote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`

/**
 * Shell code that writes `code` to a scratch directory in /tmp, runs it there as a fresh process with `args`, in
 * `cwd`, and removes the directory; its status is the program's exit code.
 */
export function freshProcess (language: LanguageSpec, code: string, args: string[] = [], cwd = '/home/user'): string {
  const marker = `__CODE_${randomBytes(8).toString('hex')}__`
  return [
    '__is_d=$(mktemp -d /tmp/run.XXXXXX)',
    `cat > "$__is_d/${language.file}" <<'${marker}'`,
    code,
    marker,
    `(cd ${quote(cwd)} && set -- ${args.map(quote).join(' ')} && ${language.run})`,
    '__is_s=$?; rm -rf "$__is_d"; (exit $__is_s)'
  ].join('\n')
}
