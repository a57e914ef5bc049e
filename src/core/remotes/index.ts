/**
 * Public entry of the OCI distribution client: a Resolver (resolve a
 * reference, then fetch or push in its repository) with its transport,
 * HTTP client, per-registry TLS files, auth and error types. See each
 * module for its contract and limits.
 */
export {
  Authorizer,
  type AuthorizerOptions,
  type Challenge,
  type Credentials,
  type CredentialsFn,
  dockerConfigCredentials,
  mergeScopes,
  parseWWWAuthenticate,
  repositoryScope,
  runCredentialHelper,
} from './auth.ts';
export {
  caBundle,
  DEFAULT_CERTS_DIRS,
  DOCKER_CERTS_DIR,
  defaultCertsDirs,
  type HostTLS,
  loadHostTLS,
} from './certs.ts';
export {
  Fetcher,
  type FetchOptions,
  type FetchToWriterOptions,
  MANIFEST_ACCEPT,
  MAX_MANIFEST_SIZE,
} from './fetcher.ts';
export {
  HeaderMap,
  HttpClient,
  type HttpClientOptions,
  HttpNetworkError,
  type HttpRequest,
  HttpResponse,
} from './http.ts';
export { type BlobSource, type PushBlobOptions, Pusher, type PushResult } from './pusher.ts';
export { type Resolved, Resolver } from './resolver.ts';
export {
  isLoopbackHost,
  RegistryError,
  type RegistryRequest,
  RegistryTransport,
  type RemoteOptions,
  registryBaseURL,
} from './transport.ts';
