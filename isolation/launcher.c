/* tasksd-launcher: the launcher in C. Same job as isolation/launcher.py (read its module doc first): one
 * long-lived, single-threaded process that clones every task, is their parent and child subreaper, keeps their exit
 * statuses while the daemon is down (in memory and in run/exits/ until acked), and pumps their stdout/stderr pipes
 * into rotating log files. It outlives daemon restarts.
 *
 * Why a second implementation: the Python launcher is an interpreter that holds ~10 MB of PSS to run an event loop
 * (issue #5: tasksd's memory must not exceed supervisord's); this one holds well under 1 MB. What it does not do,
 * the daemon does for it: the daemon compiles each task's child plan (isolation/childplan.py) with this launcher's
 * descriptor slots, so no LaunchSpec is parsed here, and the daemon makes task cgroups itself. The Python launcher
 * stays as the fallback where this is not built (no C compiler), selected the way isolation._spawn is.
 *
 * Protocol: JSON lines on a unix stream socket, as the Python launcher's, with the spawn and exec requests in their
 * compiled form (see isolation/childplan.py, c_launcher_request). Ops: ping, list, unsubscribe, ack, signal,
 * shutdown, spawn, exec, arm, disarm. Descriptors for exec come as SCM_RIGHTS on the request's message. Strings are bytes here:
 * the daemon sends file names as os.fsdecode makes them, so "\udcXX" stands for the byte XX, and the same escape
 * goes back out for bytes that are not UTF-8.
 */
#define _GNU_SOURCE
#include "spawn_child.h"

#include <dirent.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>

#define PROTOCOL_VERSION 1
#define MAX_LINE (4 * 1024 * 1024)
#define MAX_OPEN_LOG_FILES 256      /* as the Python launcher: quiet tasks' files are closed, reopened at output */
#define PUMP_READS_PER_WAKEUP 16    /* x 64 KiB per pipe per turn of the loop: one flooding task cannot starve */
#define SETUP_DEADLINE_S 5
#define STR(x) #x
#define XSTR(x) STR(x) /* a macro's value as a string literal */
#define MAX_PASSED_FDS 16
#define MAX_KEPT_REQUEST (1 << 20) /* a spawn request kept for respawns (see record_exit) */

/* Descriptor slots (see LowSlots in launcher.py): fds 3..14 always exist, on /dev/null between spawns. What one
 * child needs is dup'ed into them before the clone, and the child keeps only the descriptors below FD_LIMIT
 * (close_range CLOSE_RANGE_UNSHARE), not the thousands of log pipes and files this process holds. The daemon
 * compiles plans with these numbers (ping tells it). */
enum { SLOT_STDIN = 3, SLOT_STDOUT, SLOT_STDERR, SLOT_ERRPIPE, SLOT_IPC, SLOT_UTS, SLOT_NET, SLOT_MNT, SLOT_ROOT };
#define SLOT_FIRST 3
#define FD_LIMIT 15

/* ---- small utilities ---------------------------------------------------------------------------------------- */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...) {
    /* stderr is a file in the state dir, which may be full: never more than a best effort */
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (n > (int)sizeof(buf) - 2) n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    ssize_t w = write(2, buf, (size_t)n);
    (void)w;
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) { logmsg("launcher: out of memory"); _exit(70); }
    return q;
}
static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(xrealloc(NULL, n), s, n);
}

typedef struct { char *p; size_t len, cap; } sbuf;

static void sb_grow(sbuf *b, size_t more) {
    if (b->len + more + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + more + 1) cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
}
static void sb_add(sbuf *b, const char *s, size_t n) {
    sb_grow(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_s(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_i(sbuf *b, long long v) {
    char t[32];
    int n = snprintf(t, sizeof(t), "%lld", v);
    sb_add(b, t, (size_t)n);
}
static void sb_free(sbuf *b) { free(b->p); b->p = NULL; b->len = b->cap = 0; }

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 when it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; }
    else return 0;
    if (n < k) return 0;
    for (size_t j = 1; j < k; j++) {
        if ((s[j] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[j] & 0x3F);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return k;
}

/* A JSON string for the bytes s[0..n): UTF-8 as is, any other byte >= 0x80 as \udcXX (what Python's
 * surrogateescape makes of it, so os.fsencode gives the byte back). */
static void sb_jstr(sbuf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    sb_grow(b, n + 2);
    b->p[b->len++] = '"';
    const unsigned char *u = (const unsigned char *)s;
    for (size_t k = 0; k < n;) {
        unsigned c = u[k];
        char t[8];
        if (c == '"' || c == '\\') { t[0] = '\\'; t[1] = (char)c; sb_add(b, t, 2); k++; }
        else if (c < 0x20) {
            memcpy(t, "\\u00", 4); t[4] = hex[c >> 4]; t[5] = hex[c & 15];
            sb_add(b, t, 6); k++;
        } else if (c < 0x80) { sb_add(b, (const char *)u + k, 1); k++; }
        else {
            size_t m = utf8_len(u + k, n - k);
            if (m) { sb_add(b, (const char *)u + k, m); k += m; }
            else {
                memcpy(t, "\\udc", 4); t[4] = hex[c >> 4]; t[5] = hex[c & 15];
                sb_add(b, t, 6); k++;
            }
        }
    }
    sb_add(b, "\"", 1);
}
static void sb_jcstr(sbuf *b, const char *s) { sb_jstr(b, s, strlen(s)); }

/* ---- a small JSON reader: a tree over the message's own buffer -------------------------------------------------
 * Strings are decoded in place (an escape is never shorter than what it stands for) and NUL-terminated; a string
 * holding a NUL is refused, as execve and every path would cut it there. Numbers are integers or, for
 * finished_at in exit records, read over. Nesting is bounded. */

enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };
typedef struct jv {
    int type;
    long long num;
    char *str;            /* J_STR: decoded, NUL-terminated */
    size_t len;           /* J_STR: bytes; J_ARR/J_OBJ: children (an object's are key, value, key, value...) */
    struct jv *kid;       /* first child */
    struct jv *next;      /* next sibling */
    const char *raw;      /* where the value's text begins (for echoing an id) */
    size_t rawlen;
} jv;

typedef struct {
    char *p, *end;
    jv *nodes;
    size_t used, cap;
    int latin1; /* \u00XX is the byte XX (the C child's reports), not the character U+00XX */
    const char *err;
} jparser;

static jv *jnew(jparser *P) {
    if (P->used == P->cap) return NULL;
    jv *v = &P->nodes[P->used++];
    memset(v, 0, sizeof(*v));
    return v;
}

static void jws(jparser *P) {
    while (P->p < P->end && (*P->p == ' ' || *P->p == '\t' || *P->p == '\n' || *P->p == '\r')) P->p++;
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

static char *put_utf8(char *w, unsigned cp) {
    if (cp < 0x80) *w++ = (char)cp;
    else if (cp < 0x800) { *w++ = (char)(0xC0 | (cp >> 6)); *w++ = (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
        *w++ = (char)(0xE0 | (cp >> 12)); *w++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *w++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *w++ = (char)(0xF0 | (cp >> 18)); *w++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *w++ = (char)(0x80 | ((cp >> 6) & 0x3F)); *w++ = (char)(0x80 | (cp & 0x3F));
    }
    return w;
}

static int jstring(jparser *P, jv *v) {
    char *r = ++P->p, *w = r;
    v->type = J_STR;
    v->str = w;
    while (r < P->end && *r != '"') {
        unsigned char c = (unsigned char)*r;
        if (c < 0x20) { P->err = "control character in string"; return -1; }
        if (c != '\\') { *w++ = *r++; continue; }
        if (r + 1 >= P->end) { P->err = "unterminated string"; return -1; }
        char e = r[1];
        r += 2;
        switch (e) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '/': *w++ = '/'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (r + 4 > P->end || hex4(r, &cp) < 0) { P->err = "bad \\u escape"; return -1; }
            r += 4;
            if (cp == 0) { P->err = "NUL in string"; return -1; }
            if (P->latin1 && cp < 0x100) { *w++ = (char)cp; break; }
            if (cp >= 0xDC80 && cp <= 0xDCFF) { *w++ = (char)(cp - 0xDC00); break; } /* surrogateescape: a byte */
            if (cp >= 0xD800 && cp <= 0xDBFF && r + 6 <= P->end && r[0] == '\\' && r[1] == 'u' &&
                hex4(r + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                r += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                P->err = "lone surrogate in string";
                return -1;
            }
            w = put_utf8(w, cp);
            break;
        }
        default: P->err = "bad escape"; return -1;
        }
    }
    if (r >= P->end) { P->err = "unterminated string"; return -1; }
    v->len = (size_t)(w - v->str);
    *w = 0; /* w <= r: the closing quote or a byte before it */
    P->p = r + 1;
    return 0;
}

static int jvalue(jparser *P, jv *v, int depth) {
    jws(P);
    if (P->p >= P->end) { P->err = "truncated"; return -1; }
    if (depth > 16) { P->err = "nested too deep"; return -1; }
    v->raw = P->p;
    char c = *P->p;
    if (c == '"') {
        if (jstring(P, v) < 0) return -1;
    } else if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        v->type = c == '{' ? J_OBJ : J_ARR;
        P->p++;
        jws(P);
        jv **tail = &v->kid;
        if (P->p < P->end && *P->p == close) { P->p++; }
        else for (;;) {
            if (v->type == J_OBJ) {
                jws(P);
                jv *k = jnew(P);
                if (!k) { P->err = "too many values"; return -1; }
                if (P->p >= P->end || *P->p != '"' || jstring(P, k) < 0) {
                    if (!P->err) P->err = "object key expected";
                    return -1;
                }
                *tail = k; tail = &k->next;
                jws(P);
                if (P->p >= P->end || *P->p != ':') { P->err = "':' expected"; return -1; }
                P->p++;
            }
            jv *x = jnew(P);
            if (!x) { P->err = "too many values"; return -1; }
            if (jvalue(P, x, depth + 1) < 0) return -1;
            *tail = x; tail = &x->next;
            v->len++;
            jws(P);
            if (P->p < P->end && *P->p == ',') { P->p++; continue; }
            if (P->p < P->end && *P->p == close) { P->p++; break; }
            P->err = "',' or end expected";
            return -1;
        }
    } else if (c == 't' && P->end - P->p >= 4 && !memcmp(P->p, "true", 4)) {
        v->type = J_BOOL; v->num = 1; P->p += 4;
    } else if (c == 'f' && P->end - P->p >= 5 && !memcmp(P->p, "false", 5)) {
        v->type = J_BOOL; P->p += 5;
    } else if (c == 'n' && P->end - P->p >= 4 && !memcmp(P->p, "null", 4)) {
        v->type = J_NULL; P->p += 4;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        v->type = J_NUM;
        char *q = P->p;
        int neg = *q == '-';
        if (neg) q++;
        unsigned long long u = 0;
        int digits = 0;
        while (q < P->end && *q >= '0' && *q <= '9') {
            if (u > (~0ULL >> 1) / 10) { P->err = "number out of range"; return -1; }
            u = u * 10 + (unsigned)(*q++ - '0');
            digits++;
        }
        if (!digits || u > (unsigned long long)(~0ULL >> 1) || (digits > 1 && P->p[neg] == '0')) {
            P->err = "bad number";
            return -1;
        }
        /* a fraction or exponent (finished_at): read over, the value is its integer part */
        if (q < P->end && *q == '.') {
            char *f = ++q;
            while (q < P->end && *q >= '0' && *q <= '9') q++;
            if (q == f) { P->err = "bad number"; return -1; }
        }
        if (q < P->end && (*q == 'e' || *q == 'E')) {
            q++;
            if (q < P->end && (*q == '+' || *q == '-')) q++;
            char *f = q;
            while (q < P->end && *q >= '0' && *q <= '9') q++;
            if (q == f) { P->err = "bad number"; return -1; }
        }
        v->num = neg ? -(long long)u : (long long)u;
        P->p = q;
    } else {
        P->err = "unexpected character";
        return -1;
    }
    v->rawlen = (size_t)(P->p - v->raw);
    return 0;
}

/* Parse buf[0..n) (modified in place). Returns the root or NULL (P->err says why). */
static jv *jparse(jparser *P, char *buf, size_t n, int latin1) {
    P->p = buf;
    P->end = buf + n;
    P->used = 0;
    P->latin1 = latin1;
    P->err = NULL;
    size_t want = n / 2 + 8; /* every value takes at least two bytes of text, "1," */
    if (want > P->cap) {
        P->nodes = xrealloc(P->nodes, want * sizeof(jv));
        P->cap = want;
    }
    jv *root = jnew(P);
    if (jvalue(P, root, 0) < 0) return NULL;
    jws(P);
    if (P->p != P->end) { P->err = "trailing data"; return NULL; }
    return root;
}

static jv *jget(const jv *obj, const char *key) {
    if (!obj || obj->type != J_OBJ) return NULL;
    for (jv *k = obj->kid; k && k->next; k = k->next->next)
        if (!strcmp(k->str, key)) return k->next;
    return NULL;
}
static const char *jgets(const jv *obj, const char *key) {
    jv *v = jget(obj, key);
    return v && v->type == J_STR ? v->str : NULL;
}
static int jgeti(const jv *obj, const char *key, long long *out) {
    jv *v = jget(obj, key);
    if (!v || v->type != J_NUM) return -1;
    *out = v->num;
    return 0;
}

/* ---- rotating log files (a port of isolation.logs.RotatingLog: read its module doc for the rules) ------------ */

typedef struct {
    char *dir, *base;
    int max_files;
    long long max_size;
    int fd;             /* -1: released or not open */
    long long size;
    int line_open;      /* the active file ends inside a line */
    long long dropped;
    int last_errno;
    unsigned long long used; /* when it was last written (a counter), for closing the least recent */
} rlog;

static int open_dir(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* isolation.safefile.open_regular: `name` in `dfd` only if it is a regular file (never a symlink, FIFO, device). */
static int open_regular(int dfd, const char *name, int flags, mode_t mode) {
    flags |= O_CLOEXEC | O_NOFOLLOW | O_NOCTTY;
    if (flags & O_CREAT) {
        int fd = openat(dfd, name, flags | O_EXCL, mode);
        if (fd >= 0) return fd;
        if (errno != EEXIST) return -errno;
    }
    for (int tries = 0; tries < 8; tries++) {
        int pfd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (pfd < 0) {
            if (errno != ENOENT || !(flags & O_CREAT)) return -errno;
            int fd = openat(dfd, name, flags | O_EXCL, mode);
            if (fd >= 0) return fd;
            if (errno != EEXIST) return -errno;
            continue; /* made meanwhile: look at what it is */
        }
        struct stat st;
        int r;
        if (fstat(pfd, &st) < 0) r = -errno;
        else if (S_ISLNK(st.st_mode)) r = -ELOOP;
        else if (!S_ISREG(st.st_mode)) r = -EINVAL;
        else {
            char p[40];
            snprintf(p, sizeof(p), "/proc/self/fd/%d", pfd);
            r = open(p, flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW));
            if (r < 0) r = -errno;
        }
        close(pfd);
        return r;
    }
    return -ELOOP;
}

/* Indexes of the rotated files `<base>.N` present in `dfd`, ascending; *n is set. Caller frees. */
static int *rotated_indexes(int dfd, const char *base, size_t *n) {
    *n = 0;
    int dup = fcntl(dfd, F_DUPFD_CLOEXEC, FD_LIMIT);
    if (dup < 0) return NULL;
    DIR *d = fdopendir(dup);
    if (!d) { close(dup); return NULL; }
    rewinddir(d);
    size_t bl = strlen(base), cap = 0;
    int *out = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        if (strncmp(nm, base, bl) || nm[bl] != '.') continue;
        const char *suf = nm + bl + 1;
        if (!*suf || *suf == '0' || strlen(suf) > 9) continue;
        int ok = 1;
        for (const char *q = suf; *q; q++) if (*q < '0' || *q > '9') ok = 0;
        if (!ok) continue;
        if (*n == cap) { cap = cap ? cap * 2 : 8; out = xrealloc(out, cap * sizeof(int)); }
        out[(*n)++] = atoi(suf);
    }
    closedir(d);
    for (size_t a = 1; a < *n; a++) /* insertion sort: a handful of files */
        for (size_t b = a; b > 0 && out[b - 1] > out[b]; b--) { int t = out[b]; out[b] = out[b - 1]; out[b - 1] = t; }
    return out;
}

static void rotated_name(char *buf, size_t cap, const char *base, int k) {
    if (k == 0) snprintf(buf, cap, "%s", base);
    else snprintf(buf, cap, "%s.%d", base, k);
}

static void rlog_close_fd(rlog *l) {
    if (l->fd >= 0) close(l->fd);
    l->fd = -1;
}

static int rlog_open(rlog *l, int prune_beyond) {
    int dfd = open_dir(l->dir);
    if (dfd < 0) { l->last_errno = -dfd; l->fd = -1; return 0; }
    if (prune_beyond >= 0) {
        size_t n;
        int *idx = rotated_indexes(dfd, l->base, &n);
        for (size_t k = 0; k < n; k++)
            if (idx[k] > prune_beyond) {
                char nm[512];
                rotated_name(nm, sizeof(nm), l->base, idx[k]);
                unlinkat(dfd, nm, 0);
            }
        free(idx);
    }
    int fd = open_regular(dfd, l->base, O_RDWR | O_APPEND | O_CREAT, 0640);
    close(dfd);
    if (fd < 0) { l->last_errno = -fd; l->fd = -1; return 0; }
    struct stat st;
    long long size = 0;
    char last = '\n';
    if (fstat(fd, &st) == 0) {
        size = st.st_size;
        /* continue a file left by an earlier launcher: its size counts, and so does an unfinished line */
        if (size > 0 && pread(fd, &last, 1, size - 1) != 1) last = '\n';
    } else {
        l->last_errno = errno;
    }
    l->fd = fd;
    l->size = size;
    l->line_open = last != '\n';
    return 1;
}

static rlog *rlog_new(const char *dir, const char *base, long long max_files, long long max_size, const char **err) {
    if (max_files < 1 || max_files > 100000) { *err = "max_files out of range"; return NULL; }
    if (max_size < 1 || max_size > (1LL << 50)) { *err = "max_file_size out of range"; return NULL; }
    if (!*base || strchr(base, '/') || !strcmp(base, ".") || !strcmp(base, "..") || strlen(base) > 255) {
        *err = "log base name must be a plain file name";
        return NULL;
    }
    rlog *l = xrealloc(NULL, sizeof(rlog));
    memset(l, 0, sizeof(*l));
    l->dir = xstrdup(dir);
    l->base = xstrdup(base);
    l->max_files = (int)max_files;
    l->max_size = max_size;
    l->fd = -1;
    rlog_open(l, l->max_files - 1);
    return l;
}

static void rlog_free(rlog *l) {
    if (!l) return;
    rlog_close_fd(l);
    free(l->dir);
    free(l->base);
    free(l);
}

static int rlog_ensure_open(rlog *l) {
    if (l->fd >= 0) {
        struct stat st;
        if (fstat(l->fd, &st) == 0 && st.st_nlink > 0) return 1;
        rlog_close_fd(l); /* deleted behind our back (an operator's rm): a fresh file */
    }
    return rlog_open(l, -1);
}

static void rlog_drop(rlog *l, long long n, int err) {
    l->dropped += n;
    l->last_errno = err;
}

/* Write buf[start..end) completely, or drop what could not be written. 1 if all was written. */
static int rlog_put(rlog *l, const char *buf, size_t start, size_t end) {
    size_t pos = start;
    while (pos < end) {
        ssize_t w = write(l->fd, buf + pos, end - pos);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rlog_drop(l, (long long)(end - pos), w < 0 ? errno : ENOSPC);
            break;
        }
        pos += (size_t)w;
    }
    if (pos > start) {
        l->size += (long long)(pos - start);
        l->line_open = buf[pos - 1] != '\n';
    }
    return pos == end;
}

static int rlog_rotate(rlog *l) {
    int keep = l->max_files - 1;
    int d = open_dir(l->dir);
    if (d < 0) { l->last_errno = -d; return 0; }
    int ok = 1;
    if (keep == 0) {
        if (unlinkat(d, l->base, 0) < 0 && errno != ENOENT) { l->last_errno = errno; ok = 0; }
    } else {
        size_t n;
        int *idx = rotated_indexes(d, l->base, &n);
        for (size_t k = n; k-- > 0 && ok;)
            if (idx[k] < keep) {
                char a[512], b[512];
                rotated_name(a, sizeof(a), l->base, idx[k]);
                rotated_name(b, sizeof(b), l->base, idx[k] + 1);
                /* a file gone meanwhile is not an error; any other failure stops the rotation, which would
                 * otherwise rename the active file over a rotated one that could not move on */
                if (renameat(d, a, d, b) < 0 && errno != ENOENT) { l->last_errno = errno; ok = 0; }
            }
        free(idx);
        char one[512];
        rotated_name(one, sizeof(one), l->base, 1);
        /* the active file removed meanwhile: a fresh one is what we want anyway */
        if (ok && renameat(d, l->base, d, one) < 0 && errno != ENOENT) { l->last_errno = errno; ok = 0; }
    }
    close(d);
    if (!ok) return 0;
    rlog_close_fd(l);
    rlog_open(l, -1);
    return 1;
}

static const char *memrchr_nl(const char *s, size_t from, size_t to) {
    return to > from ? memrchr(s + from, '\n', to - from) : NULL;
}

static void rlog_write(rlog *l, const char *buf, size_t n) {
    if (n == 0) return;
    if (!rlog_ensure_open(l)) { rlog_drop(l, (long long)n, l->last_errno); return; }
    long long limit = l->max_size;
    size_t pos = 0;
    while (pos < n) {
        if (l->fd < 0) { rlog_drop(l, (long long)(n - pos), l->last_errno); return; }
        long long room = limit - l->size;
        size_t rest = n - pos, end;
        if ((long long)rest <= room) {
            end = n;
        } else {
            /* whole lines that still fit go to this file; the first line that does not fit decides below */
            const char *cut = room > 0 ? memrchr_nl(buf, pos, pos + (size_t)room) : NULL;
            if (cut) {
                end = (size_t)(cut - buf) + 1;
            } else if (l->size > 0 && !l->line_open) {
                if (rlog_rotate(l)) continue;
                end = n; /* a failed rotation: the output stays in this file rather than being lost */
            } else {
                /* the line began in this file (or the file is empty): finish it here, up to twice the limit */
                long long cap = 2 * limit - l->size;
                if (cap <= 0) {
                    if (rlog_rotate(l)) continue;
                    end = n;
                } else {
                    size_t span = (long long)rest < cap ? rest : (size_t)cap;
                    const char *nl = memchr(buf + pos, '\n', span);
                    if (nl) end = (size_t)(nl - buf) + 1;
                    else if ((long long)rest <= cap) end = n;
                    else end = pos + (size_t)cap; /* longer than the limit allows: the one place a line is split */
                }
            }
        }
        if (!rlog_put(l, buf, pos, end)) { rlog_drop(l, (long long)(n - end), l->last_errno); return; }
        pos = end;
    }
}

/* ---- state ------------------------------------------------------------------------------------------------- */

typedef struct {
    char *key;
    pid_t pid;
    long long start_time;
    int logs[2]; /* read ends of its pipes still open, -1 when none */
    /* Respawn (see record_exit): its spawn request is kept in run/respawn.dat at kept_off (kept_len bytes, 0: none),
     * and next_key, while set, is the key the daemon stored for the run that replaces this one if it exits. NULL:
     * the daemon decides every restart. */
    long long kept_off;
    size_t kept_len;
    char *next_key;
    int disarmed; /* for good: the daemon is stopping this run (an arm sent before, read after, must not undo it) */
} task_t;

typedef struct {
    char *key;
    char *file; /* its file in run/exits */
    char *rec;  /* the record as a JSON object */
} exit_t;

typedef struct conn {
    int fd;
    sbuf in;
    int fds[64];
    int nfds;
    sbuf out;
    size_t out_off;
    int events;   /* exit events go here (op unsubscribe turns it off) */
    int writing;  /* registered for EPOLLOUT */
    int closed;
    struct conn *next_dead;
} conn_t;

typedef struct {
    rlog *log;   /* NULL: drained to nowhere (a bad log target) */
    int open;    /* in epoll and in use */
} logpipe_t;

enum { K_LISTEN = 1, K_SIGNAL, K_CONN, K_LOG };

static struct {
    char run_dir[3100], exits_dir[3200], kept_path[3200];
    int kept_fd;                  /* run/respawn.dat: the spawn requests kept for respawns, one after the other */
    long long kept_end, kept_dead; /* its length, and how much of it no task refers to any more */
    long long kept_retry;          /* a compaction failed (a full disk): not tried again before this much is dead */
    int ep, srv, sigfd, null_rw, null_ro, own_pidns;
    int running;
    char boot_id[64];
    task_t *tasks;
    size_t ntasks, cap_tasks;
    exit_t *exits;
    size_t nexits, cap_exits;
    conn_t **conns;       /* by fd */
    logpipe_t *pipes;     /* by fd */
    size_t nslots;        /* size of conns and pipes */
    conn_t *dead;
    size_t open_logs;     /* log files with an open descriptor */
    unsigned long long tick;
    int clone_into;       /* clone into the task's v2 cgroup (see launcher.py) */
    int killed_clone_ok;  /* -1: not probed yet */
    long joins_clone, joins_pid;
    jparser jp;
    jparser rjp;          /* a kept spawn request being replayed: L.jp may hold the request being answered */
    sbuf raw;             /* the request line as received, when it asks to be kept for respawns (see handle) */
    long respawns;
    char pumpbuf[65536];
} L;

static void ensure_slots(int fd) {
    if ((size_t)fd < L.nslots) return;
    size_t n = L.nslots ? L.nslots : 256;
    while (n <= (size_t)fd) n *= 2;
    L.conns = xrealloc(L.conns, n * sizeof(conn_t *));
    L.pipes = xrealloc(L.pipes, n * sizeof(logpipe_t));
    memset(L.conns + L.nslots, 0, (n - L.nslots) * sizeof(conn_t *));
    memset(L.pipes + L.nslots, 0, (n - L.nslots) * sizeof(logpipe_t));
    L.nslots = n;
}

static int ep_add(int fd, int kind, unsigned events) {
    struct epoll_event ev = { .events = events, .data.u64 = ((uint64_t)kind << 32) | (uint32_t)fd };
    return epoll_ctl(L.ep, EPOLL_CTL_ADD, fd, &ev);
}

static task_t *task_by_key(const char *key) {
    for (size_t k = 0; k < L.ntasks; k++) if (!strcmp(L.tasks[k].key, key)) return &L.tasks[k];
    return NULL;
}
static task_t *task_by_pid(pid_t pid) {
    for (size_t k = 0; k < L.ntasks; k++) if (L.tasks[k].pid == pid) return &L.tasks[k];
    return NULL;
}
static void kept_drop(size_t len);

static void task_remove(task_t *t) {
    size_t kept = t->kept_len;
    free(t->next_key);
    free(t->key);
    size_t k = (size_t)(t - L.tasks);
    L.tasks[k] = L.tasks[--L.ntasks];
    if (kept) kept_drop(kept); /* after the removal: it may compact, which walks L.tasks */
}

static void safe_key(char *out, size_t cap, const char *key) {
    size_t k = 0;
    for (; key[k] && k + 1 < cap; k++) {
        unsigned char c = (unsigned char)key[k];
        /* non-ASCII bytes are kept (Python's isalnum keeps the letters among them): fewer keys share a file */
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                 c == '.' || c >= 0x80;
        out[k] = ok ? (char)c : '_';
    }
    out[k] = 0;
}

static long long process_start_time(pid_t pid, unsigned long *flags) {
    char p[64], buf[1024];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *q = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    if (!q) return -1;
    q++;
    /* fields after the name: state is field 3; flags field 9; starttime field 22 */
    long long st = -1;
    for (int field = 2; *q && field < 22;) {
        while (*q == ' ') q++;
        field++;
        if (field == 9 && flags) *flags = strtoul(q, NULL, 10);
        if (field == 22) { st = strtoll(q, NULL, 10); break; }
        while (*q && *q != ' ') q++;
    }
    return st;
}

/* ---- connections ------------------------------------------------------------------------------------------- */

static void conn_close(conn_t *c) {
    if (c->closed) return;
    c->closed = 1;
    epoll_ctl(L.ep, EPOLL_CTL_DEL, c->fd, NULL);
    L.conns[c->fd] = NULL;
    for (int k = 0; k < c->nfds; k++) close(c->fds[k]);
    c->nfds = 0;
    close(c->fd);
    c->next_dead = L.dead; /* freed at the end of this turn of the loop: a handler may still hold it */
    L.dead = c;
}

static void conn_flush(conn_t *c) {
    if (c->closed) return;
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) { conn_close(c); return; }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out.len) {
        c->out_off = 0;
        if (c->out.cap > (1 << 20)) sb_free(&c->out); /* a large list reply: not kept for the connection's life */
        c->out.len = 0;
    }
    int want = c->out.len > 0;
    if (want != c->writing) {
        c->writing = want;
        struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0),
                                  .data.u64 = ((uint64_t)K_CONN << 32) | (uint32_t)c->fd };
        epoll_ctl(L.ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void conn_send(conn_t *c, sbuf *msg) {
    if (c->closed) return;
    sb_add(&c->out, msg->p, msg->len);
    sb_add(&c->out, "\n", 1);
    conn_flush(c);
}

static void broadcast(sbuf *msg) {
    for (size_t fd = 0; fd < L.nslots; fd++) {
        conn_t *c = L.conns[fd];
        if (c && c->events) conn_send(c, msg);
    }
}

/* {"id": <the request's id>, "ok": false, "error": msg, "step": step, "errno": err} */
static void reply_error(conn_t *c, const char *id, const char *msg, const char *step, int err) {
    sbuf b = {0};
    sb_s(&b, "{\"id\":");
    sb_s(&b, id);
    sb_s(&b, ",\"ok\":false,\"error\":");
    sb_jcstr(&b, msg);
    if (step) {
        sb_s(&b, ",\"step\":");
        sb_jcstr(&b, step);
        sb_s(&b, ",\"errno\":");
        sb_i(&b, err);
    }
    sb_s(&b, "}");
    conn_send(c, &b);
    sb_free(&b);
}

/* Begins a success reply: the caller adds its fields (each starting with ',') and ends it with reply_end. */
static void reply_begin(sbuf *b, const char *id) {
    sb_s(b, "{\"id\":");
    sb_s(b, id);
    sb_s(b, ",\"ok\":true");
}
static void reply_end(conn_t *c, sbuf *b) {
    sb_s(b, "}");
    conn_send(c, b);
    sb_free(b);
}

/* ---- logs and exits ---------------------------------------------------------------------------------------- */

static void log_used(rlog *l) {
    l->used = ++L.tick;
    if (l->fd < 0) return;
    /* over the limit: close the least recently written file (L.open_logs is kept by pump, log_attach, pipe_close) */
    while (L.open_logs > MAX_OPEN_LOG_FILES) {
        rlog *oldest = NULL;
        for (size_t fd = 0; fd < L.nslots; fd++) {
            rlog *x = L.pipes[fd].open ? L.pipes[fd].log : NULL;
            if (x && x->fd >= 0 && x != l && (!oldest || x->used < oldest->used)) oldest = x;
        }
        if (!oldest) break;
        rlog_close_fd(oldest);
        L.open_logs--;
    }
}

static void pipe_close(int fd) {
    logpipe_t *p = &L.pipes[fd];
    epoll_ctl(L.ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (p->log) {
        if (p->log->fd >= 0) L.open_logs--;
        rlog_free(p->log);
    }
    p->log = NULL;
    p->open = 0;
    for (size_t k = 0; k < L.ntasks; k++)
        for (int j = 0; j < 2; j++)
            if (L.tasks[k].logs[j] == fd) L.tasks[k].logs[j] = -1;
}

/* Read what a task wrote, a bounded amount per wakeup (see launcher.py's _pump). Final: the task exited and the
 * launcher is stopping; whatever is left is read once, then the pipe is closed. */
static void pump(int fd, int final) {
    if ((size_t)fd >= L.nslots || !L.pipes[fd].open) return;
    logpipe_t *p = &L.pipes[fd];
    int k;
    for (k = 0; k < PUMP_READS_PER_WAKEUP; k++) {
        ssize_t n = read(fd, L.pumpbuf, sizeof(L.pumpbuf));
        if (n < 0 && errno == EINTR) { k--; continue; }
        if (n < 0 && errno == EAGAIN) {
            if (final) break;
            return;
        }
        if (n <= 0) break;
        if (p->log) {
            int was_open = p->log->fd >= 0;
            rlog_write(p->log, L.pumpbuf, (size_t)n);
            if (!was_open && p->log->fd >= 0) L.open_logs++;
            else if (was_open && p->log->fd < 0) L.open_logs--;
            log_used(p->log);
        }
    }
    if (k == PUMP_READS_PER_WAKEUP && !final) return;
    pipe_close(fd); /* EOF (every writer closed it), an error, or the final read is done */
}

static void persist_exit(const char *key, const char *rec, char **file_out) {
    char safe[241], path[8192], tmp[8200]; /* a file name has at most 255 bytes; keys are ~180 */
    safe_key(safe, sizeof(safe), key);
    snprintf(path, sizeof(path), "%s/%s.json", L.exits_dir, safe);
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", L.exits_dir, safe);
    *file_out = xstrdup(path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    size_t n = strlen(rec);
    int ok = fd >= 0;
    if (ok) {
        ok = write(fd, rec, n) == (ssize_t)n;
        ok = close(fd) == 0 && ok;
    }
    /* the file survives our own crash without an fsync (the page cache does not die with a process), and a
     * machine crash makes every record moot: after a reboot, recovery reports "the machine rebooted" */
    if (ok && rename(tmp, path) == 0) return;
    int e = errno;
    unlink(tmp);
    /* a full or read-only state dir: the record stays in memory until acked */
    logmsg("launcher: cannot persist exit of %s: %s", key, strerror(e));
}

static exit_t *exit_by_key(const char *key) {
    for (size_t k = 0; k < L.nexits; k++) if (!strcmp(L.exits[k].key, key)) return &L.exits[k];
    return NULL;
}

static void exit_forget(exit_t *x, int unlink_file) {
    if (unlink_file && x->file) unlink(x->file);
    free(x->key);
    free(x->file);
    free(x->rec);
    *x = L.exits[--L.nexits];
}

static void exit_add(const char *key, char *file, char *rec) {
    exit_t *old = exit_by_key(key);
    if (old) {
        if (old->file && (!file || strcmp(old->file, file))) unlink(old->file);
        exit_forget(old, 0);
    }
    if (L.nexits == L.cap_exits) {
        L.cap_exits = L.cap_exits ? L.cap_exits * 2 : 16;
        L.exits = xrealloc(L.exits, L.cap_exits * sizeof(exit_t));
    }
    L.exits[L.nexits++] = (exit_t){ xstrdup(key), file, rec };
}

/* ---- respawns ---------------------------------------------------------------------------------------------
 * A restart the daemon decided ahead: when its restart policy would restart a task at once whatever its exit (delay 0,
 * attempts left), the daemon stores the key of the next run and sends it with the spawn (respawn.next_key). If the
 * task then exits while armed, we start that next run here, before the daemon has even heard of the exit: a restart
 * costs one clone, not a round trip through the daemon (issue #8: restart latency against runit). Each arm is good
 * for one respawn; the daemon re-arms the new run (op arm) once it has counted the restart, and disarms a task
 * (op disarm) before it stops or kills it. The request is kept in a file, not in memory: a few KB per task. */

/* One file, not one per task: on this VM's ext4 a file create after some churn cost a converge of 1000 tasks
 * ~0.8 s in this single thread; an append is a page-cache write. Opened empty at start: requests an earlier
 * launcher kept belong to tasks that are not our children. */
static void kept_open(void) {
    L.kept_fd = open(L.kept_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    L.kept_end = L.kept_dead = 0;
}

/* Keep the request being answered (L.raw) for respawns of task t. */
static int keep_request(task_t *t) {
    if (!L.raw.len || L.kept_fd < 0) return 0;
    if (pwrite(L.kept_fd, L.raw.p, L.raw.len, L.kept_end) != (ssize_t)L.raw.len) return 0; /* a full disk */
    t->kept_off = L.kept_end;
    t->kept_len = L.raw.len;
    L.kept_end += (long long)L.raw.len;
    return 1;
}

/* Rewrite the file with only what tasks still refer to, once most of it is dead: stopped tasks' requests. */
static void kept_compact(void) {
    char tmp[3300];
    snprintf(tmp, sizeof(tmp), "%s.new", L.kept_path);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) return;
    long long pos = 0;
    long long *offs = xrealloc(NULL, (L.ntasks + 1) * sizeof(long long));
    char *buf = NULL;
    size_t cap = 0;
    int ok = 1;
    for (size_t k = 0; ok && k < L.ntasks; k++) {
        task_t *t = &L.tasks[k];
        offs[k] = t->kept_off;
        if (!t->kept_len) continue;
        if (t->kept_len > cap) buf = xrealloc(buf, cap = t->kept_len);
        ok = pread(L.kept_fd, buf, t->kept_len, t->kept_off) == (ssize_t)t->kept_len &&
             pwrite(fd, buf, t->kept_len, pos) == (ssize_t)t->kept_len;
        offs[k] = pos;
        pos += (long long)t->kept_len;
    }
    free(buf);
    if (ok && rename(tmp, L.kept_path) == 0) {
        close(L.kept_fd);
        L.kept_fd = fd;
        for (size_t k = 0; k < L.ntasks; k++) L.tasks[k].kept_off = offs[k];
        L.kept_end = pos;
        L.kept_dead = L.kept_retry = 0;
    } else {
        close(fd);
        unlink(tmp);
        L.kept_retry = L.kept_dead + (1 << 20);
    }
    free(offs);
}

/* A request no task refers to any more. */
static void kept_drop(size_t len) {
    L.kept_dead += (long long)len;
    if (L.kept_dead == L.kept_end) { /* nothing live: start over (a drain, a stop of the last armed task) */
        if (L.kept_fd >= 0 && ftruncate(L.kept_fd, 0) == 0) L.kept_end = L.kept_dead = L.kept_retry = 0;
    } else if (L.kept_dead > (1 << 20) && L.kept_dead > L.kept_end / 2 && L.kept_dead >= L.kept_retry) {
        kept_compact();
    }
}

/* The cgroup files the daemon named ([path, "events" | "procs"]) say no process is left in the task's cgroup:
 * whatever the exited run forked and left behind must be killed first, and only the daemon does that. */
static int vacant(const jv *list, sbuf *why) {
    if (!list || list->type != J_ARR || !list->kid) {
        sb_s(why, "respawn.vacant: no cgroup file to check");
        return 0;
    }
    for (const jv *x = list->kid; x; x = x->next) {
        const char *path = x->type == J_ARR && x->kid ? (x->kid->type == J_STR ? x->kid->str : NULL) : NULL;
        const char *kind = path && x->kid->next && x->kid->next->type == J_STR ? x->kid->next->str : NULL;
        char buf[4096];
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (fd >= 0) close(fd);
        if (n < 0 || !kind) {
            sb_s(why, "cannot read its cgroup's member list");
            return 0;
        }
        buf[n] = 0;
        int empty = !strcmp(kind, "events") ? strstr(buf, "populated 0") != NULL : !strcmp(kind, "procs") && n == 0;
        if (!empty) {
            sb_s(why, "processes it started are left in its cgroup");
            return 0;
        }
    }
    return 1;
}

static task_t *respawn(long long off, size_t len, const char *next, const int logs[2], sbuf *why, int *reaped,
                       int *status);

/* A run's identity as JSON members: "key":...,"pid":...,"start_time":... (the daemon's TaskHandle fields). */
static void sb_run(sbuf *b, const task_t *t) {
    sb_s(b, "\"key\":");
    sb_jcstr(b, t->key);
    sb_s(b, ",\"pid\":");
    sb_i(b, t->pid);
    sb_s(b, ",\"start_time\":");
    sb_i(b, t->start_time);
}

/* ,"name":<wall-clock seconds now, microseconds as the fraction> */
static void sb_now(sbuf *b, const char *name) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char t[96];
    snprintf(t, sizeof(t), ",\"%s\":%lld.%06ld", name, (long long)now.tv_sec, now.tv_nsec / 1000);
    sb_s(b, t);
}

static void record_exit(task_t *t, int status) {
    int logs[2] = { t->logs[0], t->logs[1] };
    for (int j = 0; j < 2; j++) if (logs[j] >= 0) pump(logs[j], 0);
    sbuf rec = {0};
    sb_s(&rec, "{");
    sb_run(&rec, t);
    sb_now(&rec, "finished_at");
    if (WIFSIGNALED(status)) {
        sb_s(&rec, ",\"exit_code\":");
        sb_i(&rec, 128 + WTERMSIG(status));
        sb_s(&rec, ",\"signal\":");
        sb_i(&rec, WTERMSIG(status));
    } else {
        sb_s(&rec, ",\"exit_code\":");
        sb_i(&rec, WEXITSTATUS(status));
        sb_s(&rec, ",\"signal\":null");
    }
    char *key = t->key, *next = t->next_key;
    long long kept_off = t->kept_off;
    size_t kept_len = t->kept_len;
    t->key = t->next_key = NULL;
    t->kept_len = 0; /* its request goes to the new run, or is dropped below */
    task_remove(t); /* t is gone: a respawn may move L.tasks */
    int reaped = 0, status2 = 0;
    pid_t pid2 = 0;
    if (next && L.running) {
        sbuf why = {0};
        task_t *n = NULL;
        if (kept_len) n = respawn(kept_off, kept_len, next, logs, &why, &reaped, &status2);
        else sb_s(&why, "no spawn request was kept for it");
        if (n) {
            n->kept_off = kept_off;
            n->kept_len = kept_len;
            kept_len = 0;
            L.respawns++;
            pid2 = n->pid;
            sb_s(&rec, ",\"respawned\":{");
            sb_run(&rec, n);
            sb_now(&rec, "started_at");
            sb_s(&rec, "}");
        } else {
            sb_s(&rec, ",\"respawn_error\":");
            sb_jcstr(&rec, why.p ? why.p : "unknown");
        }
        sb_free(&why);
    }
    if (kept_len) kept_drop(kept_len);
    sb_s(&rec, "}");
    /* the daemon hears of it first (a restart waits on this), then it goes to disk for a daemon that is down */
    sbuf ev = {0};
    sb_s(&ev, "{\"event\":\"exit\",");
    sb_s(&ev, rec.p + 1);
    broadcast(&ev);
    sb_free(&ev);
    char *file = NULL;
    persist_exit(key, rec.p, &file);
    exit_add(key, file, rec.p); /* takes rec's buffer */
    free(key);
    free(next);
    if (reaped) { /* the new run already ran to completion: its exit follows this one */
        task_t *n = task_by_pid(pid2);
        if (n) record_exit(n, status2);
    }
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) return;
        task_t *t = task_by_pid(pid);
        if (t) record_exit(t, status); /* else an orphaned grandchild we adopted as subreaper: nothing to report */
    }
}

static void load_exits(void) {
    DIR *d = opendir(L.exits_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 6 || strcmp(e->d_name + n - 5, ".json")) continue;
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", L.exits_dir, e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        char buf[65536];
        ssize_t len = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        if (fd >= 0) close(fd);
        if (len <= 0 || len >= (ssize_t)sizeof(buf) - 1) { unlink(path); continue; }
        /* kept as written, but on one line: a record is replayed inside a reply, one JSON object per line (a raw
         * newline can only be whitespace between tokens, as JSON strings cannot hold one) */
        char copy[65536];
        size_t m = 0;
        for (ssize_t k = 0; k < len; k++) if (buf[k] != '\n' && buf[k] != '\r') copy[m++] = buf[k];
        copy[m] = 0;
        jv *root = jparse(&L.jp, buf, (size_t)len, 0);
        const char *key = root ? jgets(root, "key") : NULL;
        if (!key || root->type != J_OBJ) { unlink(path); continue; }
        /* a run an earlier launcher respawned in this one's place is not our child: the daemon must watch it by
         * pidfd, as any task that launcher left (see Runtime._successor) */
        if (jget(root, "respawned") && m > 0 && copy[m - 1] == '}' && m + 20 < sizeof(copy)) {
            memcpy(copy + m - 1, ",\"reloaded\":true}", 18);
            m += 16;
            copy[m] = 0;
        }
        exit_add(key, xstrdup(path), xstrdup(copy)); /* the Python launcher's has spaces after separators */
    }
    closedir(d);
}

/* ---- spawning ---------------------------------------------------------------------------------------------- */

static void reset_slots(void) {
    for (int s = SLOT_FIRST; s < FD_LIMIT; s++) dup3(L.null_rw, s, O_CLOEXEC);
}

/* Ask the kernel once (see launcher.py, _probe_clone_into): is a child cloned into a new cgroup born alive, and
 * into one that was sent cgroup.kill? In a scratch cgroup below `parent`. */
static int born_alive(const char *dir) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -1;
    int cfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cfd < 0) { close(p[0]); close(p[1]); return -1; }
    static char *argv0[] = { "probe", NULL };
    static char *envp0[] = { NULL };
    plan_t pl;
    memset(&pl, 0, sizeof(pl));
    pl.errpipe = p[1];
    pl.path = "/nonexistent/tasksd-clone-probe";
    pl.argv = argv0;
    pl.envp = envp0;
    pl.deadline_s = SETUP_DEADLINE_S;
    long pid = spawn_clone(&pl, 0, cfd);
    close(cfd);
    close(p[0]);
    close(p[1]);
    if (pid < 0) { errno = (int)-pid; return -1; }
    int status = 0;
    pid_t w;
    while ((w = waitpid((pid_t)pid, &status, 0)) < 0 && errno == EINTR) {}
    if (w < 0) return -1;
    return !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

static void probe_clone_into(const char *parent) {
    char d[4200];
    snprintf(d, sizeof(d), "%s/.clone-probe-%d", parent, (int)getpid());
    if (mkdir(d, 0755) < 0) {
        logmsg("launcher: cannot probe clone3 into a cgroup (%s); reused cgroups are joined by pid", strerror(errno));
        L.killed_clone_ok = 0;
        return;
    }
    int alive = born_alive(d);
    if (alive == 0 || (alive < 0 && (errno == ENOSYS || errno == E2BIG || errno == EPERM || errno == EINVAL))) {
        L.clone_into = 0;
        logmsg("launcher: a child cloned into a new cgroup did not live; tasks join their cgroup by pid");
        L.killed_clone_ok = 0;
    } else if (alive < 0) {
        logmsg("launcher: probing clone3 into a cgroup failed (%s); reused cgroups are joined by pid", strerror(errno));
        L.killed_clone_ok = 0;
    } else {
        char kill[4300];
        snprintf(kill, sizeof(kill), "%s/cgroup.kill", d);
        int fd = open(kill, O_WRONLY | O_CLOEXEC);
        int ok = fd >= 0 && write(fd, "1", 1) == 1;
        if (fd >= 0) close(fd);
        L.killed_clone_ok = ok ? born_alive(d) == 1 : 0;
    }
    /* a dying probe leaves the cgroup busy for a moment */
    for (int k = 0; k < 200 && rmdir(d) < 0 && errno == EBUSY; k++) usleep(5000);
}

/* A child that took the whole deadline either exec'd just in time or was killed by its timer (see launcher.py's
 * _check_setup_deadline). Returns a report for the killed one (else NULL); *status is set if it was reaped. */
static const char *check_setup_deadline(pid_t pid, int *status, int *reaped) {
    int pidfd = -1;
    const char *report = NULL;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r < 0) break;
        if (r > 0) {
            *reaped = 1;
            if (WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
                report = "{\"step\":\"setup\",\"errno\":110,\"message\":\"the child did not reach execve within "
                         XSTR(SETUP_DEADLINE_S) " s "
                         "(stopped or stuck; killed)\"}";
            break;
        }
        unsigned long flags = 0;
        /* it exec'd and runs, unless it is exiting (or gone from /proc already: then wait for its status too) */
        if (process_start_time(pid, &flags) >= 0 && !(flags & 0x4 /* PF_EXITING */)) break;
        if (pidfd < 0) pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) break;
        struct pollfd pfd = { pidfd, POLLIN, 0 };
        if (poll(&pfd, 1, 5000) <= 0) break;
    }
    if (pidfd >= 0) close(pidfd);
    return report;
}

typedef struct {
    plan_t pl;
    unsigned long clone_flags;
    op_t *ops;
    char **argv, **envp;
    gid_t *groups;
} cplan_t;

static void cplan_free(cplan_t *c) {
    free(c->ops);
    free(c->argv);
    free(c->envp);
    free(c->groups);
}

static char **str_array(const jv *a, const char *what, const char **err) {
    if (!a || a->type != J_ARR) { *err = what; return NULL; }
    char **v = xrealloc(NULL, (a->len + 1) * sizeof(char *));
    size_t k = 0;
    for (jv *x = a->kid; x; x = x->next) {
        if (x->type != J_STR) { free(v); *err = what; return NULL; }
        v[k++] = x->str;
    }
    v[k] = NULL;
    return v;
}

/* The request's compiled plan into the child's structures (pointing into the request's buffer). */
static int cplan_read(cplan_t *c, const jv *req, const char **err) {
    memset(c, 0, sizeof(*c));
    const jv *plan = jget(req, "plan");
    const jv *ops = jget(plan, "ops");
    if (!ops || ops->type != J_ARR) { *err = "plan.ops: a list expected"; return -1; }
    c->ops = xrealloc(NULL, (ops->len + 1) * sizeof(op_t));
    size_t k = 0;
    for (const jv *o = ops->kid; o; o = o->next, k++) {
        op_t *op = &c->ops[k];
        memset(op, 0, sizeof(*op));
        const jv *f[10];
        size_t n = 0;
        if (o->type != J_ARR || o->len != 10) { *err = "plan.ops: an op is a list of 10"; return -1; }
        for (const jv *x = o->kid; x; x = x->next) f[n++] = x;
        if (f[0]->type != J_NUM || f[1]->type != J_NUM || f[2]->type != J_STR) { *err = "plan.ops: bad op"; return -1; }
        op->code = (int)f[0]->num;
        op->flags = (int)f[1]->num;
        op->step = f[2]->str;
        if (op->code < OP_SETSID || op->code > OP_CLOSE_FDS) { *err = "plan.ops: unknown op code"; return -1; }
        for (int j = 0; j < 3; j++) {
            if (f[3 + j]->type != J_NUM) { *err = "plan.ops: bad op"; return -1; }
            op->i[j] = f[3 + j]->num;
        }
        for (int j = 0; j < 4; j++) {
            if (f[6 + j]->type == J_STR) op->s[j] = f[6 + j]->str;
            else if (f[6 + j]->type != J_NULL) { *err = "plan.ops: bad op"; return -1; }
        }
        if (!op_ids_ok(op)) {
            *err = "plan.ops: id out of range";
            return -1;
        }
    }
    c->pl.ops = c->ops;
    c->pl.nops = (long)k;
    const jv *groups = jget(plan, "groups");
    if (groups && groups->type == J_ARR) {
        c->groups = xrealloc(NULL, (groups->len + 1) * sizeof(gid_t));
        size_t g = 0;
        for (const jv *x = groups->kid; x; x = x->next) {
            if (x->type != J_NUM || x->num < 0 || (unsigned long long)x->num > ID_MAX) {
                *err = "plan.groups: id out of range";
                return -1;
            }
            c->groups[g++] = (gid_t)x->num;
        }
        c->pl.groups = c->groups;
        c->pl.ngroups = (long)g;
    }
    c->pl.path = jgets(req, "path");
    if (!c->pl.path) { *err = "path: a string expected"; return -1; }
    if (!(c->argv = str_array(jget(req, "argv"), "argv: a list of strings expected", err))) return -1;
    if (!(c->envp = str_array(jget(req, "env"), "env: a list of strings expected", err))) return -1;
    for (char **e = c->envp; *e; e++)
        if (**e == '=' || !strchr(*e, '=')) { *err = "env: illegal environment variable name"; return -1; }
    c->pl.argv = c->argv;
    c->pl.envp = c->envp;
    c->pl.errpipe = SLOT_ERRPIPE;
    c->pl.deadline_s = SETUP_DEADLINE_S;
    c->pl.fd_limit = FD_LIMIT;
    long long flags = 0;
    jgeti(plan, "clone_flags", &flags);
    if (!clone_flags_ok((unsigned long long)flags)) {
        *err = "plan.clone_flags: only namespace flags";
        return -1;
    }
    c->clone_flags = (unsigned long)flags;
    return 0;
}

/* Why a start failed: for the spawn's reply, or for the exit event of the run a respawn was to replace. */
typedef struct { sbuf msg; const char *step; int err; } failure_t;

static void set_failure(failure_t *f, const char *step, int err, const char *msg) {
    f->msg.len = 0;
    sb_s(&f->msg, msg);
    f->step = step;
    f->err = err;
}

/* The failure message for a child's report (launcher.py's _c_child_message): strerror and the path. */
static void child_failure(failure_t *f, char *report, size_t len) {
    static jparser rp; /* not L.jp: that one holds the request being answered */
    jv *r = jparse(&rp, report, len, 1);
    const char *step = r ? jgets(r, "step") : NULL;
    long long err = 0;
    if (!step || jgeti(r, "errno", &err) < 0) {
        set_failure(f, "unknown", EIO, "spawn failed");
        return;
    }
    const char *path = jgets(r, "path"), *message = jgets(r, "message");
    sbuf m = {0};
    sb_s(&m, "spawn failed at step ");
    sb_s(&m, step);
    sb_s(&m, ": ");
    if (message) sb_s(&m, message);
    else if (!strncmp(step, "mounts", 6) && (err == EXDEV || err == ELOOP)) {
        /* openat2 RESOLVE_BENEATH refused a path component: a symlink leading out of the task root */
        sb_s(&m, "mount target ");
        sb_s(&m, path ? path : "?");
        sb_s(&m, " escapes the task root (through a symlink)");
    } else {
        sb_s(&m, strerror((int)err));
        if (path) { sb_s(&m, ": "); sb_s(&m, path); }
    }
    /* step points into rp's buffer (report), which the caller frees: the steps a child reports are literals there */
    static char stepbuf[64];
    snprintf(stepbuf, sizeof(stepbuf), "%s", step);
    set_failure(f, stepbuf, (int)err, m.p);
    sb_free(&m);
}

/* Make a log pipe for `target` ([dir, base, max_files, max_size] or null) in slot `slot`; its read end in *rd. */
static int log_slot(const jv *target, int slot, int *rd) {
    *rd = -1;
    if (!target || target->type != J_ARR) return dup3(L.null_rw, slot, O_CLOEXEC) < 0 ? -errno : 0;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -errno;
    if (dup3(p[1], slot, O_CLOEXEC) < 0) { int e = errno; close(p[0]); close(p[1]); return -e; }
    close(p[1]);
    *rd = p[0];
    return 0;
}

static void log_attach(task_t *t, int j, int rd, const jv *target) {
    const jv *f[4];
    size_t n = 0;
    for (const jv *x = target->kid; x && n < 4; x = x->next) f[n++] = x;
    rlog *l = NULL;
    const char *err = "bad log target";
    if (n == 4 && f[0]->type == J_STR && f[1]->type == J_STR && f[2]->type == J_NUM && f[3]->type == J_NUM)
        l = rlog_new(f[0]->str, f[1]->str, f[2]->num, f[3]->num, &err);
    if (!l) logmsg("launcher: logs of %s: %s", t->key, err); /* the pipe is kept drained, never blocked */
    ensure_slots(rd);
    fcntl(rd, F_SETFL, O_NONBLOCK);
    L.pipes[rd] = (logpipe_t){ l, 1 };
    if (l && l->fd >= 0) L.open_logs++;
    if (l) log_used(l);
    ep_add(rd, K_LOG, EPOLLIN);
    t->logs[j] = rd;
}

/* A start's success reply: the task's pid and start time (and "existing" for a spawn of a key already running). */
static void reply_started(conn_t *c, const char *id, const task_t *t, int existing) {
    sbuf b = {0};
    reply_begin(&b, id);
    sb_s(&b, ",\"pid\":");
    sb_i(&b, t->pid);
    sb_s(&b, ",\"start_time\":");
    sb_i(&b, t->start_time);
    if (existing) sb_s(&b, ",\"existing\":true");
    if (t->next_key) sb_s(&b, ",\"armed\":true");
    reply_end(c, &b);
}

/* Clone the child of a spawn or exec request under `key`, once it has exec'd: the new task, or NULL and *f says
 * why. *reaped: it already ran to completion (*status), to be recorded once the caller has reported the start. */
static task_t *start_task(const jv *req, const char *key, int is_exec, int *passed, int npassed, failure_t *f,
                          int *reaped, int *status, int respawning) {
    *reaped = 0;
    cplan_t cp;
    const char *err = NULL;
    if (cplan_read(&cp, req, &err) < 0) {
        cplan_free(&cp);
        set_failure(f, "request", EINVAL, err);
        return NULL;
    }
    const jv *logs = jget(req, "logs");
    const jv *targets[2] = { NULL, NULL };
    if (logs && logs->type == J_ARR && logs->kid) { targets[0] = logs->kid; targets[1] = logs->kid->next; }
    int rd[2] = { -1, -1 }, errp[2] = { -1, -1 }, pidns = -1, r = 0;
    const char *step = "spawn";
    pid_t target_pid = 0;
    if (is_exec) {
        long long tp = 0, tst = -1;
        if (jgeti(req, "target_pid", &tp) < 0 || tp <= 0) { r = -EINVAL; step = "request"; goto failed; }
        target_pid = (pid_t)tp;
        /* the pid alone could by now name another process: its start time tells them apart */
        if (jgeti(req, "target_start_time", &tst) == 0 && process_start_time(target_pid, NULL) != tst) {
            char m[128];
            snprintf(m, sizeof(m), "the task's process %d has exited", (int)target_pid);
            cplan_free(&cp);
            set_failure(f, "exec", ESRCH, m);
            return NULL;
        }
    }
    /* stdio: the caller's (exec) or /dev/null and the log pipes */
    if (npassed > 0) {
        for (int s = 0; s < 3; s++) {
            int fd = passed[s < npassed ? s : npassed - 1];
            if (dup3(fd, SLOT_STDIN + s, O_CLOEXEC) < 0) { r = -errno; goto failed; }
        }
    } else {
        if (dup3(L.null_ro, SLOT_STDIN, O_CLOEXEC) < 0) { r = -errno; goto failed; }
        for (int j = 0; j < 2; j++)
            if ((r = log_slot(targets[j], SLOT_STDOUT + j, &rd[j])) < 0) goto failed;
    }
    if (pipe2(errp, O_CLOEXEC) < 0 || dup3(errp[1], SLOT_ERRPIPE, O_CLOEXEC) < 0) { r = -errno; goto failed; }
    close(errp[1]);
    errp[1] = -1;
    if (is_exec) {
        /* the namespaces and root of the running task, into the slots the plan names */
        static const struct { const char *name; int slot; } ns[] = {
            { "ipc", SLOT_IPC }, { "uts", SLOT_UTS }, { "net", SLOT_NET }, { "mnt", SLOT_MNT }, { "root", SLOT_ROOT } };
        const jv *enter = jget(req, "enter");
        for (const jv *x = enter && enter->type == J_ARR ? enter->kid : NULL; x; x = x->next) {
            int slot = -1;
            char p[64];
            for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++)
                if (x->type == J_STR && !strcmp(x->str, ns[k].name)) slot = ns[k].slot;
            if (slot < 0) { r = -EINVAL; step = "request"; goto failed; }
            if (slot == SLOT_ROOT) snprintf(p, sizeof(p), "/proc/%d/root", (int)target_pid);
            else snprintf(p, sizeof(p), "/proc/%d/ns/%s", (int)target_pid, x->str);
            int fd = open(p, O_RDONLY | O_CLOEXEC | (slot == SLOT_ROOT ? O_DIRECTORY : 0));
            if (fd < 0) { r = -errno; step = "exec"; goto failed; }
            dup3(fd, slot, O_CLOEXEC);
            close(fd);
        }
        jv *pn = jget(req, "pidns");
        if (pn && pn->type == J_BOOL && pn->num) {
            char p[64];
            snprintf(p, sizeof(p), "/proc/%d/ns/pid", (int)target_pid);
            if ((pidns = open(p, O_RDONLY | O_CLOEXEC)) < 0 || setns(pidns, CLONE_NEWPID) < 0) {
                r = -errno; step = "exec"; goto failed;
            }
        }
    }
    /* clone3 straight into the task's new v2 cgroup (see launcher.py's comment on clone_into) */
    const char *into = jgets(req, "clone_into");
    int cgfd = -1;
    if (into && L.clone_into) {
        /* a respawn's cgroup is not the fresh one the request was made for: it may have been killed since */
        jv *fresh = respawning ? NULL : jget(req, "fresh");
        if (L.killed_clone_ok < 0) {
            char parent[4096];
            snprintf(parent, sizeof(parent), "%s", into);
            char *slash = strrchr(parent, '/');
            if (slash && slash != parent) { *slash = 0; probe_clone_into(parent); }
        }
        if (L.clone_into && ((fresh && fresh->num) || L.killed_clone_ok == 1))
            cgfd = open(into, O_PATH | O_DIRECTORY | O_CLOEXEC);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long pid = -ENOSYS;
    if (cgfd >= 0) {
        /* the ops that write the task into that cgroup are not needed when it is born there */
        plan_t pl2 = cp.pl;
        pl2.skip_flags = F_BORN_IN;
        pid = spawn_clone(&pl2, cp.clone_flags, cgfd);
        close(cgfd);
        if (pid >= 0) L.joins_clone++;
        else if (pid == -ENOSYS || pid == -E2BIG || pid == -EPERM || pid == -EINVAL) {
            L.clone_into = 0;
            logmsg("launcher: clone3 CLONE_INTO_CGROUP refused (%s); tasks join their cgroup by pid", strerror((int)-pid));
        }
    }
    if (pid < 0) {
        /* no child was made: the old way, which reports a cgroup's own problem at its step */
        pid = spawn_clone(&cp.pl, cp.clone_flags, -1);
        if (pid >= 0) L.joins_pid++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (pidns >= 0) {
        setns(L.own_pidns, CLONE_NEWPID);
        close(pidns);
        pidns = -1;
    }
    reset_slots();
    if (pid < 0) { r = (int)pid; step = "clone"; goto failed; }
    /* clone(CLONE_VFORK) returned: the child has exec'd, or written its report and exited; every write end of
     * the error pipe is closed, so these reads cannot block */
    sbuf report = {0};
    for (;;) {
        char buf[4096];
        ssize_t n = read(errp[0], buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (report.len < 65536) sb_add(&report, buf, (size_t)n);
    }
    close(errp[0]);
    errp[0] = -1;
    long long start_time = process_start_time((pid_t)pid, NULL); /* before anything here may reap it */
    long long elapsed_ms = (t1.tv_sec - t0.tv_sec) * 1000LL + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    if (!report.len && elapsed_ms >= SETUP_DEADLINE_S * 1000LL) {
        const char *late = check_setup_deadline((pid_t)pid, status, reaped);
        if (late) sb_s(&report, late);
    }
    if (report.len) {
        if (!*reaped) while (waitpid((pid_t)pid, status, 0) < 0 && errno == EINTR) {}
        *reaped = 0;
        for (int j = 0; j < 2; j++) if (rd[j] >= 0) close(rd[j]);
        child_failure(f, report.p, report.len);
        sb_free(&report);
        cplan_free(&cp);
        return NULL;
    }
    sb_free(&report);
    if (L.ntasks == L.cap_tasks) {
        L.cap_tasks = L.cap_tasks ? L.cap_tasks * 2 : 64;
        L.tasks = xrealloc(L.tasks, L.cap_tasks * sizeof(task_t));
    }
    task_t *t = &L.tasks[L.ntasks++];
    *t = (task_t){ xstrdup(key), (pid_t)pid, start_time, { -1, -1 }, 0, 0, NULL, 0 };
    /* reported only once the files exist: once the caller hears "running", tail -F and tasksctl logs find them */
    for (int j = 0; j < 2; j++) if (rd[j] >= 0) log_attach(t, j, rd[j], targets[j]);
    cplan_free(&cp);
    return t;
failed:
    if (pidns >= 0) { setns(L.own_pidns, CLONE_NEWPID); close(pidns); }
    reset_slots();
    for (int j = 0; j < 2; j++) if (rd[j] >= 0) close(rd[j]);
    if (errp[0] >= 0) close(errp[0]);
    if (errp[1] >= 0) close(errp[1]);
    cplan_free(&cp);
    char m[512];
    snprintf(m, sizeof(m), "spawn failed at step %s: %s", step, strerror(-r));
    set_failure(f, step, -r, m);
    return NULL;
}

/* Start the run `next` with the request kept at off (len bytes), if the cgroup is vacant. logs: the exited run's
 * pipes, closed after a last read first, so that all its output is in the files before the new run's. */
static task_t *respawn(long long off, size_t len, const char *next, const int logs[2], sbuf *why, int *reaped,
                       int *status) {
    char *buf = xrealloc(NULL, len + 1);
    jv *req = pread(L.kept_fd, buf, len, off) == (ssize_t)len ? jparse(&L.rjp, buf, len, 0) : NULL;
    task_t *t = NULL;
    if (!req) sb_s(why, "its kept spawn request is unreadable");
    else if (vacant(jget(jget(req, "respawn"), "vacant"), why)) {
        /* vacant: nothing of the task is left to write to them (the cgroup held every writer) */
        for (int j = 0; j < 2; j++) if (logs[j] >= 0) pump(logs[j], 1);
        failure_t f = {0};
        t = start_task(req, next, 0, NULL, 0, &f, reaped, status, 1);
        if (!t) sb_s(why, f.msg.p);
        sb_free(&f.msg);
    }
    free(buf);
    if (L.rjp.cap > 65536) { free(L.rjp.nodes); L.rjp.nodes = NULL; L.rjp.cap = 0; }
    return t;
}

/* spawn and exec: start the child, answer once it has exec'd or failed. A spawn that names a "respawn" is kept
 * for respawns (see record_exit) and armed with its next_key. */
static void op_start(conn_t *c, const char *id, const jv *req, int is_exec, int *passed, int npassed) {
    const char *key = jgets(req, "key");
    if (!key) { reply_error(c, id, "key: a string expected", "request", EINVAL); return; }
    task_t *running = task_by_key(key);
    if (running && !is_exec) {
        reply_started(c, id, running, 1);
        return;
    }
    if (running) { reply_error(c, id, "an exec with this key is running", "exec", EALREADY); return; }
    const jv *rs = is_exec ? NULL : jget(req, "respawn");
    const char *next = rs ? jgets(rs, "next_key") : NULL;
    if (rs && (!next || !strcmp(next, key))) {
        reply_error(c, id, "respawn.next_key: a string other than key expected", "request", EINVAL);
        return;
    }
    failure_t f = {0};
    int reaped = 0, status = 0;
    task_t *t = start_task(req, key, is_exec, passed, npassed, &f, &reaped, &status, 0);
    if (!t) {
        reply_error(c, id, f.msg.p, f.step, f.err);
        sb_free(&f.msg);
        return;
    }
    if (next && keep_request(t)) t->next_key = xstrdup(next);
    reply_started(c, id, t, 0);
    if (reaped) record_exit(t, status); /* it already ran to completion */
}

/* ---- requests ---------------------------------------------------------------------------------------------- */

static void handle(conn_t *c, char *line, size_t len) {
    /* the client puts the id first ({"id":N,...}): noted before parsing (which decodes strings in place), so that a
     * request that fails to parse further (a NUL in a string, say) still gets its answer instead of leaving its
     * caller waiting */
    char first_id[24] = "null";
    if (len > 6 && !memcmp(line, "{\"id\":", 6)) {
        size_t n = 0;
        while (6 + n < len && n < 20 && line[6 + n] >= '0' && line[6 + n] <= '9') n++;
        if (n) { memcpy(first_id, line + 6, n); first_id[n] = 0; }
    }
    /* a spawn to keep for respawns is kept as sent: parsing decodes strings in place */
    L.raw.len = 0;
    if (len < MAX_KEPT_REQUEST && memmem(line, len, "\"respawn\":", 10)) sb_add(&L.raw, line, len);
    jv *req = jparse(&L.jp, line, len, 0);
    const char *op = req ? jgets(req, "op") : NULL;
    jv *idv = req ? jget(req, "id") : NULL;
    char id[72] = "null";
    if (idv && idv->rawlen < sizeof(id) && (idv->type == J_NUM || idv->type == J_NULL)) {
        memcpy(id, idv->raw, idv->rawlen);
        id[idv->rawlen] = 0;
    }
    if (!op) {
        if (!idv) memcpy(id, first_id, sizeof(first_id));
        char m[160];
        snprintf(m, sizeof(m), "malformed request: %s", L.jp.err ? L.jp.err : "no op");
        reply_error(c, id, m, NULL, 0);
        return;
    }
    long long nfds = 0;
    jgeti(req, "nfds", &nfds);
    int passed[MAX_PASSED_FDS], npassed = 0;
    if (nfds > 0) {
        /* taken first, whatever happens next: left queued on the connection they would become the next request's */
        if (nfds > c->nfds || nfds > MAX_PASSED_FDS) {
            int have = c->nfds, take = nfds < c->nfds ? (int)nfds : c->nfds;
            for (int k = 0; k < take; k++) close(c->fds[k]);
            memmove(c->fds, c->fds + take, sizeof(int) * (size_t)(c->nfds - take));
            c->nfds -= take;
            char m[120];
            snprintf(m, sizeof(m), "expected %lld file descriptors, got %d (at most %d)", nfds, have, MAX_PASSED_FDS);
            reply_error(c, id, m, "request", EINVAL);
            return;
        }
        npassed = (int)nfds;
        memcpy(passed, c->fds, sizeof(int) * (size_t)npassed);
        memmove(c->fds, c->fds + npassed, sizeof(int) * (size_t)(c->nfds - npassed));
        c->nfds -= npassed;
    }
    sbuf b = {0};
    if (!strcmp(op, "ping")) {
        reply_begin(&b, id);
        sb_s(&b, ",\"pid\":");
        sb_i(&b, getpid());
        sb_s(&b, ",\"protocol\":");
        sb_i(&b, PROTOCOL_VERSION);
        sb_s(&b, ",\"boot_id\":");
        sb_jcstr(&b, L.boot_id);
        sb_s(&b, ",\"launcher\":\"c\",\"child\":\"c\",\"clone_into_cgroup\":");
        sb_s(&b, L.clone_into ? "true" : "false");
        sb_s(&b, ",\"clone_into_killed_cgroup\":");
        sb_s(&b, L.killed_clone_ok < 0 ? "null" : L.killed_clone_ok ? "true" : "false");
        sb_s(&b, ",\"cgroup_joins\":{\"clone\":");
        sb_i(&b, L.joins_clone);
        sb_s(&b, ",\"pid\":");
        sb_i(&b, L.joins_pid);
        char slots[200];
        snprintf(slots, sizeof(slots), "},\"fds\":{\"stdin\":%d,\"stdout\":%d,\"stderr\":%d,\"errpipe\":%d,\"ipc\":%d,"
                 "\"uts\":%d,\"net\":%d,\"mnt\":%d,\"root\":%d}", SLOT_STDIN, SLOT_STDOUT, SLOT_STDERR, SLOT_ERRPIPE,
                 SLOT_IPC, SLOT_UTS, SLOT_NET, SLOT_MNT, SLOT_ROOT);
        sb_s(&b, slots);
        sb_s(&b, ",\"open_logs\":");
        sb_i(&b, (long long)L.open_logs);
        sb_s(&b, ",\"respawns\":");
        sb_i(&b, L.respawns);
        reply_end(c, &b);
    } else if (!strcmp(op, "list")) {
        reply_begin(&b, id);
        sb_s(&b, ",\"tasks\":[");
        for (size_t k = 0; k < L.ntasks; k++) {
            sb_s(&b, k ? ",{" : "{");
            sb_run(&b, &L.tasks[k]);
            if (L.tasks[k].next_key) {
                sb_s(&b, ",\"next_key\":");
                sb_jcstr(&b, L.tasks[k].next_key);
            }
            sb_s(&b, "}");
        }
        sb_s(&b, "],\"exits\":[");
        for (size_t k = 0; k < L.nexits; k++) {
            if (k) sb_s(&b, ",");
            sb_s(&b, L.exits[k].rec);
        }
        sb_s(&b, "]");
        reply_end(c, &b);
    } else if (!strcmp(op, "unsubscribe")) {
        c->events = 0; /* a client's call connection reads its replies itself: unread events would pile up */
        reply_begin(&b, id);
        reply_end(c, &b);
    } else if (!strcmp(op, "ack")) {
        const char *key = jgets(req, "key");
        if (!key) { reply_error(c, id, "key: a string expected", "request", EINVAL); goto out; }
        exit_t *x = exit_by_key(key);
        if (x) exit_forget(x, 1);
        reply_begin(&b, id);
        reply_end(c, &b);
    } else if (!strcmp(op, "signal")) {
        const char *key = jgets(req, "key");
        long long sig = 0;
        task_t *t = key ? task_by_key(key) : NULL;
        if (!key || jgeti(req, "signal", &sig) < 0 || sig < 0 || sig > 64) {
            reply_error(c, id, "key and signal expected", "request", EINVAL);
        } else if (!t) {
            char m[600];
            snprintf(m, sizeof(m), "task %.500s is not running", key);
            reply_error(c, id, m, "signal", ESRCH);
        } else if (kill(t->pid, (int)sig) < 0) { /* safe: our child, not reaped, so the pid is still this task */
            reply_error(c, id, strerror(errno), "signal", errno);
        } else {
            reply_begin(&b, id);
            reply_end(c, &b);
        }
    } else if (!strcmp(op, "arm")) {
        /* the daemon counted the last respawn: the run it made may be respawned once more, as `next_key` */
        const char *key = jgets(req, "key"), *next = jgets(req, "next_key");
        task_t *t = key ? task_by_key(key) : NULL;
        char m[600];
        if (!key || !next || !strcmp(key, next)) {
            reply_error(c, id, "key and a different next_key expected", "request", EINVAL);
        } else if (!t) {
            snprintf(m, sizeof(m), "task %.500s is not running", key);
            reply_error(c, id, m, "arm", ESRCH);
        } else if (!t->kept_len) {
            snprintf(m, sizeof(m), "task %.500s has no kept spawn request", key);
            reply_error(c, id, m, "arm", ENOENT);
        } else if (t->disarmed) {
            snprintf(m, sizeof(m), "task %.500s was disarmed", key);
            reply_error(c, id, m, "arm", EPERM);
        } else {
            free(t->next_key);
            t->next_key = xstrdup(next);
            reply_begin(&b, id);
            reply_end(c, &b);
        }
    } else if (!strcmp(op, "disarm")) {
        /* before a stop: from here the task's exit is the daemon's to handle. If it exited already and was
         * respawned, its exit record says as what (the exit event may still be on its way to the daemon). */
        const char *key = jgets(req, "key");
        task_t *t = key ? task_by_key(key) : NULL;
        if (!key) { reply_error(c, id, "key: a string expected", "request", EINVAL); goto out; }
        reply_begin(&b, id);
        if (t) {
            free(t->next_key);
            t->next_key = NULL;
            t->disarmed = 1;
            sb_s(&b, ",\"running\":true");
        } else {
            exit_t *x = exit_by_key(key);
            sb_s(&b, ",\"running\":false");
            if (x) { sb_s(&b, ",\"exit\":"); sb_s(&b, x->rec); }
        }
        reply_end(c, &b);
    } else if (!strcmp(op, "shutdown")) {
        L.running = 0;
        reply_begin(&b, id);
        reply_end(c, &b);
    } else if (!strcmp(op, "spawn") || !strcmp(op, "exec")) {
        if (!jget(req, "plan")) {
            reply_error(c, id, "this launcher takes compiled spawn requests only (a plan, not a spec)", "request",
                        EINVAL);
        } else {
            op_start(c, id, req, op[0] == 'e', passed, npassed);
        }
    } else {
        char m[200];
        snprintf(m, sizeof(m), "unknown op '%.100s'", op);
        reply_error(c, id, m, NULL, 0);
    }
out:
    for (int k = 0; k < npassed; k++) close(passed[k]);
}

static void conn_read(conn_t *c) {
    char cbuf[CMSG_SPACE(sizeof(int) * MAX_PASSED_FDS)];
    sb_grow(&c->in, 65536);
    struct iovec iov = { c->in.p + c->in.len, 65536 };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
    ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) { conn_close(c); return; } /* (ECONNRESET: a daemon gone with events unread) cbuf was not filled */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *fds = (int *)CMSG_DATA(cm);
        for (size_t j = 0; j < k; j++) {
            if (c->nfds < (int)(sizeof(c->fds) / sizeof(c->fds[0]))) c->fds[c->nfds++] = fds[j];
            else close(fds[j]);
        }
    }
    if (n <= 0) { conn_close(c); return; }
    c->in.len += (size_t)n;
    size_t start = 0;
    while (!c->closed) {
        char *nl = memchr(c->in.p + start, '\n', c->in.len - start);
        if (!nl) break;
        size_t len = (size_t)(nl - (c->in.p + start));
        handle(c, c->in.p + start, len);
        start += len + 1;
    }
    if (c->closed) return;
    memmove(c->in.p, c->in.p + start, c->in.len - start);
    c->in.len -= start;
    if (c->in.len > MAX_LINE) { conn_close(c); return; }
    /* a large request (a long environment) must not leave its buffers behind: memory is what this program is for */
    if (c->in.cap > (1 << 20) && c->in.len < 65536) {
        c->in.p = xrealloc(c->in.p, 1 << 17);
        c->in.cap = 1 << 17;
    }
    if (L.jp.cap > 65536) { free(L.jp.nodes); L.jp.nodes = NULL; L.jp.cap = 0; }
    if (L.raw.cap > 65536) sb_free(&L.raw);
}

static void accept_conn(void) {
    int fd = accept4(L.srv, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0 || (cr.uid != 0 && cr.uid != geteuid())) {
        close(fd);
        return;
    }
    ensure_slots(fd);
    conn_t *c = xrealloc(NULL, sizeof(conn_t));
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->events = 1;
    L.conns[fd] = c;
    ep_add(fd, K_CONN, EPOLLIN);
}

/* ---- setup and main loop ----------------------------------------------------------------------------------- */

static int mkdirs(const char *path, mode_t mode) {
    char p[4096];
    snprintf(p, sizeof(p), "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) < 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, mode) < 0 && errno != EEXIST ? -1 : 0;
}

static int listen_socket(void) {
    char path[8192];
    snprintf(path, sizeof(path), "%s/launcher.sock", L.run_dir);
    unlink(path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return -1;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int dfd = -1;
    if (strlen(path) < 100) {
        snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    } else { /* longer than sun_path: through the directory's descriptor (launcher_proto.via_short_path) */
        dfd = open(L.run_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        snprintf(a.sun_path, sizeof(a.sun_path), "/proc/self/fd/%d/launcher.sock", dfd);
    }
    mode_t old = umask(0177); /* the socket is created 0600: only root may ask for a process */
    int r = bind(s, (struct sockaddr *)&a, sizeof(a));
    umask(old);
    if (dfd >= 0) close(dfd);
    if (r < 0 || listen(s, 64) < 0) { close(s); return -1; }
    return s;
}

static void read_boot_id(void) {
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, L.boot_id, sizeof(L.boot_id) - 1) : -1;
    if (fd >= 0) close(fd);
    L.boot_id[n > 0 ? n : 0] = 0;
    for (char *p = L.boot_id; *p; p++) if (*p == '\n') *p = 0;
}

int main(int argc, char **argv) {
    const char *state = NULL;
    if (argc == 3 && !strcmp(argv[1], "--state-dir") && argv[2][0]) state = argv[2];
    else if (argc == 2 && !strncmp(argv[1], "--state-dir=", 12) && argv[1][12]) state = argv[1] + 12;
    if (!state) {
        fprintf(stderr, "usage: tasksd-launcher --state-dir DIR  (tasksd's single-threaded task launcher, started "
                        "by tasksd)\n");
        return 2;
    }
    /* The slots first, while 3..14 are free (tasksd starts us with nothing open above stderr). */
    syscall(SYS_close_range, SLOT_FIRST, ~0U, 0);
    L.null_rw = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (L.null_rw != SLOT_FIRST) { fprintf(stderr, "launcher: descriptor 3 is not free\n"); return 1; }
    for (int s = SLOT_FIRST + 1; s < FD_LIMIT; s++) dup3(L.null_rw, s, O_CLOEXEC);
    L.null_rw = fcntl(SLOT_FIRST, F_DUPFD_CLOEXEC, FD_LIMIT);
    L.null_ro = open("/dev/null", O_RDONLY | O_CLOEXEC);

    if (strlen(state) > 3000) { fprintf(stderr, "launcher: state dir path too long\n"); return 2; }
    snprintf(L.run_dir, sizeof(L.run_dir), "%s/run", state);
    snprintf(L.exits_dir, sizeof(L.exits_dir), "%s/exits", L.run_dir);
    snprintf(L.kept_path, sizeof(L.kept_path), "%s/respawn.dat", L.run_dir);
    if (mkdirs(L.run_dir, 0700) < 0) { fprintf(stderr, "launcher: %s: %s\n", L.run_dir, strerror(errno)); return 1; }
    char lockp[8192];
    snprintf(lockp, sizeof(lockp), "%s/launcher.lock", L.run_dir);
    int lock = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) < 0) {
        fprintf(stderr, "launcher: another launcher already serves this state dir\n");
        return 3;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    /* not dumpable: a child shares our memory until its execve, and a root task could otherwise ptrace it or
     * write /proc/<child>/mem, i.e. write into the launcher (execve resets the flag for tasks) */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* whatever our parent ignored goes back to default; SIGPIPE and SIGXFSZ stay ignored for us, as in the
     * Python launcher, and every child resets all dispositions before its execve */
    struct sigaction dfl = { .sa_handler = SIG_DFL };
    for (int sig = 1; sig < 65; sig++) if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a log file at RLIMIT_FSIZE: the write fails (EFBIG, bytes dropped), we live on */
    /* our signals are read from a signalfd; a ^C meant for a foreground tasksd is read and ignored. The child
     * unblocks everything before its execve. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_SETMASK, &set, NULL);
    L.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    L.own_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
    if (L.own_pidns < 0) { fprintf(stderr, "launcher: /proc/self/ns/pid: %s\n", strerror(errno)); return 1; }
    read_boot_id();
    const char *ci = getenv("TASKSD_CLONE_INTO_CGROUP");
    L.clone_into = HAVE_CLONE3_VM && !(ci && !strcmp(ci, "0"));
    L.killed_clone_ok = -1;
    mkdir(L.exits_dir, 0700);
    load_exits();
    kept_open();
    L.ep = epoll_create1(EPOLL_CLOEXEC);
    L.srv = listen_socket();
    if (L.srv < 0 || L.ep < 0 || L.sigfd < 0) {
        fprintf(stderr, "launcher: cannot listen on %s/launcher.sock: %s\n", L.run_dir, strerror(errno));
        return 1;
    }
    ensure_slots(FD_LIMIT + 64);
    ep_add(L.srv, K_LISTEN, EPOLLIN);
    ep_add(L.sigfd, K_SIGNAL, EPOLLIN);
    L.running = 1;
    /* readiness on stdout, then close it: the daemon waits for this line instead of polling the socket */
    ssize_t w = write(1, "ready\n", 6);
    (void)w;
    dup2(L.null_rw, 1);
    reap();
    struct epoll_event evs[64];
    while (L.running) {
        int n = epoll_wait(L.ep, evs, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int k = 0; k < n; k++) {
            int kind = (int)(evs[k].data.u64 >> 32), fd = (int)(uint32_t)evs[k].data.u64;
            if (kind == K_LISTEN) accept_conn();
            else if (kind == K_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(L.sigfd, &si, sizeof(si)) == sizeof(si))
                    if (si.ssi_signo == SIGTERM) L.running = 0;
                reap();
            } else if (kind == K_LOG) {
                pump(fd, 0);
            } else if (kind == K_CONN && (size_t)fd < L.nslots && L.conns[fd]) {
                conn_t *c = L.conns[fd];
                if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) conn_read(c);
                if (!c->closed && (evs[k].events & EPOLLOUT)) conn_flush(c);
            }
        }
        while (L.dead) {
            conn_t *c = L.dead;
            L.dead = c->next_dead;
            sb_free(&c->in);
            sb_free(&c->out);
            free(c);
        }
    }
    for (size_t fd = 0; fd < L.nslots; fd++) if (L.pipes[fd].open) pump((int)fd, 1);
    return 0;
}
