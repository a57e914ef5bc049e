/*
 * kiln_native: the few Linux system calls Node does not expose, as a small
 * N-API addon (ABI-stable, so one build works on any Node >= 18).
 *
 *   mount(source, target, fstype, flags, data)       mount(2)
 *   umount2(target, flags)                            umount2(2)
 *   mountOverlay(target, lowers[], upper, work, opts[], readonly)
 *       overlay through the new mount API (fsopen/fsconfig/fsmount/move_mount)
 *       passing each lower layer with "lowerdir+" so that deep chains are not
 *       bound by the one-page limit of mount(2)'s option string (kernel >= 6.8).
 *       Throws with code ENOSYS/EINVAL when the kernel lacks it; callers fall
 *       back to mount(2).
 *   mknod(path, mode, major, minor)                   mknod(2)
 *   lgetxattr(path, name) -> Buffer | null            null when the attribute is absent
 *   lsetxattr(path, name, value, flags)
 *   llistxattr(path) -> string[]
 *   lremovexattr(path, name)
 *   flock(fd, operation)                              flock(2): LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8
 *   lutimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec)
 *       utimensat(2) with AT_SYMLINK_NOFOLLOW: nanosecond times, which
 *       fs.lutimes cannot carry exactly (it takes seconds as a double).
 *   readdirStat(dir) -> Buffer
 *       one directory's entries, sorted in JavaScript string order, each
 *       with its lstat data and symlink target, packed in one Buffer:
 *       open(O_DIRECTORY|O_NOFOLLOW), getdents64, fstatat(AT_SYMLINK_NOFOLLOW)
 *       and readlinkat relative to the directory's descriptor (no path
 *       resolution per entry, no Stats object per entry). Layout: see
 *       READDIR_* below and src/core/native/readdir.ts, which decodes it.
 *
 *   spawnPiped(file, argv[], env[] | null, stdinPipe, onExit) -> [pid, stdinFd, stdoutFd, stderrFd]
 *       posix_spawnp(3) (with `env`, else this process's environment) with
 *       fresh pipes for stdout and stderr, and for stdin
 *       when stdinPipe is true (/dev/null otherwise); -1 for a descriptor not
 *       made. glibc's posix_spawn shares the caller's memory until the child
 *       execs (clone(CLONE_VM|CLONE_VFORK)), where Node's child_process
 *       forks: copying the page tables of a 100-200 MB Node costs 1.5-3.5 ms
 *       per process, blocking the event loop. The exit is watched through a
 *       pidfd polled on Node's own event loop (no thread); onExit(code,
 *       signal) is called once, after the child has been reaped (code -1
 *       when a signal ended it). Only this pid is ever waited for: libuv
 *       reaps only the processes it started itself.
 *
 * All other calls are synchronous: each is a single short system call. Errors are
 * thrown as Error objects with `code` (e.g. "ENOENT"), `errno` and `syscall`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <signal.h>
#include <spawn.h>
#include <uv.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_fsopen
#define SYS_open_tree 428
#define SYS_move_mount 429
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif
#define K_FSOPEN_CLOEXEC 0x1
#define K_FSCONFIG_SET_FLAG 0
#define K_FSCONFIG_SET_STRING 1
#define K_FSCONFIG_CMD_CREATE 6
#define K_FSMOUNT_CLOEXEC 0x1
#define K_MOUNT_ATTR_RDONLY 0x1
#define K_MOVE_MOUNT_F_EMPTY_PATH 0x4

static const char *errno_name(int e) {
  switch (e) {
  case EPERM: return "EPERM";
  case ENOENT: return "ENOENT";
  case EIO: return "EIO";
  case EBADF: return "EBADF";
  case EACCES: return "EACCES";
  case EBUSY: return "EBUSY";
  case EEXIST: return "EEXIST";
  case ENOTDIR: return "ENOTDIR";
  case EISDIR: return "EISDIR";
  case EINVAL: return "EINVAL";
  case ENOSPC: return "ENOSPC";
  case EROFS: return "EROFS";
  case ENAMETOOLONG: return "ENAMETOOLONG";
  case ENOSYS: return "ENOSYS";
  case ENOTSUP: return "ENOTSUP";
  case ENODATA: return "ENODATA";
  case E2BIG: return "E2BIG";
  case ERANGE: return "ERANGE";
  case ENODEV: return "ENODEV";
  case ELOOP: return "ELOOP";
  case ENOTBLK: return "ENOTBLK";
  case ENOMEM: return "ENOMEM";
  case EFAULT: return "EFAULT";
  case EWOULDBLOCK: return "EWOULDBLOCK";
  default: return "EUNKNOWN";
  }
}

static napi_value throw_errno(napi_env env, int e, const char *syscall_name, const char *path) {
  char msg[4352];
  if (path)
    snprintf(msg, sizeof msg, "%s: %s, %s '%s'", errno_name(e), strerror(e), syscall_name, path);
  else
    snprintf(msg, sizeof msg, "%s: %s, %s", errno_name(e), strerror(e), syscall_name);
  napi_value message, code, err, errnum, sc;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_string_utf8(env, errno_name(e), NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, NULL, message, &err);
  napi_set_named_property(env, err, "code", code);
  napi_create_int32(env, -e, &errnum);
  napi_set_named_property(env, err, "errno", errnum);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, err, "syscall", sc);
  if (path) {
    napi_value p;
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &p);
    napi_set_named_property(env, err, "path", p);
  }
  napi_throw(env, err);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

/* Reads the first n arguments as int32 into out; 0 when fewer are given or one is not a number. */
static int get_int32_args(napi_env env, napi_callback_info info, size_t n, int32_t *out) {
  napi_value argv[4];
  size_t argc = 4;
  if (n > 4) return 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < n) return 0;
  for (size_t i = 0; i < n; i++)
    if (napi_get_value_int32(env, argv[i], &out[i]) != napi_ok) return 0;
  return 1;
}

static napi_value int32_value(napi_env env, int32_t v) {
  napi_value ret;
  napi_create_int32(env, v, &ret);
  return ret;
}

/* Copies a JS string argument into a new heap buffer; NULL for null/undefined when allowed. */
static int get_str(napi_env env, napi_value v, char **out, int nullable) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (nullable && (t == napi_null || t == napi_undefined)) {
    *out = NULL;
    return 1;
  }
  if (t != napi_string) return 0;
  size_t len;
  napi_get_value_string_utf8(env, v, NULL, 0, &len);
  char *buf = malloc(len + 1);
  if (!buf) return 0;
  napi_get_value_string_utf8(env, v, buf, len + 1, &len);
  *out = buf;
  return 1;
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 5) return throw_type(env, "mount(source, target, fstype, flags, data) takes 5 arguments");
  char *source = NULL, *target = NULL, *fstype = NULL, *data = NULL;
  double flags = 0;
  napi_value ret = NULL;
  if (!get_str(env, argv[0], &source, 1) || !get_str(env, argv[1], &target, 0) ||
      !get_str(env, argv[2], &fstype, 1) || napi_get_value_double(env, argv[3], &flags) != napi_ok ||
      !get_str(env, argv[4], &data, 1)) {
    throw_type(env, "mount: bad argument types");
    goto out;
  }
  if (mount(source, target, fstype, (unsigned long)flags, data) != 0) {
    throw_errno(env, errno, "mount", target);
    goto out;
  }
  napi_get_undefined(env, &ret);
out:
  free(source);
  free(target);
  free(fstype);
  free(data);
  return ret;
}

static napi_value js_umount2(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *target = NULL;
  int32_t flags = 0;
  if (argc < 1 || !get_str(env, argv[0], &target, 0)) return throw_type(env, "umount2(target, flags)");
  if (argc > 1) napi_get_value_int32(env, argv[1], &flags);
  napi_value ret = NULL;
  if (umount2(target, flags) != 0)
    throw_errno(env, errno, "umount2", target);
  else
    napi_get_undefined(env, &ret);
  free(target);
  return ret;
}

static int fsconfig_str(int fd, const char *key, const char *value) {
  return (int)syscall(SYS_fsconfig, fd, value ? K_FSCONFIG_SET_STRING : K_FSCONFIG_SET_FLAG, key, value, 0);
}

/* mountOverlay(target, lowers: string[], upper: string|null, work: string|null, options: string[], readonly: boolean) */
static napi_value js_mount_overlay(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 6) return throw_type(env, "mountOverlay(target, lowers, upper, work, options, readonly)");
  char *target = NULL, *upper = NULL, *work = NULL, *s = NULL;
  bool ro = false;
  napi_value ret = NULL;
  int fd = -1, mfd = -1;
  uint32_t nlower = 0, nopt = 0;
  if (!get_str(env, argv[0], &target, 0) || !get_str(env, argv[2], &upper, 1) || !get_str(env, argv[3], &work, 1) ||
      napi_get_array_length(env, argv[1], &nlower) != napi_ok ||
      napi_get_array_length(env, argv[4], &nopt) != napi_ok || napi_get_value_bool(env, argv[5], &ro) != napi_ok) {
    throw_type(env, "mountOverlay: bad argument types");
    goto out;
  }
  fd = (int)syscall(SYS_fsopen, "overlay", K_FSOPEN_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, errno, "fsopen", target);
    goto out;
  }
  for (uint32_t i = 0; i < nopt; i++) {
    napi_value el;
    napi_get_element(env, argv[4], i, &el);
    if (!get_str(env, el, &s, 0)) {
      throw_type(env, "mountOverlay: options must be strings");
      goto out;
    }
    char *eq = strchr(s, '=');
    int rc;
    if (eq) {
      *eq = 0;
      rc = fsconfig_str(fd, s, eq + 1);
    } else {
      rc = fsconfig_str(fd, s, NULL);
    }
    if (rc != 0) {
      throw_errno(env, errno, "fsconfig", s);
      goto out;
    }
    free(s);
    s = NULL;
  }
  for (uint32_t i = 0; i < nlower; i++) {
    napi_value el;
    napi_get_element(env, argv[1], i, &el);
    if (!get_str(env, el, &s, 0)) {
      throw_type(env, "mountOverlay: lowers must be strings");
      goto out;
    }
    if (fsconfig_str(fd, "lowerdir+", s) != 0) {
      throw_errno(env, errno, "fsconfig lowerdir+", s);
      goto out;
    }
    free(s);
    s = NULL;
  }
  if (upper && fsconfig_str(fd, "upperdir", upper) != 0) {
    throw_errno(env, errno, "fsconfig upperdir", upper);
    goto out;
  }
  if (work && fsconfig_str(fd, "workdir", work) != 0) {
    throw_errno(env, errno, "fsconfig workdir", work);
    goto out;
  }
  if (syscall(SYS_fsconfig, fd, K_FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0) {
    throw_errno(env, errno, "fsconfig create", target);
    goto out;
  }
  mfd = (int)syscall(SYS_fsmount, fd, K_FSMOUNT_CLOEXEC, ro ? K_MOUNT_ATTR_RDONLY : 0);
  if (mfd < 0) {
    throw_errno(env, errno, "fsmount", target);
    goto out;
  }
  if (syscall(SYS_move_mount, mfd, "", AT_FDCWD, target, K_MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    throw_errno(env, errno, "move_mount", target);
    goto out;
  }
  napi_get_undefined(env, &ret);
out:
  if (mfd >= 0) close(mfd);
  if (fd >= 0) close(fd);
  free(s);
  free(target);
  free(upper);
  free(work);
  return ret;
}

static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL;
  uint32_t mode = 0, major = 0, minor = 0;
  if (argc < 4 || !get_str(env, argv[0], &path, 0) || napi_get_value_uint32(env, argv[1], &mode) != napi_ok ||
      napi_get_value_uint32(env, argv[2], &major) != napi_ok || napi_get_value_uint32(env, argv[3], &minor) != napi_ok) {
    free(path);
    return throw_type(env, "mknod(path, mode, major, minor)");
  }
  napi_value ret = NULL;
  if (mknod(path, (mode_t)mode, makedev(major, minor)) != 0)
    throw_errno(env, errno, "mknod", path);
  else
    napi_get_undefined(env, &ret);
  free(path);
  return ret;
}

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL, *name = NULL;
  napi_value ret = NULL;
  if (argc < 2 || !get_str(env, argv[0], &path, 0) || !get_str(env, argv[1], &name, 0)) {
    throw_type(env, "lgetxattr(path, name)");
    goto out;
  }
  for (;;) {
    ssize_t n = lgetxattr(path, name, NULL, 0);
    if (n < 0) {
      if (errno == ENODATA) napi_get_null(env, &ret);
      else throw_errno(env, errno, "lgetxattr", path);
      goto out;
    }
    void *data;
    napi_value buf;
    napi_create_buffer(env, (size_t)n, &data, &buf);
    ssize_t m = n == 0 ? 0 : lgetxattr(path, name, data, (size_t)n);
    if (m < 0) {
      if (errno == ERANGE) continue; /* grew between the two calls */
      if (errno == ENODATA) napi_get_null(env, &ret);
      else throw_errno(env, errno, "lgetxattr", path);
      goto out;
    }
    if (m < n) napi_create_buffer_copy(env, (size_t)m, data, NULL, &buf);
    ret = buf;
    goto out;
  }
out:
  free(path);
  free(name);
  return ret;
}

static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL, *name = NULL;
  void *data = NULL;
  size_t len = 0;
  int32_t flags = 0;
  napi_value ret = NULL;
  bool isbuf = false;
  if (argc >= 3) napi_is_buffer(env, argv[2], &isbuf);
  if (argc < 3 || !get_str(env, argv[0], &path, 0) || !get_str(env, argv[1], &name, 0) || !isbuf) {
    throw_type(env, "lsetxattr(path, name, value: Buffer, flags)");
    goto out;
  }
  napi_get_buffer_info(env, argv[2], &data, &len);
  if (argc > 3) napi_get_value_int32(env, argv[3], &flags);
  if (lsetxattr(path, name, data, len, flags) != 0)
    throw_errno(env, errno, "lsetxattr", path);
  else
    napi_get_undefined(env, &ret);
out:
  free(path);
  free(name);
  return ret;
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL;
  napi_value ret = NULL;
  char *list = NULL;
  if (argc < 1 || !get_str(env, argv[0], &path, 0)) {
    throw_type(env, "llistxattr(path)");
    goto out;
  }
  for (;;) {
    ssize_t n = llistxattr(path, NULL, 0);
    if (n < 0) {
      if (errno == ENOTSUP) {
        napi_create_array(env, &ret);
      } else {
        throw_errno(env, errno, "llistxattr", path);
      }
      goto out;
    }
    napi_create_array(env, &ret);
    if (n == 0) goto out;
    list = malloc((size_t)n);
    ssize_t m = llistxattr(path, list, (size_t)n);
    if (m < 0) {
      free(list);
      list = NULL;
      if (errno == ERANGE) continue;
      ret = NULL;
      throw_errno(env, errno, "llistxattr", path);
      goto out;
    }
    uint32_t idx = 0;
    for (ssize_t off = 0; off < m;) {
      size_t l = strlen(list + off);
      napi_value str;
      napi_create_string_utf8(env, list + off, l, &str);
      napi_set_element(env, ret, idx++, str);
      off += (ssize_t)l + 1;
    }
    goto out;
  }
out:
  free(list);
  free(path);
  return ret;
}

static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL, *name = NULL;
  napi_value ret = NULL;
  if (argc < 2 || !get_str(env, argv[0], &path, 0) || !get_str(env, argv[1], &name, 0)) {
    throw_type(env, "lremovexattr(path, name)");
    goto out;
  }
  if (lremovexattr(path, name) != 0)
    throw_errno(env, errno, "lremovexattr", path);
  else
    napi_get_undefined(env, &ret);
out:
  free(path);
  free(name);
  return ret;
}

static napi_value js_lutimensat(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *path = NULL;
  int64_t as = 0, an = 0, ms = 0, mn = 0;
  if (argc < 5 || !get_str(env, argv[0], &path, 0) || napi_get_value_int64(env, argv[1], &as) != napi_ok ||
      napi_get_value_int64(env, argv[2], &an) != napi_ok || napi_get_value_int64(env, argv[3], &ms) != napi_ok ||
      napi_get_value_int64(env, argv[4], &mn) != napi_ok) {
    free(path);
    return throw_type(env, "lutimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec)");
  }
  struct timespec ts[2] = {{.tv_sec = as, .tv_nsec = an}, {.tv_sec = ms, .tv_nsec = mn}};
  napi_value ret = NULL;
  if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) != 0)
    throw_errno(env, errno, "utimensat", path);
  else
    napi_get_undefined(env, &ret);
  free(path);
  return ret;
}

static napi_value js_flock(napi_env env, napi_callback_info info) {
  int32_t a[2];
  if (!get_int32_args(env, info, 2, a)) return throw_type(env, "flock(fd, operation)");
  int32_t fd = a[0], op = a[1];
  int rc;
  do {
    rc = flock(fd, op);
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return throw_errno(env, errno, "flock", NULL);
  napi_value ret;
  napi_get_undefined(env, &ret);
  return ret;
}


/* ---------------------------------------------------------------- readdirStat
 * Buffer layout (little-endian, every record 8-byte aligned):
 *   header: u32 count, u32 version (1)
 *   record: f64 size, f64 mtimeSec, f64 ctimeSec, f64 ino, f64 dev, f64 rdev,
 *           u32 mode, u32 uid, u32 gid, u32 mtimeNsec, u32 ctimeNsec,
 *           u32 nameLen, u32 linkLen, u32 flags,
 *           name bytes, link target bytes, zero padding to 8.
 * flags: READDIR_F_GONE (the entry vanished between getdents and fstatat),
 *        READDIR_F_NOT_UTF8 (the name is not valid UTF-8: a JavaScript string
 *        cannot name it), READDIR_F_ASCII (the name is plain ASCII),
 *        READDIR_F_JSON_PLAIN (JSON.stringify of the name is the name in
 *        quotes: no control character, quote or backslash).
 * Names are sorted by UTF-16 code units, as Array.prototype.sort orders the
 * strings they decode to: UTF-8 byte order, except that lead bytes of
 * U+E000..U+FFFF (0xEE, 0xEF) sort after those of supplementary characters
 * (0xF0..0xF4, surrogate pairs in UTF-16).
 */
#define READDIR_HEADER 8
#define READDIR_FIXED 80
#define READDIR_F_GONE 1u
#define READDIR_F_NOT_UTF8 2u
#define READDIR_F_ASCII 4u
#define READDIR_F_JSON_PLAIN 8u

struct rd_name {
  size_t off; /* into the name arena */
  size_t len;
};

static int utf16_rank(unsigned char b) {
  if (b < 0xEE) return b;
  if (b >= 0xF0) return b - 2; /* 0xEE..0xFD */
  return b + 0x10;             /* 0xEE, 0xEF -> 0xFE, 0xFF */
}

/* qsort_r comparator; ctx is the name arena (no global: worker threads may list at once). */
static int rd_cmp(const void *a, const void *b, void *ctx) {
  const struct rd_name *x = a, *y = b;
  const unsigned char *arena = ctx;
  const unsigned char *p = arena + x->off, *q = arena + y->off;
  size_t n = x->len < y->len ? x->len : y->len;
  for (size_t i = 0; i < n; i++)
    if (p[i] != q[i]) return utf16_rank(p[i]) - utf16_rank(q[i]);
  return x->len < y->len ? -1 : x->len > y->len ? 1 : 0;
}

/* 1 if s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n, int *ascii) {
  *ascii = 1;
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    *ascii = 0;
    size_t len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return 0;
    if (i + len > n) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return 0;
    i += len;
  }
  return 1;
}

struct rd_out {
  unsigned char *buf;
  size_t len, cap;
};

/*
 * A buffer that holds at least `need` bytes: `buf` itself when `*cap` is
 * enough, else `buf` reallocated to a capacity doubled from `first` (stored
 * in `*cap`). NULL when out of memory; `buf` is then still valid.
 */
static void *grow_buf(void *buf, size_t *cap, size_t need, size_t first) {
  if (need <= *cap) return buf;
  size_t c = *cap ? *cap : first;
  while (c < need) c *= 2;
  void *nb = realloc(buf, c);
  if (nb) *cap = c;
  return nb;
}

static int out_reserve(struct rd_out *o, size_t more) {
  unsigned char *nb = grow_buf(o->buf, &o->cap, o->len + more, 16384);
  if (!nb) return 0;
  o->buf = nb;
  return 1;
}

struct linux_dirent64_k {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[];
};

/* Error path: "<dir>/<name>" for messages. */
static void join_path(char *dst, size_t cap, const char *dir, const char *name) {
  snprintf(dst, cap, "%s%s%s", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", name);
}

/*
 * readAheadDir(dir, maxSize): asks the kernel to read ahead (posix_fadvise
 * POSIX_FADV_WILLNEED) every regular file of `dir` of 1..maxSize bytes. The
 * reads are queued and the call returns without waiting for them, so a
 * directory of small files that is not in the page cache is read with many
 * requests in flight instead of one at a time. Best effort: entries that
 * cannot be opened are skipped. Returns how many files were advised.
 */
static napi_value js_read_ahead_dir(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *dir = NULL;
  int64_t max_size = 0;
  if (argc < 2 || !get_str(env, argv[0], &dir, 0) || napi_get_value_int64(env, argv[1], &max_size) != napi_ok) {
    free(dir);
    return throw_type(env, "readAheadDir(dir, maxSize)");
  }
  int32_t advised = 0;
  char dents[32768];
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  free(dir);
  if (fd < 0) return int32_value(env, 0);
  for (;;) {
    long n = syscall(SYS_getdents64, fd, dents, sizeof dents);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (long pos = 0; pos < n;) {
      struct linux_dirent64_k *d = (struct linux_dirent64_k *)(dents + pos);
      pos += d->d_reclen;
      /* Only regular files are opened: opening a device or a FIFO may have effects. */
      if (d->d_type != DT_REG) {
        struct stat lst;
        if (d->d_type != DT_UNKNOWN || fstatat(fd, d->d_name, &lst, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(lst.st_mode))
          continue;
      }
      int f = openat(fd, d->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
      if (f < 0) continue;
      struct stat st;
      if (fstat(f, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 && st.st_size <= max_size &&
          posix_fadvise(f, 0, 0, POSIX_FADV_WILLNEED) == 0)
        advised++;
      close(f);
    }
  }
  close(fd);
  return int32_value(env, advised);
}

static napi_value js_readdir_stat(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *dir = NULL;
  if (argc < 1 || !get_str(env, argv[0], &dir, 0)) return throw_type(env, "readdirStat(dir)");
  napi_value ret = NULL;
  int fd = -1;
  char *arena = NULL, *link = NULL;
  size_t arena_len = 0, arena_cap = 0, nnames = 0, names_bytes = 0;
  struct rd_name *names = NULL;
  struct rd_out out = {0};
  char ebuf[4352];
  char dents[32768];

  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    throw_errno(env, errno, "open", dir);
    goto done;
  }
  for (;;) {
    long n = syscall(SYS_getdents64, fd, dents, sizeof dents);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(env, errno, "getdents64", dir);
      goto done;
    }
    if (n == 0) break;
    for (long pos = 0; pos < n;) {
      struct linux_dirent64_k *d = (struct linux_dirent64_k *)(dents + pos);
      pos += d->d_reclen;
      const char *nm = d->d_name;
      if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0))) continue;
      size_t l = strlen(nm);
      char *na = grow_buf(arena, &arena_cap, arena_len + l + 1, 8192);
      if (!na) {
        throw_errno(env, ENOMEM, "readdirStat", dir);
        goto done;
      }
      arena = na;
      struct rd_name *nn = grow_buf(names, &names_bytes, (nnames + 1) * sizeof *names, 256 * sizeof *names);
      if (!nn) {
        throw_errno(env, ENOMEM, "readdirStat", dir);
        goto done;
      }
      names = nn;
      memcpy(arena + arena_len, nm, l + 1);
      names[nnames].off = arena_len;
      names[nnames].len = l;
      nnames++;
      arena_len += l + 1;
    }
  }
  if (nnames > 1) qsort_r(names, nnames, sizeof *names, rd_cmp, arena);

  if (!out_reserve(&out, READDIR_HEADER)) {
    throw_errno(env, ENOMEM, "readdirStat", dir);
    goto done;
  }
  uint32_t hdr[2] = {(uint32_t)nnames, 1};
  memcpy(out.buf, hdr, sizeof hdr);
  out.len = READDIR_HEADER;
  size_t link_cap = 0;
  for (size_t i = 0; i < nnames; i++) {
    const char *nm = arena + names[i].off;
    size_t nlen = names[i].len;
    struct stat st;
    uint32_t flags = 0;
    int ascii = 0;
    if (!valid_utf8((const unsigned char *)nm, nlen, &ascii)) flags |= READDIR_F_NOT_UTF8;
    if (ascii) flags |= READDIR_F_ASCII;
    int plain = 1;
    for (size_t k = 0; k < nlen && plain; k++) {
      unsigned char ch = (unsigned char)nm[k];
      if (ch < 0x20 || ch == '"' || ch == '\\') plain = 0;
    }
    if (plain) flags |= READDIR_F_JSON_PLAIN;
    size_t llen = 0;
    memset(&st, 0, sizeof st);
    if (fstatat(fd, nm, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno != ENOENT && errno != ENOTDIR) {
        join_path(ebuf, sizeof ebuf, dir, nm);
        throw_errno(env, errno, "lstat", ebuf);
        goto done;
      }
      flags |= READDIR_F_GONE;
    } else if (S_ISLNK(st.st_mode)) {
      size_t need = (size_t)st.st_size + 1;
      for (;;) {
        char *nl = grow_buf(link, &link_cap, need, 256);
        if (!nl) {
          throw_errno(env, ENOMEM, "readdirStat", dir);
          goto done;
        }
        link = nl;
        ssize_t r = readlinkat(fd, nm, link, link_cap);
        if (r < 0) {
          if (errno == ENOENT || errno == EINVAL) { /* gone, or replaced by a non-link */
            flags |= READDIR_F_GONE;
            break;
          }
          join_path(ebuf, sizeof ebuf, dir, nm);
          throw_errno(env, errno, "readlink", ebuf);
          goto done;
        }
        if ((size_t)r < link_cap) {
          llen = (size_t)r;
          break;
        }
        need = link_cap + 1; /* the target grew since the lstat */
      }
    }
    size_t rec = (READDIR_FIXED + nlen + llen + 7) & ~(size_t)7;
    if (!out_reserve(&out, rec)) {
      throw_errno(env, ENOMEM, "readdirStat", dir);
      goto done;
    }
    unsigned char *r = out.buf + out.len;
    double f[6] = {(double)st.st_size, (double)st.st_mtim.tv_sec, (double)st.st_ctim.tv_sec,
                   (double)st.st_ino,  (double)st.st_dev,         (double)st.st_rdev};
    uint32_t u[8] = {(uint32_t)st.st_mode,        (uint32_t)st.st_uid, (uint32_t)st.st_gid,
                     (uint32_t)st.st_mtim.tv_nsec, (uint32_t)st.st_ctim.tv_nsec,
                     (uint32_t)nlen,               (uint32_t)llen,      flags};
    memcpy(r, f, sizeof f);
    memcpy(r + 48, u, sizeof u);
    memcpy(r + READDIR_FIXED, nm, nlen);
    if (llen) memcpy(r + READDIR_FIXED + nlen, link, llen);
    memset(r + READDIR_FIXED + nlen + llen, 0, rec - READDIR_FIXED - nlen - llen);
    out.len += rec;
  }
  if (napi_create_buffer_copy(env, out.len, out.buf, NULL, &ret) != napi_ok) {
    ret = NULL;
    throw_errno(env, ENOMEM, "readdirStat", dir);
  }
done:
  if (fd >= 0) close(fd);
  free(out.buf);
  free(names);
  free(arena);
  free(link);
  free(dir);
  return ret;
}

/*
 * Console sockets (the OCI runtimes' --console-socket): the runtime connects
 * to a Unix socket and sends the master side of the container's terminal as
 * SCM_RIGHTS ancillary data. Node's net module cannot receive descriptors.
 */

/* consoleListen(path) -> fd: a non-blocking listening socket bound at path. */
static napi_value js_console_listen(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *p = NULL;
  if (argc < 1 || !get_str(env, argv[0], &p, 0)) return throw_type(env, "consoleListen(path)");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(p) >= sizeof addr.sun_path) {
    napi_value r = throw_errno(env, ENAMETOOLONG, "bind", p);
    free(p);
    return r;
  }
  strcpy(addr.sun_path, p);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    napi_value r = throw_errno(env, errno, "socket", p);
    free(p);
    return r;
  }
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 1) < 0) {
    int e = errno;
    close(fd);
    napi_value r = throw_errno(env, e, "bind", p);
    free(p);
    return r;
  }
  free(p);
  return int32_value(env, fd);
}

/* consoleAccept(listenFd) -> fd | null: the descriptor a runtime sent, or null while none connected. */
static napi_value js_console_accept(napi_env env, napi_callback_info info) {
  int32_t lfd;
  if (!get_int32_args(env, info, 1, &lfd)) return throw_type(env, "consoleAccept(fd)");
  int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      napi_value n;
      napi_get_null(env, &n);
      return n;
    }
    return throw_errno(env, errno, "accept4", NULL);
  }
  char data[256];
  struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t n;
  do n = recvmsg(c, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  int e = errno;
  close(c);
  if (n < 0) return throw_errno(env, e, "recvmsg", NULL);
  struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
  if (!h || h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS || h->cmsg_len != CMSG_LEN(sizeof(int)))
    return throw_errno(env, EBADMSG, "recvmsg", "console socket: no descriptor");
  int fd;
  memcpy(&fd, CMSG_DATA(h), sizeof fd);
  return int32_value(env, fd);
}

/* setWindowSize(fd, rows, cols): TIOCSWINSZ on a terminal. */
static napi_value js_set_window_size(napi_env env, napi_callback_info info) {
  int32_t a[3];
  if (!get_int32_args(env, info, 3, a)) return throw_type(env, "setWindowSize(fd, rows, cols)");
  struct winsize ws = {.ws_row = (unsigned short)a[1], .ws_col = (unsigned short)a[2]};
  if (ioctl(a[0], TIOCSWINSZ, &ws) < 0) return throw_errno(env, errno, "ioctl(TIOCSWINSZ)", NULL);
  return NULL;
}

/* ---- spawnPiped ---------------------------------------------------------- */

extern char **environ;

struct child_watch {
  uv_poll_t poll;
  int pidfd;
  pid_t pid;
  napi_threadsafe_function tsfn;
};

struct child_exit {
  int code;   /* exit code, or -1 when a signal ended the process */
  int signal; /* signal number, or 0 */
};

static void child_call_js(napi_env env, napi_value cb, void *context, void *data) {
  struct child_exit *ex = data;
  if (env && cb) {
    napi_value args[2], global;
    napi_create_int32(env, ex->code, &args[0]);
    napi_create_int32(env, ex->signal, &args[1]);
    napi_get_global(env, &global);
    napi_call_function(env, global, cb, 2, args, NULL);
  }
  free(ex);
}

static void child_poll_closed(uv_handle_t *h) {
  struct child_watch *w = h->data;
  close(w->pidfd);
  free(w);
}

static void child_poll_cb(uv_poll_t *h, int status, int events) {
  struct child_watch *w = h->data;
  int st = 0;
  pid_t r;
  do r = waitpid(w->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return; /* not yet: spurious wake-up */
  struct child_exit *ex = malloc(sizeof *ex);
  if (ex) {
    if (r < 0) { /* cannot happen unless someone else reaped it: report a lost process */
      ex->code = 255;
      ex->signal = 0;
    } else if (WIFSIGNALED(st)) {
      ex->code = -1;
      ex->signal = WTERMSIG(st);
    } else {
      ex->code = WEXITSTATUS(st);
      ex->signal = 0;
    }
    napi_call_threadsafe_function(w->tsfn, ex, napi_tsfn_nonblocking);
  }
  napi_release_threadsafe_function(w->tsfn, napi_tsfn_release);
  uv_close((uv_handle_t *)&w->poll, child_poll_closed); /* stops the poll too */
}

/* For a child that cannot be watched: killed and reaped here rather than left a zombie. */
static void kill_and_reap(pid_t pid) {
  kill(pid, SIGKILL);
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
}

static void close_pair(int p[2]) {
  if (p[0] >= 0) close(p[0]);
  if (p[1] >= 0) close(p[1]);
}

/* Copies a JS array of strings into a NULL-terminated vector (*out); 0 on a non-string. */
static int get_str_array(napi_env env, napi_value arr, uint32_t n, char ***out) {
  char **v = calloc(n + 1, sizeof *v);
  *out = v;
  if (!v) return 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    if (napi_get_element(env, arr, i, &el) != napi_ok || !get_str(env, el, &v[i], 0)) return 0;
  }
  return 1;
}

static void free_str_array(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

static napi_value js_spawn_piped(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char *file = NULL;
  bool stdin_pipe = false;
  uint32_t n = 0, envn = 0;
  napi_valuetype cbt = napi_undefined, envt = napi_undefined;
  if (argc < 5 || !get_str(env, argv[0], &file, 0) || napi_get_array_length(env, argv[1], &n) != napi_ok ||
      n == 0 || napi_typeof(env, argv[2], &envt) != napi_ok ||
      (envt != napi_null && napi_get_array_length(env, argv[2], &envn) != napi_ok) ||
      napi_get_value_bool(env, argv[3], &stdin_pipe) != napi_ok ||
      napi_typeof(env, argv[4], &cbt) != napi_ok || cbt != napi_function) {
    free(file);
    return throw_type(env, "spawnPiped(file, argv[], env[] | null, stdinPipe, onExit)");
  }
  char **args = NULL, **envp = NULL;
  napi_value result = NULL;
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  int pidfd = -1;
  bool attr_ok = false, fa_ok = false;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t fa;
  if (!get_str_array(env, argv[1], n, &args) || (envt != napi_null && !get_str_array(env, argv[2], envn, &envp))) {
    result = throw_type(env, "spawnPiped: argv and env must be arrays of strings");
    goto done;
  }
  if ((stdin_pipe && pipe2(in, O_CLOEXEC) < 0) || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
    result = throw_errno(env, errno, "pipe2", NULL);
    goto done;
  }
  /* The child gets default signal dispositions and an empty mask, as libuv gives its children
     (Node ignores SIGPIPE, and ignored signals survive exec). */
  sigset_t all, none;
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  sigemptyset(&none);
  int e = posix_spawnattr_init(&attr);
  if (e == 0) {
    attr_ok = true;
    e = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  }
  if (e == 0) e = posix_spawnattr_setsigmask(&attr, &none);
  if (e == 0) e = posix_spawnattr_setsigdefault(&attr, &all);
  if (e == 0) {
    e = posix_spawn_file_actions_init(&fa);
    if (e == 0) fa_ok = true;
  }
  if (e == 0)
    e = stdin_pipe ? posix_spawn_file_actions_adddup2(&fa, in[0], 0)
                   : posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (e == 0) e = posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  if (e == 0) e = posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  if (e != 0) {
    result = throw_errno(env, e, "posix_spawn", NULL);
    goto done;
  }
  pid_t pid;
  e = posix_spawnp(&pid, file, &fa, &attr, args, envp ? envp : environ);
  if (e != 0) {
    char sc[64];
    snprintf(sc, sizeof sc, "spawn %.50s", file);
    result = throw_errno(env, e, sc, file);
    goto done;
  }
  /* From here on the child exists: every failure still reports its exit through onExit. */
  pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  struct child_watch *w = calloc(1, sizeof *w);
  uv_loop_t *loop = NULL;
  napi_value name;
  napi_create_string_utf8(env, "kiln.spawnPiped", NAPI_AUTO_LENGTH, &name);
  if (pidfd < 0 || !w || napi_get_uv_event_loop(env, &loop) != napi_ok ||
      napi_create_threadsafe_function(env, argv[4], NULL, name, 0, 1, NULL, NULL, NULL, child_call_js, &w->tsfn) !=
          napi_ok) {
    int saved = pidfd < 0 ? errno : ENOMEM;
    kill_and_reap(pid);
    if (pidfd >= 0) close(pidfd);
    pidfd = -1;
    free(w);
    result = throw_errno(env, saved, "pidfd_open", NULL);
    goto done;
  }
  w->pid = pid;
  w->pidfd = pidfd;
  w->poll.data = w;
  napi_threadsafe_function tsfn = w->tsfn;
  int ue = uv_poll_init(loop, &w->poll, pidfd);
  if (ue == 0) {
    ue = uv_poll_start(&w->poll, UV_READABLE, child_poll_cb);
    if (ue != 0) uv_close((uv_handle_t *)&w->poll, child_poll_closed); /* closes pidfd, frees w */
  } else {
    close(pidfd);
    free(w);
  }
  if (ue != 0) {
    napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
    kill_and_reap(pid);
    pidfd = -1;
    result = throw_errno(env, -ue, "uv_poll_start", NULL);
    goto done;
  }
  napi_value arr;
  napi_create_array_with_length(env, 4, &arr);
  int fds[4] = {pid, stdin_pipe ? in[1] : -1, out[0], err[0]};
  for (int i = 0; i < 4; i++) napi_set_element(env, arr, i, int32_value(env, fds[i]));
  /* The parent keeps only its own ends; the child's ends were dup'ed into it. */
  if (in[0] >= 0) close(in[0]);
  close(out[1]);
  close(err[1]);
  in[0] = in[1] = out[0] = out[1] = err[0] = err[1] = -1;
  result = arr;
done:
  close_pair(in);
  close_pair(out);
  close_pair(err);
  if (fa_ok) posix_spawn_file_actions_destroy(&fa);
  if (attr_ok) posix_spawnattr_destroy(&attr);
  free_str_array(args);
  free_str_array(envp);
  free(file);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"umount2", NULL, js_umount2, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mountOverlay", NULL, js_mount_overlay, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_enumerable, NULL},
      {"lutimensat", NULL, js_lutimensat, NULL, NULL, NULL, napi_enumerable, NULL},
      {"flock", NULL, js_flock, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readdirStat", NULL, js_readdir_stat, NULL, NULL, NULL, napi_enumerable, NULL},
      {"readAheadDir", NULL, js_read_ahead_dir, NULL, NULL, NULL, napi_enumerable, NULL},
      {"consoleListen", NULL, js_console_listen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"consoleAccept", NULL, js_console_accept, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setWindowSize", NULL, js_set_window_size, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawnPiped", NULL, js_spawn_piped, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
