/**
 * A build request as ./build.ts `executeBuild` takes it: what the caller
 * resolved already (build-arg values from its environment, secret values,
 * ssh agent sockets, paths). Its own module so that ./memo.ts can name it
 * without importing the build.
 */
export interface BuildParams {
  /** A directory, a git URL, or `-` (a tar or a Dockerfile on `io.stdin`). */
  context: string;
  /** The Dockerfile (default: <context>/Dockerfile; `-`: from `io.stdin`). */
  file?: string;
  tags: string[];
  buildArgs: Record<string, string>;
  labels: Record<string, string>;
  target?: string;
  platform?: string;
  secrets: Record<string, Uint8Array>;
  ssh?: Record<string, string>;
  noCache: boolean;
  /** Stages whose steps run without the cache (`--no-cache-filter`). */
  noCacheFilter: string[];
  network?: string;
  /** `-o` specs as written. */
  outputs: string[];
  pull: boolean;
  insecureRegistries: string[];
  /** Empty: `<root>/certs.d`, then /etc/docker/certs.d. */
  certsDirs: string[];
  iidfile?: string;
  metadataFile?: string;
  /** The caller's SOURCE_DATE_EPOCH; a build arg of that name wins. */
  sourceDateEpoch?: string;
  /** Relative paths (context, Dockerfile, output destinations, files written) resolve against it; default: this process's. */
  cwd?: string;
}
