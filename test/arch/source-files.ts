/** The `.ts` files below a directory, recursively (for the architecture checks). */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

export function listTs(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listTs(p));
    else if (entry.name.endsWith('.ts')) out.push(p);
  }
  return out;
}
