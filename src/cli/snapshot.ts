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
 *
 * Before the snapshot is taken, `warmUp` converts a small Dockerfile and
 * decodes its definition, with no I/O and every platform given: what the
 * libraries set up on first use (protobuf-es builds its readers and field
 * tables per message type when a message is first decoded) is then in the
 * snapshot too. A no-change build of workload 1 (bench/build-suite) went
 * from 126 to 113 ms (medians of 21 alternating runs); `kiln --version` is
 * unchanged. Nothing it leaves behind may depend on the process either:
 * the conversion reads no defaults from the machine when both platforms are
 * given.
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
import { convertDockerfile } from '../frontend/dockerfile/index.ts';
import { definitionFromBinary, definitionToBinary, parseDefinition } from '../llb/definition.ts';

/** A multi-stage Dockerfile using the common instructions (the names resolve to nothing real). */
const WARM_UP_DOCKERFILE = `ARG BASE=warm-up.invalid/base:1
FROM \${BASE} AS build
ARG MODE=release
ENV CFLAGS=-O2 PATH=/usr/local/bin:/usr/bin:/bin
WORKDIR /src
COPY Makefile ./
COPY src/ src/
RUN --mount=type=cache,target=/cache make MODE=$MODE && strip app
FROM warm-up.invalid/runtime:1
LABEL org.opencontainers.image.title=warm-up
USER 1000:1000
COPY --from=build --chown=1000:1000 /src/app /usr/local/bin/app
RUN app --self-test > /tmp/ok
EXPOSE 8080
ENTRYPOINT ["app"]
CMD ["--serve"]
`;

async function warmUp(): Promise<void> {
  const { definition } = await convertDockerfile(WARM_UP_DOCKERFILE, {
    imageResolver: async () => ({
      config: {
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [] },
        config: { Env: ['PATH=/usr/local/bin:/usr/bin:/bin'], WorkingDir: '/' },
      },
    }),
    buildPlatform: 'linux/amd64',
    platform: 'linux/amd64',
  });
  parseDefinition(definitionFromBinary(definitionToBinary(definition)));
}

startupSnapshot.setDeserializeMainFunction(start);
// The snapshot is taken once the event loop is empty, so after the warm-up; if it fails, the
// builder process fails with it and no snapshot is made (bin/kiln then runs the bundle).
void warmUp();
