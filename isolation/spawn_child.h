/* The task's child setup, shared by the Python extension isolation._spawn (_spawn.c) and the C launcher
 * (launcher.c): a plan of ops run in a vfork-style child between clone and execve.
 *
 * Why C: the launcher's forked Python child spent ~4 ms (exec) and ~2 ms (exec2) on its setup, most of it
 * interpreter work and copy-on-write faults on the launcher's heap; bubblewrap does the same kernel work in ~2 ms
 * including its exec. Here the child shares the launcher's memory (CLONE_VM | CLONE_VFORK, as posix_spawn does),
 * so nothing is copied, and it runs only system calls.
 *
 * What to do is decided in Python (isolation/childplan.py compiles a LaunchSpec into a list of ops); this file
 * only executes the ops in order. Rules for the child, because it runs on the launcher's memory while the
 * launcher is suspended: no malloc, no stdio, no glibc wrappers that touch shared state (the set*id family
 * signals "all threads" through the parent's thread list: raw syscalls instead), every signal blocked until the
 * dispositions are back to their defaults. A failure writes {"step", "errno", "path"} as JSON to the error pipe
 * and exits 127; a successful execve closes the pipe (close-on-exec), which is how the launcher tells them apart.
 */
#ifndef TASKSD_SPAWN_CHILD_H
#define TASKSD_SPAWN_CHILD_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* The newer syscalls have one number on every architecture. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

#ifndef SYS_clone3
#define SYS_clone3 435
#endif

/* clone3's arguments up to `cgroup` (CLONE_ARGS_SIZE_VER2), spelled out for headers older than Linux 5.7. */
struct t_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};
#define T_CLONE_INTO_CGROUP 0x200000000ULL

/* clone3 has no libc wrapper that runs a function on a new stack (glibc keeps its own internal), and a CLONE_VM
 * child returns from the system call on the stack it was given, with none of the caller's frame there: so the
 * child's side is written out, as libc's clone() does it. x86_64 only: elsewhere spawn() reports ENOSYS for
 * cgroup_fd and the launcher joins the cgroup with a write, as before. */
#if defined(__x86_64__)
#define HAVE_CLONE3_VM 1
static long clone3_vm(struct t_clone_args *args, int (*fn)(void *), void *arg) {
    long ret;
    register void *r_fn __asm__("r12") = (void *)fn;   /* callee-saved, and copied into the child */
    register void *r_arg __asm__("r13") = arg;
    __asm__ __volatile__(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        /* The child, on args->stack + args->stack_size (16-byte aligned): fn(arg), then exit with its value. */
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $60, %%eax\n\t" /* SYS_exit */
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(r_fn), "r"(r_arg)
        : "rcx", "r11", "memory", "cc");
    return ret;
}
#else
#define HAVE_CLONE3_VM 0
#endif

/* 32-bit x86 and arm have 16-bit legacy set*id calls under the plain names. */
#ifdef SYS_setresuid32
#define NR_setresuid SYS_setresuid32
#define NR_setresgid SYS_setresgid32
#define NR_setgroups SYS_setgroups32
#else
#define NR_setresuid SYS_setresuid
#define NR_setresgid SYS_setresgid
#define NR_setgroups SYS_setgroups
#endif
#define ID_MAX 0xFFFFFFFEULL /* (uid_t)-1 means "unchanged" to the kernel: never a valid id here */
#define NS_CLONE_FLAGS (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET)

/* <linux/mount.h> clashes with glibc's <sys/mount.h>: the few definitions needed, from the uapi. */
#define T_OPEN_TREE_CLONE 1
#define T_AT_RECURSIVE 0x8000
#define T_MOVE_MOUNT_F_EMPTY_PATH 0x04
#define T_MOVE_MOUNT_T_EMPTY_PATH 0x40
struct t_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
struct t_open_how { uint64_t flags, mode, resolve; };
#define T_RESOLVE_NO_MAGICLINKS 0x02
#define T_RESOLVE_BENEATH 0x08
struct t_cap_header { uint32_t version; int pid; };
struct t_cap_data { uint32_t effective, permitted, inheritable; };
#define T_CAP_V3 0x20080522
struct t_ruleset_attr { uint64_t handled_access_fs, handled_access_net, scoped; };
struct t_path_beneath { uint64_t allowed_access; int32_t parent_fd; } __attribute__((packed));

/* Op codes: keep in step with isolation/childplan.py. */
enum {
    OP_SETSID = 1, OP_WRITE, OP_SETNS_FD, OP_SETNS_PATH, OP_ENTER_ROOT, OP_LOOPBACK_UP, OP_SETHOSTNAME,
    OP_MOUNT, OP_OPEN_ROOT, OP_REMOUNT_ROOT_KEEP, OP_BIND_BENEATH, OP_MOUNT_BENEATH, OP_SYMLINK_BENEATH,
    OP_PIVOT_ROOT, OP_MOVE_ROOT, OP_UMASK, OP_STDIO, OP_NO_NEW_PRIVS, OP_LL_CREATE, OP_LL_RULE, OP_LL_RESTRICT,
    OP_CAPBSET, OP_KEEPCAPS, OP_SETGROUPS, OP_SETRESGID, OP_SETRESUID, OP_CAPSET, OP_AMBIENT, OP_CHDIR,
    OP_CLOSE_FDS,
};
/* Op flags. */
#define F_OPTIONAL 1             /* a failure is ignored */
#define F_ENOENT_OK 2            /* a missing path (or target) skips the op */
#define F_SKIP_NEXT_ON_SUCCESS 4 /* the next op is this one's fallback */
#define F_NO_CREATE 8            /* a missing target is not created */
#define F_WANT_DIR 16            /* a missing target is made a directory (else an empty file) */
#define F_CTTY 32                /* OP_STDIO: make fd 0 the controlling terminal */
#define F_BORN_IN 64             /* a cgroup join the C launcher drops when it clones the child into that cgroup */

typedef struct {
    int code, flags;
    long long i[3];
    const char *s[4];
    const char *step;
} op_t;

/* What both callers (the extension, the C launcher) check of a plan before it runs, where the kernel would get it
 * silently wrong. Groups are checked where each parses them: before they are narrowed to gid_t. */
static inline int clone_flags_ok(unsigned long long flags) { return !(flags & ~(unsigned long long)NS_CLONE_FLAGS); }
static inline int op_ids_ok(const op_t *op) {
    /* the kernel would truncate an id, or read -1 as "unchanged": either way the task could stay root */
    return !((op->code == OP_SETRESUID || op->code == OP_SETRESGID) &&
             (op->i[0] < 0 || (unsigned long long)op->i[0] > ID_MAX));
}

typedef struct {
    op_t *ops;
    long nops;
    int errpipe;
    const char *path;
    char *const *argv;
    char *const *envp;
    gid_t *groups;
    long ngroups;
    long deadline_s;
    int fd_limit; /* > 0: cloned with CLONE_FILES, and the child keeps a private copy of the fds below this only */
    int skip_flags; /* ops with any of these flags are not run, as if absent (F_BORN_IN: cloned into that cgroup) */
} plan_t;

/* What the child itself keeps between ops: on its own stack, never in the plan (the launcher's memory). */
typedef struct {
    const plan_t *pl;
    int root_fd, ll_fd;
} child_t;

/* ---- the child: nothing below may allocate or touch shared state --------------------------------------- */

static long sc(long nr, long a, long b, long c, long d, long e) {
    long r = syscall(nr, a, b, c, d, e);
    return r < 0 ? -errno : r;
}

static size_t c_strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

static char *put_str(char *p, char *end, const char *s) {
    while (*s && p < end) *p++ = *s++;
    return p;
}

static char *put_json_str(char *p, char *end, const char *s) {
    static const char hex[] = "0123456789abcdef";
    if (p < end) *p++ = '"';
    for (; s && *s && p + 6 < end; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') { *p++ = '\\'; *p++ = (char)ch; }
        else if (ch < 0x20 || ch >= 0x7f) {
            /* \u00XX for control and non-ASCII bytes: the launcher maps them back to bytes (latin-1) and decodes
             * those as os.fsdecode does */
            *p++ = '\\'; *p++ = 'u'; *p++ = '0'; *p++ = '0'; *p++ = hex[ch >> 4]; *p++ = hex[ch & 15];
        } else *p++ = (char)ch;
    }
    if (p < end) *p++ = '"';
    return p;
}

static char *put_int(char *p, char *end, long v) {
    char tmp[24];
    int n = 0;
    unsigned long u = v < 0 ? (unsigned long)(-v) : (unsigned long)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u && n < 23);
    if (v < 0 && p < end) *p++ = '-';
    while (n && p < end) *p++ = tmp[--n];
    return p;
}

static void fd_path(char *buf, int fd) {
    char *p = put_str(buf, buf + 32, "/proc/self/fd/");
    p = put_int(p, buf + 40, fd);
    *p = 0;
}

__attribute__((noreturn)) static void fail(const plan_t *pl, const char *step, int err, const char *path) {
    char buf[4096];
    char *p = buf, *end = buf + sizeof(buf) - 2;
    p = put_str(p, end, "{\"step\": ");
    p = put_json_str(p, end, step);
    p = put_str(p, end, ", \"errno\": ");
    p = put_int(p, end, err);
    if (path) {
        /* at most 6 bytes per input byte: a path is cut at 512 bytes so that the object always closes */
        char cut[513];
        size_t n = c_strlen(path);
        if (n > 512) n = 512;
        memcpy(cut, path, n);
        cut[n] = 0;
        p = put_str(p, end, ", \"path\": ");
        p = put_json_str(p, end, cut);
    }
    p = put_str(p, end, "}");
    ssize_t off = 0;
    while (off < p - buf) {
        ssize_t w = write(pl->errpipe, buf + off, (size_t)(p - buf - off));
        if (w <= 0) break;
        off += w;
    }
    _exit(127);
}

/* An O_PATH descriptor of `rel` beneath `base`, each component resolved by the kernel so that nothing (a
 * symlink a task swapped in) leads out of it; missing components are made one at a time relative to a directory
 * already resolved that way (see mounts.bind_beneath for the reasoning). Returns -errno. */
static int open_beneath(int base, const char *rel, int create, int want_dir, mode_t mode) {
    char prefix[4096];
    size_t len = 0;
    const char *p = rel;
    int fd = (int)sc(SYS_fcntl, base, F_DUPFD_CLOEXEC, 0, 0, 0);
    if (fd < 0) return fd;
    struct t_open_how how = { O_PATH | O_CLOEXEC, 0, T_RESOLVE_BENEATH | T_RESOLVE_NO_MAGICLINKS };
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *name = p;
        while (*p && *p != '/') p++;
        size_t nlen = (size_t)(p - name);
        if (len + nlen + 2 >= sizeof(prefix)) { close(fd); return -ENAMETOOLONG; }
        if (len) prefix[len++] = '/';
        memcpy(prefix + len, name, nlen);
        len += nlen;
        prefix[len] = 0;
        const char *rest = p;
        while (*rest == '/') rest++;
        int last = *rest == 0;
        int nfd = (int)sc(SYS_openat2, base, (long)prefix, (long)&how, sizeof(how), 0);
        if (nfd == -ENOENT && create) {
            char nm[256];
            if (nlen >= sizeof(nm)) { close(fd); return -ENAMETOOLONG; }
            memcpy(nm, name, nlen);
            nm[nlen] = 0;
            long r;
            if (last && !want_dir) {
                r = sc(SYS_openat, fd, (long)nm, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644, 0);
                if (r >= 0) close((int)r);
            } else {
                r = sc(SYS_mkdirat, fd, (long)nm, last ? mode : 0755, 0, 0);
            }
            if (r < 0 && r != -EEXIST) { close(fd); return (int)r; }
            nfd = (int)sc(SYS_openat2, base, (long)prefix, (long)&how, sizeof(how), 0);
        }
        close(fd);
        if (nfd < 0) return nfd; /* EXDEV or ELOOP: it leads out of the root (the launcher words it) */
        fd = nfd;
    }
    return fd;
}

/* Attach a detached copy of `src` (a host path; NULL: the target itself) on `tfd`, with `attrs` set on every
 * mount of the copy before anyone can see it. */
static int bind_on(const char *src, int tfd, uint64_t attrs) {
    int tree;
    if (src)
        tree = (int)sc(SYS_open_tree, AT_FDCWD, (long)src, T_OPEN_TREE_CLONE | O_CLOEXEC | T_AT_RECURSIVE, 0, 0);
    else
        tree = (int)sc(SYS_open_tree, tfd, (long)"", T_OPEN_TREE_CLONE | O_CLOEXEC | T_AT_RECURSIVE | AT_EMPTY_PATH,
                       0, 0);
    if (tree < 0) return tree;
    long r = 0;
    if (attrs) {
        struct t_mount_attr a = { attrs, 0, 0, 0 };
        r = sc(SYS_mount_setattr, tree, (long)"", AT_EMPTY_PATH | T_AT_RECURSIVE, (long)&a, sizeof(a));
    }
    if (r == 0)
        r = sc(SYS_move_mount, tree, (long)"", tfd, (long)"", T_MOVE_MOUNT_F_EMPTY_PATH | T_MOVE_MOUNT_T_EMPTY_PATH);
    close(tree);
    return (int)r;
}

/* Remount the bind mount under `fd` nosuid,nodev (plus `extra`), keeping its other flags. */
static int remount_keep(int fd, unsigned long extra) {
    struct statfs st;
    char path[48];
    if (fstatfs(fd, &st) < 0) return -errno;
    unsigned long flags = MS_BIND | MS_REMOUNT | extra;
    if (st.f_flags & ST_NOEXEC) flags |= MS_NOEXEC;
    if (st.f_flags & ST_RDONLY) flags |= MS_RDONLY;
    if (st.f_flags & ST_NOATIME) flags |= MS_NOATIME;
    if (st.f_flags & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (st.f_flags & ST_RELATIME) flags |= MS_RELATIME;
    fd_path(path, fd);
    return mount(NULL, path, NULL, flags, NULL) < 0 ? -errno : 0;
}

static int loopback_up(void) {
    int s = (int)sc(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0, 0, 0);
    if (s < 0) return s;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, "lo", 3);
    long r = sc(SYS_ioctl, s, SIOCGIFFLAGS, (long)&ifr, 0, 0);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP;
        r = sc(SYS_ioctl, s, SIOCSIFFLAGS, (long)&ifr, 0, 0);
    }
    close(s);
    return (int)r;
}

static int do_op(child_t *c, const op_t *op, const char **where) {
    const plan_t *pl = c->pl;
    char path[48];
    long r = 0;
    int fd;
    *where = NULL;
    switch (op->code) {
    case OP_SETSID:
        r = sc(SYS_setsid, 0, 0, 0, 0, 0);
        return r < 0 ? (int)r : 0;
    case OP_WRITE: {
        *where = op->s[0];
        fd = (int)sc(SYS_openat, AT_FDCWD, (long)op->s[0], O_WRONLY | O_CLOEXEC, 0, 0);
        if (fd < 0) return fd;
        size_t n = c_strlen(op->s[1]);
        r = sc(SYS_write, fd, (long)op->s[1], (long)n, 0, 0);
        close(fd);
        return r < 0 ? (int)r : 0;
    }
    case OP_SETNS_FD:
        return (int)sc(SYS_setns, op->i[0], op->i[1], 0, 0, 0);
    case OP_SETNS_PATH:
        *where = op->s[0];
        fd = (int)sc(SYS_openat, AT_FDCWD, (long)op->s[0], O_RDONLY | O_CLOEXEC, 0, 0);
        if (fd < 0) return fd;
        r = sc(SYS_setns, fd, op->i[0], 0, 0, 0);
        close(fd);
        return (int)r;
    case OP_ENTER_ROOT:
        r = sc(SYS_fchdir, op->i[0], 0, 0, 0, 0);
        return r < 0 ? (int)r : (int)sc(SYS_chroot, (long)".", 0, 0, 0, 0);
    case OP_LOOPBACK_UP:
        return loopback_up();
    case OP_SETHOSTNAME:
        return (int)sc(SYS_sethostname, (long)op->s[0], (long)c_strlen(op->s[0]), 0, 0, 0);
    case OP_MOUNT:
        *where = op->s[1];
        return mount(op->s[0], op->s[1], op->s[2], (unsigned long)op->i[0], op->s[3]) < 0 ? -errno : 0;
    case OP_OPEN_ROOT:
        *where = op->s[0];
        fd = (int)sc(SYS_openat, AT_FDCWD, (long)op->s[0], O_PATH | O_DIRECTORY | O_CLOEXEC, 0, 0);
        if (fd < 0) return fd;
        c->root_fd = fd;
        return 0;
    case OP_REMOUNT_ROOT_KEEP:
        return remount_keep(c->root_fd, (unsigned long)op->i[0]);
    case OP_BIND_BENEATH:  /* s0 source (NULL: the target), s1 target beneath the root, i0 mount attrs */
    case OP_MOUNT_BENEATH: /* s0 source, s1 target, s2 fstype, s3 data, i0 MS_ flags, i1 mkdir mode */
        *where = op->s[1];
        fd = open_beneath(c->root_fd, op->s[1], !(op->flags & F_NO_CREATE),
                          op->code == OP_MOUNT_BENEATH || (op->flags & F_WANT_DIR),
                          op->code == OP_MOUNT_BENEATH ? (mode_t)op->i[1] : 0755);
        if (fd < 0) return fd;
        if (op->code == OP_BIND_BENEATH) {
            r = bind_on(op->s[0], fd, (uint64_t)op->i[0]);
        } else {
            fd_path(path, fd);
            r = mount(op->s[0], path, op->s[2], (unsigned long)op->i[0], op->s[3]) < 0 ? -errno : 0;
        }
        close(fd);
        return (int)r;
    case OP_SYMLINK_BENEATH: { /* s0 link text, s1 dir beneath the root, s2 name */
        *where = op->s[1];
        fd = open_beneath(c->root_fd, op->s[1], 0, 1, 0);
        if (fd < 0) return fd;
        r = sc(SYS_symlinkat, (long)op->s[0], fd, (long)op->s[2], 0, 0);
        close(fd);
        return (int)r;
    }
    case OP_PIVOT_ROOT:
        /* pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the new root. */
        if ((r = sc(SYS_fchdir, c->root_fd, 0, 0, 0, 0)) < 0) return (int)r;
        close(c->root_fd);
        c->root_fd = -1;
        if ((r = sc(SYS_pivot_root, (long)".", (long)".", 0, 0, 0)) < 0) return (int)r;
        if (umount2(".", MNT_DETACH) < 0) return -errno;
        return (int)sc(SYS_chdir, (long)"/", 0, 0, 0, 0);
    case OP_MOVE_ROOT: /* no_pivot_root: move the root mount onto / and chroot into it */
        if ((r = sc(SYS_fchdir, c->root_fd, 0, 0, 0, 0)) < 0) return (int)r;
        close(c->root_fd);
        c->root_fd = -1;
        *where = op->s[0];
        if (mount(op->s[0], "/", NULL, MS_MOVE, NULL) < 0) return -errno;
        if ((r = sc(SYS_chroot, (long)".", 0, 0, 0, 0)) < 0) return (int)r;
        return (int)sc(SYS_chdir, (long)"/", 0, 0, 0, 0);
    case OP_UMASK:
        umask((mode_t)op->i[0]);
        return 0;
    case OP_STDIO:
        for (int target = 0; target < 3; target++) {
            int src = (int)op->i[target];
            if (src != target) r = sc(SYS_dup3, src, target, 0, 0, 0);
            else r = sc(SYS_fcntl, src, F_SETFD, 0, 0, 0);
            if (r < 0) return (int)r;
        }
        if (op->flags & F_CTTY) return (int)sc(SYS_ioctl, 0, TIOCSCTTY, 0, 0, 0);
        return 0;
    case OP_NO_NEW_PRIVS:
        return (int)sc(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    case OP_LL_CREATE: { /* i0 handled fs rights, i1 scoped, i2 attr size */
        struct t_ruleset_attr a = { (uint64_t)op->i[0], 0, (uint64_t)op->i[1] };
        fd = (int)sc(SYS_landlock_create_ruleset, (long)&a, op->i[2], 0, 0, 0);
        if (fd < 0) return fd;
        sc(SYS_fcntl, fd, F_SETFD, FD_CLOEXEC, 0, 0);
        c->ll_fd = fd;
        return 0;
    }
    case OP_LL_RULE: { /* s0 path, i0 rights on a directory, i1 rights on anything else */
        struct stat st;
        *where = op->s[0];
        fd = (int)sc(SYS_openat, AT_FDCWD, (long)op->s[0], O_PATH | O_CLOEXEC, 0, 0);
        if (fd < 0) return (op->flags & F_ENOENT_OK) && (fd == -ENOENT || fd == -ENOTDIR) ? 0 : fd;
        if (fstat(fd, &st) < 0) { r = -errno; close(fd); return (int)r; }
        struct t_path_beneath pb = { (uint64_t)(S_ISDIR(st.st_mode) ? op->i[0] : op->i[1]), fd };
        if (pb.allowed_access)
            r = sc(SYS_landlock_add_rule, c->ll_fd, LANDLOCK_RULE_PATH_BENEATH, (long)&pb, 0, 0);
        close(fd);
        /* lenient rules skip what the kernel refuses to name (EBADFD: /dev/stdout of a task writing to a pipe) */
        if (r == -EBADFD && (op->flags & F_ENOENT_OK)) return 0;
        return (int)r;
    }
    case OP_LL_RESTRICT:
        r = sc(SYS_landlock_restrict_self, c->ll_fd, 0, 0, 0, 0);
        close(c->ll_fd);
        c->ll_fd = -1;
        return (int)r;
    case OP_CAPBSET: /* i0 capabilities to keep, i1 last capability of this kernel */
        for (int cap = 0; cap <= op->i[1]; cap++) {
            if ((op->i[0] >> cap) & 1) continue;
            if (sc(SYS_prctl, PR_CAPBSET_READ, cap, 0, 0, 0) == 1 &&
                (r = sc(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)) < 0)
                return (int)r;
        }
        return 0;
    case OP_KEEPCAPS:
        return (int)sc(SYS_prctl, PR_SET_KEEPCAPS, op->i[0], 0, 0, 0);
    case OP_SETGROUPS:
        return (int)sc(NR_setgroups, pl->ngroups, (long)pl->groups, 0, 0, 0);
    case OP_SETRESGID:
        return (int)sc(NR_setresgid, op->i[0], op->i[0], op->i[0], 0, 0);
    case OP_SETRESUID:
        return (int)sc(NR_setresuid, op->i[0], op->i[0], op->i[0], 0, 0);
    case OP_CAPSET: { /* i0 effective = permitted, i1 inheritable */
        struct t_cap_header h = { T_CAP_V3, 0 };
        struct t_cap_data d[2];
        for (int k = 0; k < 2; k++) {
            d[k].effective = d[k].permitted = (uint32_t)((unsigned long long)op->i[0] >> (32 * k));
            d[k].inheritable = (uint32_t)((unsigned long long)op->i[1] >> (32 * k));
        }
        return (int)sc(SYS_capset, (long)&h, (long)d, 0, 0, 0);
    }
    case OP_AMBIENT: /* i0 capabilities to raise, i1 last capability */
        if ((r = sc(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)) < 0) return (int)r;
        for (int cap = 0; cap <= op->i[1]; cap++)
            if (((op->i[0] >> cap) & 1) && (r = sc(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)) < 0)
                return (int)r;
        return 0;
    case OP_CHDIR:
        *where = op->s[0];
        return (int)sc(SYS_chdir, (long)op->s[0], 0, 0, 0, 0);
    case OP_CLOSE_FDS: /* everything from 3 up but the error pipe */
        if (pl->errpipe > 3 && (r = sc(SYS_close_range, 3, pl->errpipe - 1, 0, 0, 0)) < 0) return (int)r;
        return (int)sc(SYS_close_range, pl->errpipe + 1, ~0U, 0, 0, 0);
    }
    return -EINVAL;
}

static int child_main(void *arg) {
    const plan_t *pl = arg;
    child_t c = { pl, -1, -1 };
    /* First of all, before any descriptor is made or moved: stop sharing the launcher's descriptor table. The
     * kernel copies only the descriptors below fd_limit (where the launcher put everything this child needs),
     * not the thousands of log pipes and files a launcher with many tasks holds, which a plain clone copied and
     * close_range closed again, one by one, for every start. A kernel without CLOSE_RANGE_UNSHARE (< 5.9) gets
     * the whole copy, as before. */
    if (pl->fd_limit > 0 && sc(SYS_close_range, pl->fd_limit, ~0U, CLOSE_RANGE_UNSHARE, 0, 0) < 0) {
        long r = sc(SYS_unshare, CLONE_FILES, 0, 0, 0, 0);
        if (r < 0) fail(pl, "unshare descriptors", (int)-r, NULL);
    }
    /* The launcher is suspended until this child execs or exits, and anyone allowed to signal it (the task it is
     * joining, once the uid changed) could SIGSTOP it there: a timer SIGKILLs it after the deadline whatever its
     * state, and execve deletes the timer. It also bounds a setup stuck on a hung mount source. */
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGKILL;
    int timer;
    struct itimerspec deadline = { {0, 0}, {pl->deadline_s, 0} };
    if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &sev, &timer) < 0 ||
        syscall(SYS_timer_settime, timer, 0, &deadline, NULL) < 0)
        fail(pl, "setup deadline", errno, NULL);
    /* Every signal arrived blocked (see spawn). Back to defaults before anything can run a handler: the
     * launcher's handlers (Python's, in the Python launcher) would write to the memory this child shares with it. Ignored
     * signals too: a task starts with every disposition at its default. */
    static const char zero[64];
    for (int sig = 1; sig < 65; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, zero, NULL, 8);
    for (long k = 0; k < pl->nops; k++) {
        const op_t *op = &pl->ops[k];
        if (op->flags & pl->skip_flags) continue;
        const char *where;
        int r = do_op(&c, op, &where);
        if (r == 0) {
            if (op->flags & F_SKIP_NEXT_ON_SUCCESS) k++;
            continue;
        }
        if ((op->flags & F_OPTIONAL) || (op->flags & F_SKIP_NEXT_ON_SUCCESS)) continue;
        if ((op->flags & F_ENOENT_OK) && r == -ENOENT) continue;
        fail(pl, op->step, -r, where);
    }
    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8);
    execve(pl->path, pl->argv, pl->envp);
    fail(pl, "execve", errno, pl->path);
}

/* ---- the parent: clone ------------------------------------------------------------------------------- */

static char child_stack[256 * 1024] __attribute__((aligned(64)));

/* Clone the child for `pl` (CLONE_VM | CLONE_VFORK plus the namespace flags in clone_flags) and return once it has
 * exec'd or failed: its pid, or -errno when no child was made. With cgroup_fd >= 0 the child is born in that cgroup
 * v2 directory (clone3 CLONE_INTO_CGROUP); -ENOSYS where that is not built. The caller must be single-threaded. */
static long spawn_clone(plan_t *pl, unsigned long clone_flags, int cgroup_fd) {
    /* Raw, so that glibc's own signals 32 and 33 are blocked too: nothing may run a handler on the memory the
     * child shares until it has reset the dispositions. */
    uint64_t all = ~0ULL, old = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, 8);
    long pid;
    unsigned long files = pl->fd_limit > 0 ? CLONE_FILES : 0;
    if (cgroup_fd >= 0) {
#if HAVE_CLONE3_VM
        struct t_clone_args ca;
        memset(&ca, 0, sizeof(ca));
        ca.flags = CLONE_VM | CLONE_VFORK | T_CLONE_INTO_CGROUP | clone_flags | files;
        ca.exit_signal = SIGCHLD;
        ca.stack = (uint64_t)(uintptr_t)child_stack;
        ca.stack_size = sizeof(child_stack);
        ca.cgroup = (uint64_t)cgroup_fd;
        pid = clone3_vm(&ca, child_main, pl);
#else
        pid = -ENOSYS;
#endif
    } else {
        pid = clone(child_main, child_stack + sizeof(child_stack), (int)(CLONE_VM | CLONE_VFORK | SIGCHLD | clone_flags | files),
                    pl);
        if (pid < 0) pid = -errno;
    }
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8);
    return pid;
}

#endif
