/** A program per language that computes 6 * 7 and prints it with the language's name. */
export const PROGRAMS: Record<string, string> = {
  python: 'print("python", 6 * 7)',
  javascript: 'console.log("javascript", 6 * 7)',
  shell: 'echo shell $((6 * 7))',
  typescript: 'const n: number = 6 * 7\nconsole.log("typescript", n)',
  c: '#include <stdio.h>\nint main(void) { printf("c %d\\n", 6 * 7); return 0; }',
  cpp: '#include <iostream>\nint main() { std::cout << "cpp " << 6 * 7 << std::endl; }',
  java: 'public class Main { public static void main(String[] a) { System.out.println("java " + 6 * 7); } }',
  php: '<?php echo "php ", 6 * 7, "\\n";',
  rust: 'fn main() { println!("rust {}", 6 * 7); }',
  go: 'package main\nimport "fmt"\nfunc main() { fmt.Println("go", 6*7) }',
  d: 'import std.stdio;\nvoid main() { writeln("d ", 6 * 7); }',
  fortran: 'program main\n  print "(a,i0)", "fortran ", 6 * 7\nend program main',
  r: 'cat("r", 6 * 7, "\\n")'
}

/** LibreChat's names for the languages (its tool's enum). */
export const LIBRECHAT_NAMES: Record<string, string> = {
  py: 'python', js: 'javascript', ts: 'typescript', c: 'c', cpp: 'cpp', java: 'java', php: 'php', rs: 'rust', go: 'go', d: 'd', f90: 'fortran', r: 'r', bash: 'shell'
}
