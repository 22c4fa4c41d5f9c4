/* isolation._spawn: the launcher's child setup (isolation/spawn_child.h) for the Python launcher. This file only
 * converts the plan from Python objects; spawn_child.h says what the child does and why it is in C. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "spawn_child.h"

/* ---- the parent: convert the plan, then clone ---------------------------------------------------------- */

static int as_cstr(PyObject *o, const char **out, const char *what) {
    if (o == Py_None) { *out = NULL; return 0; }
    char *s;
    Py_ssize_t n;
    if (!PyBytes_Check(o)) { PyErr_Format(PyExc_TypeError, "%s: bytes or None expected", what); return -1; }
    if (PyBytes_AsStringAndSize(o, &s, &n) < 0) return -1;
    if ((Py_ssize_t)c_strlen(s) != n) { PyErr_Format(PyExc_ValueError, "%s: embedded NUL byte", what); return -1; }
    *out = s;
    return 0;
}

static char **as_argv(PyObject *seq, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **v = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (!v) { Py_DECREF(fast); PyErr_NoMemory(); return NULL; }
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *s;
        if (as_cstr(PySequence_Fast_GET_ITEM(fast, k), &s, what) < 0 || !s) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%s: None", what);
            PyMem_Free(v);
            Py_DECREF(fast);
            return NULL;
        }
        v[k] = (char *)s;
    }
    Py_DECREF(fast);  /* a list (checked by the caller) is its own fast sequence: its items stay alive with it */
    return v;
}

PyDoc_STRVAR(spawn_doc,
"spawn(clone_flags, errpipe, deadline_s, ops, path, argv, envp, groups, fd_limit=0, cgroup_fd=-1) -> pid\n\n"
"Clone a child sharing this process's memory (CLONE_VM | CLONE_VFORK plus clone_flags' namespaces), run ops in\n"
"it, then execve(path, argv, envp). Returns once the child has exec'd or failed; a failure is reported on\n"
"errpipe as JSON. ops are tuples (code, flags, step, i0, i1, i2, s0, s1, s2, s3) of ints and bytes/None;\n"
"argv and envp lists of bytes; groups a list of gids for OP_SETGROUPS. With fd_limit > 0 the child shares the\n"
"caller's descriptor table until its first step, which keeps a copy of the descriptors below fd_limit only: every\n"
"descriptor the ops and errpipe name must be below it. With cgroup_fd >= 0 (a cgroup v2 directory) the child is\n"
"born in that cgroup (clone3 CLONE_INTO_CGROUP): no migration, so no wait on the kernel's cgroup_threadgroup_rwsem;\n"
"OSError ENOSYS where that is not built (HAVE_CLONE_INTO_CGROUP), E2BIG or ENOSYS from kernels before 5.7.\n"
"The caller must be single-threaded.");

static PyObject *spawn(PyObject *self, PyObject *args) {
    unsigned long clone_flags;
    int errpipe;
    long deadline_s;
    PyObject *ops, *path_o, *argv_o, *envp_o, *groups_o;
    int fd_limit = 0, cgroup_fd = -1;
    if (!PyArg_ParseTuple(args, "kilO!OO!O!O|ii", &clone_flags, &errpipe, &deadline_s, &PyList_Type, &ops, &path_o,
                          &PyList_Type, &argv_o, &PyList_Type, &envp_o, &groups_o, &fd_limit, &cgroup_fd))
        return NULL;
    if (errpipe < 3 || deadline_s < 1) {
        PyErr_SetString(PyExc_ValueError, "errpipe must be >= 3 and the deadline at least 1 s");
        return NULL;
    }
    if (fd_limit < 0 || (fd_limit > 0 && errpipe >= fd_limit)) {
        PyErr_SetString(PyExc_ValueError, "fd_limit must be 0, or above errpipe");
        return NULL;
    }
    if (!clone_flags_ok(clone_flags)) {
        PyErr_SetString(PyExc_ValueError, "clone_flags: only namespace flags");
        return NULL;
    }
    plan_t pl;
    memset(&pl, 0, sizeof(pl));
    pl.errpipe = errpipe;
    pl.deadline_s = deadline_s;
    pl.fd_limit = fd_limit;
    PyObject *result = NULL;
    char **argv = NULL, **envp = NULL;
    pl.nops = PyList_GET_SIZE(ops);
    pl.ops = PyMem_Calloc((size_t)pl.nops + 1, sizeof(op_t));
    if (!pl.ops) return PyErr_NoMemory();
    for (Py_ssize_t k = 0; k < pl.nops; k++) {
        PyObject *t = PyList_GET_ITEM(ops, k), *step, *s[4];
        op_t *op = &pl.ops[k];
        if (!PyArg_ParseTuple(t, "iiOLLLOOOO", &op->code, &op->flags, &step, &op->i[0], &op->i[1], &op->i[2],
                              &s[0], &s[1], &s[2], &s[3]))
            goto out;
        if (as_cstr(step, &op->step, "step") < 0 || !op->step) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "step: None");
            goto out;
        }
        for (int j = 0; j < 4; j++)
            if (as_cstr(s[j], &op->s[j], op->step) < 0) goto out;
        if (!op_ids_ok(op)) {
            PyErr_Format(PyExc_ValueError, "%s: id %lld out of range", op->step, op->i[0]);
            goto out;
        }
    }
    if (as_cstr(path_o, &pl.path, "path") < 0 || !pl.path) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "path: None");
        goto out;
    }
    if (!(argv = as_argv(argv_o, "argv")) || !(envp = as_argv(envp_o, "envp"))) goto out;
    pl.argv = argv;
    pl.envp = envp;
    if (groups_o != Py_None) {
        PyObject *fast = PySequence_Fast(groups_o, "groups");
        if (!fast) goto out;
        pl.ngroups = PySequence_Fast_GET_SIZE(fast);
        pl.groups = PyMem_Calloc((size_t)pl.ngroups + 1, sizeof(gid_t));
        if (!pl.groups) { Py_DECREF(fast); PyErr_NoMemory(); goto out; }
        for (Py_ssize_t k = 0; k < pl.ngroups; k++) {
            unsigned long g = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, k));
            if (PyErr_Occurred()) { Py_DECREF(fast); goto out; }
            if (g > ID_MAX) {
                Py_DECREF(fast);
                PyErr_Format(PyExc_ValueError, "groups: id %lu out of range", g);
                goto out;
            }
            pl.groups[k] = (gid_t)g;
        }
        Py_DECREF(fast);
    }

    long pid = spawn_clone(&pl, clone_flags, cgroup_fd);
    if (pid < 0) {
        errno = (int)-pid;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    result = PyLong_FromLong(pid);
out:
    PyMem_Free(pl.ops);
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyMem_Free(pl.groups);
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "isolation._spawn", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spawn(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "HAVE_CLONE_INTO_CGROUP", HAVE_CLONE3_VM) < 0) { Py_DECREF(m); return NULL; }
#define C(name) if (PyModule_AddIntConstant(m, #name, name) < 0) { Py_DECREF(m); return NULL; }
    C(OP_SETSID) C(OP_WRITE) C(OP_SETNS_FD) C(OP_SETNS_PATH) C(OP_ENTER_ROOT) C(OP_LOOPBACK_UP)
    C(OP_SETHOSTNAME) C(OP_MOUNT) C(OP_OPEN_ROOT) C(OP_REMOUNT_ROOT_KEEP) C(OP_BIND_BENEATH)
    C(OP_MOUNT_BENEATH) C(OP_SYMLINK_BENEATH) C(OP_PIVOT_ROOT) C(OP_MOVE_ROOT) C(OP_UMASK) C(OP_STDIO)
    C(OP_NO_NEW_PRIVS) C(OP_LL_CREATE) C(OP_LL_RULE) C(OP_LL_RESTRICT) C(OP_CAPBSET) C(OP_KEEPCAPS)
    C(OP_SETGROUPS) C(OP_SETRESGID) C(OP_SETRESUID) C(OP_CAPSET) C(OP_AMBIENT) C(OP_CHDIR) C(OP_CLOSE_FDS)
    C(F_OPTIONAL) C(F_ENOENT_OK) C(F_SKIP_NEXT_ON_SUCCESS) C(F_NO_CREATE) C(F_WANT_DIR) C(F_CTTY) C(F_BORN_IN)
#undef C
    return m;
}
