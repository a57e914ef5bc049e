/**
 * One error class for the whole engine, in the spirit of containerd's errdefs
 * and connect-es' ConnectError: a machine-readable code, a human message that
 * says which action failed and quotes the value, and an optional cause.
 * Codes map to gRPC status codes only at the API edge (control/).
 */
export type ErrorCode =
  | 'NotFound'
  | 'AlreadyExists'
  | 'FailedPrecondition'
  | 'InvalidArgument'
  | 'Unavailable' // in use by another writer or process
  | 'Canceled'
  | 'DataLoss' // digest or size mismatch, corrupt input
  | 'PermissionDenied'
  | 'Unauthenticated'
  | 'ResourceExhausted'
  | 'NotImplemented'
  | 'Internal';

export class KilnError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'KilnError';
  }
}

export function errNotFound(message: string, cause?: unknown): KilnError {
  return new KilnError('NotFound', message, { cause });
}
export function errAlreadyExists(message: string, cause?: unknown): KilnError {
  return new KilnError('AlreadyExists', message, { cause });
}
export function errFailedPrecondition(message: string, cause?: unknown): KilnError {
  return new KilnError('FailedPrecondition', message, { cause });
}
export function errInvalidArgument(message: string, cause?: unknown): KilnError {
  return new KilnError('InvalidArgument', message, { cause });
}
export function errUnavailable(message: string, cause?: unknown): KilnError {
  return new KilnError('Unavailable', message, { cause });
}
export function errDataLoss(message: string, cause?: unknown): KilnError {
  return new KilnError('DataLoss', message, { cause });
}

export function isKilnError(err: unknown, code?: ErrorCode): err is KilnError {
  return err instanceof KilnError && (code === undefined || err.code === code);
}

/** True for a Node system error with the given errno code (e.g. 'ENOENT'). */
export function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** Wraps a thrown value with context, keeping a KilnError's code. */
export function wrap(err: unknown, message: string): KilnError {
  if (err instanceof KilnError) return new KilnError(err.code, `${message}: ${err.message}`, { cause: err });
  if (isErrno(err, 'ENOENT')) return new KilnError('NotFound', `${message}: ${String(err)}`, { cause: err });
  if (isErrno(err, 'EEXIST'))
    return new KilnError('AlreadyExists', `${message}: ${String(err)}`, { cause: err });
  return new KilnError('Internal', `${message}: ${err instanceof Error ? err.message : String(err)}`, {
    cause: err,
  });
}
