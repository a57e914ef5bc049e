/**
 * Structural checks of single ops, so that the solver and the ops can trust
 * what they index: input positions in range, file actions referring only to
 * earlier actions, outputs numbered 0…n-1, mount types that fit their
 * options, absolute paths. `outputCount` says how many results an op has.
 *
 * Limits: semantic checks that need the outside world (does the image exist,
 * is the secret known, does a copy source path exist) are the ops' job.
 * Source identifiers are only checked for a `scheme://` prefix.
 */
import { errInvalidArgument } from '../core/errors.ts';
import { type FileInput, MountType, type Op } from '../gen/kiln/llb/v1/llb_pb.ts';

function outputsOf(list: readonly (number | undefined)[], where: string): number {
  const outs = list.filter((o): o is number => o !== undefined).sort((a, b) => a - b);
  outs.forEach((o, i) => {
    if (o !== i)
      throw errInvalidArgument(
        `${where}: outputs must be numbered 0 to ${outs.length - 1}, got ${outs.join(', ')}`,
      );
  });
  return outs.length;
}

/** How many results an op has (exec: root plus writable mounts; file: its numbered actions; others: 1). */
export function outputCount(op: Op): number {
  switch (op.op.case) {
    case 'exec':
      return op.op.value.mounts.filter((m) => m.output !== undefined).length;
    case 'file':
      return op.op.value.actions.filter((a) => a.output !== undefined).length;
    case undefined:
      return 0;
    default:
      return 1;
  }
}

/**
 * Throws InvalidArgument, naming `name` (usually the op's digest), when the
 * op is not well formed. The terminal op (no operation) is not accepted here.
 */
export function validateOp(op: Op, name: string): void {
  const where = `invalid LLB op ${name}`;
  const n = op.inputs.length;
  const checkInput = (i: number | undefined, what: string): void => {
    if (i !== undefined && (!Number.isInteger(i) || i < 0 || i >= n)) {
      throw errInvalidArgument(`${where}: ${what} refers to input ${i}, but the op has ${n} inputs`);
    }
  };
  const checkAbs = (p: string, what: string): void => {
    if (!p.startsWith('/')) throw errInvalidArgument(`${where}: ${what} "${p}" is not absolute`);
  };
  switch (op.op.case) {
    case undefined:
      throw errInvalidArgument(`${where}: no operation`);
    case 'source':
      if (!/^[a-z][a-z0-9+.-]*:\/\/./.test(op.op.value.identifier)) {
        throw errInvalidArgument(`${where}: invalid source identifier "${op.op.value.identifier}"`);
      }
      return;
    case 'exec': {
      const e = op.op.value;
      if (!e.meta || e.meta.args.length === 0) throw errInvalidArgument(`${where}: exec has no command`);
      checkAbs(e.meta.cwd || '/', 'exec working directory');
      if (e.mounts[0]?.dest !== '/')
        throw errInvalidArgument(`${where}: the first exec mount must be the root "/"`);
      const dests = new Set<string>();
      for (const m of e.mounts) {
        const what = `mount "${m.dest}"`;
        checkAbs(m.dest, 'mount destination');
        if (dests.has(m.dest)) throw errInvalidArgument(`${where}: two mounts at "${m.dest}"`);
        dests.add(m.dest);
        checkInput(m.input, what);
        switch (m.type) {
          case MountType.BIND:
            if (m.readonly && m.output !== undefined)
              throw errInvalidArgument(`${where}: read-only ${what} has an output`);
            break;
          case MountType.CACHE:
            if (!m.cache?.id) throw errInvalidArgument(`${where}: cache ${what} has no id`);
            if (m.output !== undefined) throw errInvalidArgument(`${where}: cache ${what} has an output`);
            break;
          case MountType.TMPFS:
          case MountType.SECRET:
          case MountType.SSH:
            if (m.input !== undefined || m.output !== undefined) {
              throw errInvalidArgument(`${where}: ${what} of type ${m.type} cannot have an input or output`);
            }
            if (m.type === MountType.SECRET && !m.secret?.id)
              throw errInvalidArgument(`${where}: secret ${what} has no id`);
            if (m.type === MountType.SSH && !m.ssh?.id)
              throw errInvalidArgument(`${where}: ssh ${what} has no id`);
            break;
          default:
            throw errInvalidArgument(`${where}: ${what} has invalid type ${m.type}`);
        }
      }
      outputsOf(
        e.mounts.map((m) => m.output),
        where,
      );
      const names = new Set<string>();
      for (const se of e.secretEnv) {
        if (!se.id) throw errInvalidArgument(`${where}: secret env "${se.name}" has no id`);
        if (se.name === '' || se.name.includes('=') || se.name.includes('\0'))
          throw errInvalidArgument(`${where}: invalid secret env name "${se.name}"`);
        if (names.has(se.name)) throw errInvalidArgument(`${where}: two secret envs named "${se.name}"`);
        names.add(se.name);
      }
      return;
    }
    case 'file': {
      const actions = op.op.value.actions;
      if (actions.length === 0) throw errInvalidArgument(`${where}: file op has no actions`);
      const checkFileInput = (fi: FileInput | undefined, i: number, what: string): void => {
        if (fi?.from.case === 'opInput') checkInput(fi.from.value, `action ${i} ${what}`);
        if (fi?.from.case === 'action' && !(fi.from.value >= 0 && fi.from.value < i)) {
          throw errInvalidArgument(
            `${where}: action ${i} ${what} refers to action ${fi.from.value}, not an earlier one`,
          );
        }
      };
      actions.forEach((a, i) => {
        checkFileInput(a.input, i, 'input');
        checkFileInput(a.secondaryInput, i, 'secondary input');
        switch (a.action.case) {
          case 'copy':
            checkAbs(a.action.value.src, `action ${i} copy source`);
            checkAbs(a.action.value.dest, `action ${i} copy destination`);
            break;
          case 'mkdir':
          case 'mkfile':
          case 'rm':
            checkAbs(a.action.value.path, `action ${i} ${a.action.case} path`);
            break;
          default:
            throw errInvalidArgument(`${where}: action ${i} has no operation`);
        }
      });
      if (
        outputsOf(
          actions.map((a) => a.output),
          where,
        ) === 0
      ) {
        throw errInvalidArgument(`${where}: file op has no output`);
      }
      return;
    }
    case 'merge':
      if (op.op.value.inputs.length === 0) throw errInvalidArgument(`${where}: merge has no inputs`);
      for (const m of op.op.value.inputs) checkInput(m.input, 'merge input');
      return;
    case 'diff':
      checkInput(op.op.value.lower?.input, 'diff lower');
      checkInput(op.op.value.upper?.input, 'diff upper');
      return;
    case 'build':
      checkInput(op.op.value.builder, 'build builder');
      for (const [k, v] of Object.entries(op.op.value.inputs)) checkInput(v, `build input "${k}"`);
      return;
  }
}
