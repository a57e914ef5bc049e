/**
 * Platform conversion between the image types of core (OCI `Platform`) and
 * the LLB message. Private to src/llb.
 */
import { create } from '@bufbuild/protobuf';
import { normalizePlatform, parsePlatform } from '../core/images/platform.ts';
import type { Platform } from '../core/images/types.ts';
import { type Platform as PbPlatform, PlatformSchema } from '../gen/kiln/llb/v1/llb_pb.ts';

/** A normalized Platform from a string ("linux/arm64") or an object. */
export function toPlatform(p: Platform | string): Platform {
  return typeof p === 'string' ? parsePlatform(p) : normalizePlatform(p);
}

/** The LLB message for a (normalized) platform. */
export function pbPlatform(p: Platform): PbPlatform {
  return create(PlatformSchema, {
    os: p.os,
    architecture: p.architecture,
    variant: p.variant ?? '',
    osVersion: p['os.version'] ?? '',
    osFeatures: [...(p['os.features'] ?? [])],
  });
}
