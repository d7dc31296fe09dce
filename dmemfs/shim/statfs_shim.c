/*
 * LD_PRELOAD shim for `dmemfs as-cgroup2 --statfs`: statfs(2)/fstatfs(2) report
 * CGROUP2_SUPER_MAGIC for paths and descriptors under the directories listed (colon
 * separated, absolute and symlink-free) in DMEMFS_CGROUP2_ROOTS, and are unchanged for
 * everything else. It cannot help statically linked programs or Go programs, which make
 * the system call themselves.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#define CGROUP2_SUPER_MAGIC 0x63677270

static int under_roots(const char *real)
{
	const char *roots = getenv("DMEMFS_CGROUP2_ROOTS");
	const char *p = roots;

	if (!roots || !real)
		return 0;
	while (*p) {
		const char *end = strchr(p, ':');
		size_t len = end ? (size_t)(end - p) : strlen(p);

		while (len > 1 && p[len - 1] == '/')
			len--;
		if (len && strncmp(real, p, len) == 0 && (real[len] == '\0' || real[len] == '/'))
			return 1;
		if (!end)
			break;
		p = end + 1;
	}
	return 0;
}

static int path_under_roots(const char *path)
{
	char real[PATH_MAX];

	return path && realpath(path, real) && under_roots(real);
}

static int fd_under_roots(int fd)
{
	char link[64], target[PATH_MAX];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0)
		return 0;
	target[n] = '\0';
	return under_roots(target);
}

#define WRAP(name, arg_t, buf_t, check)                                          \
	int name(arg_t arg, buf_t *buf)                                          \
	{                                                                        \
		static int (*real)(arg_t, buf_t *);                              \
		int ret;                                                         \
		if (!real)                                                       \
			real = (int (*)(arg_t, buf_t *))dlsym(RTLD_NEXT, #name); \
		ret = real(arg, buf);                                            \
		if (ret == 0 && check(arg))                                      \
			buf->f_type = CGROUP2_SUPER_MAGIC;                       \
		return ret;                                                      \
	}

WRAP(statfs, const char *, struct statfs, path_under_roots)
WRAP(fstatfs, int, struct statfs, fd_under_roots)
WRAP(statfs64, const char *, struct statfs64, path_under_roots)
WRAP(fstatfs64, int, struct statfs64, fd_under_roots)
