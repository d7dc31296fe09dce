/*
 * dmemfs._fusereq: who sent the FUSE request being handled, and with which file flags.
 *
 * pyfuse3 hands its write() handler only (fh, offset, data), but every FUSE request carries
 * the calling thread's id in its header (struct fuse_in_header.pid, filled by the kernel's
 * fuse_fill_in_header from `current`), and a WRITE request carries the open file's flags at
 * the time of the write (struct fuse_write_in.flags = file->f_flags, so an O_NONBLOCK set
 * with fcntl(F_SETFL) after open() shows there). The kernel acts on `current` and on those
 * flags; dmemfs needs both to do the same.
 *
 * A READ request's read_flags tell a read() of a direct-I/O file (FUSE_READ_LOCKOWNER, set by
 * fuse_send_read) from a READ the kernel makes to fill its page cache (splice, sendfile,
 * mmap): dmemfs/fs/splice.py treats those differently.
 *
 * This module defines fuse_session_process_buf(). Loaded with RTLD_GLOBAL before pyfuse3,
 * it takes precedence over libfuse's definition for pyfuse3's calls (the global scope is
 * searched first), records the header of each request kept in memory, and calls libfuse's
 * own function. pyfuse3 runs the Python handler of a request right after
 * fuse_session_process_buf() returns, in the same task and before any other request is
 * processed by that task, so a handler that reads last() before its first await sees its
 * own request.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

/* include/uapi/linux/fuse.h */
#define FUSE_READ 15
#define FUSE_WRITE 16
#define FUSE_READ_LOCKOWNER (1 << 1)

struct in_header {
    uint32_t len;
    uint32_t opcode;
    uint64_t unique;
    uint64_t nodeid;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint16_t total_extlen;
    uint16_t padding;
};

struct write_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t write_flags;
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

struct read_in {
    uint64_t fh;
    uint64_t offset;
    uint32_t size;
    uint32_t read_flags;
    uint64_t lock_owner;
    uint32_t flags;
    uint32_t padding;
};

/* The leading fields of libfuse 3's struct fuse_buf (fuse_common.h). */
#define BUF_IS_FD (1 << 1)
struct buf_head {
    size_t size;
    int flags;
    void *mem;
};

typedef void (*process_buf_fn)(void *se, const struct buf_head *buf);

static process_buf_fn real_process_buf;
static int seen;        /* last request's header was readable */
static struct in_header last_header;
static int last_is_write;
static struct write_in last_write;
static int last_is_read;
static struct read_in last_read_in;
static unsigned long long nr_requests;

static process_buf_fn find_real(void)
{
    void *lib = dlopen("libfuse3.so.3", RTLD_LAZY | RTLD_NOLOAD);
    process_buf_fn fn = NULL;

    if (lib != NULL)
        fn = (process_buf_fn)dlvsym(lib, "fuse_session_process_buf", "FUSE_3.0");
    if (fn == NULL)
        fn = (process_buf_fn)dlsym(RTLD_NEXT, "fuse_session_process_buf");
    return fn;
}

void fuse_session_process_buf(void *se, const struct buf_head *buf)
{
    if (real_process_buf == NULL)
        real_process_buf = find_real();
    nr_requests++;
    seen = 0;
    last_is_write = 0;
    last_is_read = 0;
    if (!(buf->flags & BUF_IS_FD) && buf->mem != NULL && buf->size >= sizeof(last_header)) {
        memcpy(&last_header, buf->mem, sizeof(last_header));
        seen = 1;
        if (last_header.opcode == FUSE_WRITE &&
            buf->size >= sizeof(last_header) + sizeof(last_write)) {
            memcpy(&last_write, (const char *)buf->mem + sizeof(last_header), sizeof(last_write));
            last_is_write = 1;
        } else if (last_header.opcode == FUSE_READ &&
                   buf->size >= sizeof(last_header) + sizeof(last_read_in)) {
            memcpy(&last_read_in, (const char *)buf->mem + sizeof(last_header),
                   sizeof(last_read_in));
            last_is_read = 1;
        }
    }
    if (real_process_buf != NULL)
        real_process_buf(se, buf);
}

static PyObject *last(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (!seen)
        Py_RETURN_NONE;
    return Py_BuildValue("(IKKIIIiKI)", last_header.opcode, (unsigned long long)last_header.unique,
                         (unsigned long long)last_header.nodeid, last_header.uid,
                         last_header.gid, last_header.pid, last_is_write,
                         (unsigned long long)(last_is_write ? last_write.fh : 0),
                         last_is_write ? last_write.flags : 0u);
}

static PyObject *last_read(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    if (!seen || !last_is_read)
        Py_RETURN_NONE;
    return Py_BuildValue("(KKII)", (unsigned long long)last_read_in.fh,
                         (unsigned long long)last_read_in.offset, last_read_in.size,
                         last_read_in.read_flags);
}

static PyObject *active(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromUnsignedLongLong(nr_requests);
}

static PyMethodDef methods[] = {
    {"last", last, METH_NOARGS,
     "(opcode, unique, nodeid, uid, gid, pid, is_write, fh, flags) of the request being "
     "handled, or None when its header could not be read."},
    {"last_read", last_read, METH_NOARGS,
     "(fh, offset, size, read_flags) of the READ request being handled, or None."},
    {"requests_seen", active, METH_NOARGS,
     "How many requests went through the interposed fuse_session_process_buf()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fusereq", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fusereq(void)
{
    return PyModule_Create(&module);
}
