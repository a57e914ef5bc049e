/**
 * Entry of the CLI's V8 start-up snapshot (scripts/build-cli.mjs bundles it
 * as one CommonJS file and runs `node --build-snapshot` on it; bin/kiln
 * starts `node --snapshot-blob` when the blob is current).
 *
 * Building the snapshot evaluates every CLI module once, so a command starts
 * with the modules already loaded and initialised (the protobuf descriptors
 * of LLB included) instead of compiling and running them: about 20-30 ms of
 * every command (docs/performance.md).
 *
 * What this asks of the rest of the code: nothing evaluated when a module
 * loads may depend on the process, its environment or the time (that would
 * be frozen into the snapshot): such values are read in functions, when
 * first needed. node:sqlite cannot be in a snapshot; the bundle loads it on
 * first use (scripts/build-cli.mjs). The native addon is loaded on first use
 * already (../core/native/index.ts).
 */
import { startupSnapshot } from 'node:v8';
import '../control/build.ts';
import './commands/build.ts';
import './commands/content.ts';
import './commands/debug.ts';
import './commands/diff.ts';
import './commands/gc.ts';
import './commands/images.ts';
import './commands/namespace.ts';
import './commands/run.ts';
import './commands/snapshot.ts';
import { start } from './main.ts';

startupSnapshot.setDeserializeMainFunction(start);
