/*
 * A test program in the style of the kernel's cgroup dmem selftest, written for dmemfs's
 * emulation of the dmem_selftest module: it finds cgroup2 in /proc/self/mounts, charges
 * through /sys/kernel/debug/dmem_selftest/{charge,uncharge} from inside nested cgroups and
 * checks dmem.current. Prints one "ok"/"not ok" line per check group; exits 0 when all pass.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REGION "dmem_selftest"
#define CHARGE "/sys/kernel/debug/dmem_selftest/charge"
#define UNCHARGE "/sys/kernel/debug/dmem_selftest/uncharge"

static char root[4096];
static int failures;

#define CHECK(cond, ...)                                                      \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "  failed: %s: ", #cond);             \
			fprintf(stderr, __VA_ARGS__);                         \
			fprintf(stderr, "\n");                                \
			return -1;                                            \
		}                                                             \
	} while (0)

/* Write a whole string with one write(); returns 0 or -errno. */
static int put(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;
	int err;

	if (fd < 0)
		return -errno;
	n = write(fd, text, strlen(text));
	err = n < 0 ? -errno : 0;
	close(fd);
	return err;
}

static int get(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static void join(char *out, const char *dir, const char *name)
{
	snprintf(out, 4096, "%s/%s", dir, name);
}

/* The value of REGION in a dmem.* file: bytes, -1 for "max", -2 when missing. */
static long long region_value(const char *cg, const char *file)
{
	char path[4096], buf[4096], *line, *save = NULL;

	join(path, cg, file);
	if (get(path, buf, sizeof(buf)))
		return -2;
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *value = strchr(line, ' ');

		if (!value)
			continue;
		*value++ = '\0';
		if (strcmp(line, REGION))
			continue;
		return strcmp(value, "max") ? strtoll(value, NULL, 10) : -1;
	}
	return -2;
}

static int set_limit(const char *cg, const char *file, const char *value)
{
	char path[4096], text[128];

	join(path, cg, file);
	snprintf(text, sizeof(text), "%s %s\n", REGION, value);
	return put(path, text);
}

static int enter(const char *cg)
{
	char path[4096];

	join(path, cg, "cgroup.procs");
	return put(path, "0\n");
}

static int charge(unsigned long long bytes)
{
	char text[32];

	snprintf(text, sizeof(text), "%llu\n", bytes);
	return put(CHARGE, text);
}

static int make(char *out, const char *parent, const char *name, int enable)
{
	char path[4096];

	join(out, parent, name);
	if (mkdir(out, 0755) && errno != EEXIST)
		return -errno;
	if (!enable)
		return 0;
	join(path, out, "cgroup.subtree_control");
	return put(path, "+dmem");
}

static int find_cgroup2_root(void)
{
	FILE *f = fopen("/proc/self/mounts", "r");
	char dev[256], dir[4096], type[64];
	int found = 0;

	if (!f)
		return -1;
	while (fscanf(f, "%255s %4095s %63s %*[^\n]", dev, dir, type) == 3)
		if (!strcmp(type, "cgroup2")) {
			strcpy(root, dir);
			found = 1;
			break;
		}
	fclose(f);
	return found ? 0 : -1;
}

static int test_max(void)
{
	static const char *const max[] = { "75K", "25K", "8K", "0" };
	static const unsigned long long over[] = { 75 * 1024 + 1, 25 * 1024 + 1, 8 * 1024 + 1, 1 };
	char a[4096], b[4096], leaf[4096], name[32];
	int i;

	CHECK(!make(a, root, "sel_max_a", 1), "mkdir A");
	CHECK(!make(b, a, "sel_max_b", 1), "mkdir A/B");
	CHECK(!set_limit(b, "dmem.max", "1M"), "B dmem.max");
	CHECK(region_value(b, "dmem.max") == 1 << 20, "B dmem.max reads back");
	for (i = 0; i < 4; i++) {
		long long before;
		int err;

		snprintf(name, sizeof(name), "leaf%d", i);
		CHECK(!make(leaf, b, name, 0), "mkdir %s", name);
		CHECK(!set_limit(leaf, "dmem.max", max[i]), "%s dmem.max", name);
		CHECK(!enter(leaf), "enter %s", name);
		before = region_value(leaf, "dmem.current");
		err = charge(over[i]);
		CHECK(err == -EAGAIN, "%s: charging %llu over max gave %d", name, over[i], err);
		CHECK(region_value(leaf, "dmem.current") == before, "%s: current changed", name);
		if (over[i] > 1) {
			CHECK(!charge(4096), "%s: charge 4096", name);
			CHECK(region_value(leaf, "dmem.current") == before + 4096, "%s current", name);
			CHECK(region_value(b, "dmem.current") == before + 4096, "%s parent", name);
			CHECK(!put(UNCHARGE, "\n"), "%s: uncharge", name);
			CHECK(region_value(leaf, "dmem.current") == before, "%s: back", name);
		}
		CHECK(!enter(root), "leave %s", name);
		rmdir(leaf);
	}
	rmdir(b);
	rmdir(a);
	return 0;
}

static int test_protection(const char *file)
{
	char cg[4096];

	CHECK(!make(cg, root, "sel_prot", 0), "mkdir");
	CHECK(!set_limit(cg, file, "16K"), "%s", file);
	CHECK(region_value(cg, file) == 16384, "%s reads back", file);
	CHECK(!enter(cg), "enter");
	CHECK(!charge(12345), "charge 12345");
	CHECK(region_value(cg, "dmem.current") == 12345, "current after charge");
	CHECK(charge(1) == -EBUSY, "a second outstanding charge is EBUSY");
	CHECK(!put(UNCHARGE, "\n"), "uncharge");
	CHECK(put(UNCHARGE, "\n") == -EINVAL, "uncharge with nothing charged is EINVAL");
	CHECK(region_value(cg, "dmem.current") == 0, "current after uncharge");
	CHECK(!enter(root), "leave");
	CHECK(!rmdir(cg), "rmdir");
	return 0;
}

static int test_byte_granularity(void)
{
	static const unsigned long long sizes[] = { 1, 4095, 4097, 12345 };
	char cg[4096];
	unsigned i;

	CHECK(!make(cg, root, "sel_bytes", 0), "mkdir");
	CHECK(!set_limit(cg, "dmem.max", "8M"), "dmem.max");
	CHECK(!enter(cg), "enter");
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		CHECK(!charge(sizes[i]), "charge %llu", sizes[i]);
		CHECK(region_value(cg, "dmem.current") == (long long)sizes[i], "exact bytes");
		CHECK(!put(UNCHARGE, "\n"), "uncharge");
		CHECK(region_value(cg, "dmem.current") == 0, "back to 0");
	}
	CHECK(charge(0) == -EINVAL, "charging 0 bytes is EINVAL");
	CHECK(!enter(root), "leave");
	CHECK(!rmdir(cg), "rmdir");
	return 0;
}

static void report(int n, const char *name, int result)
{
	printf("%s %d %s\n", result ? "not ok" : "ok", n, name);
	failures += result != 0;
}

int main(void)
{
	char path[4096], buf[4096], first[256];

	if (find_cgroup2_root()) {
		fprintf(stderr, "no cgroup2 in /proc/self/mounts\n");
		return 2;
	}
	join(path, root, "dmem.capacity");
	if (get(path, buf, sizeof(buf)) || sscanf(buf, "%255s", first) != 1 ||
	    strcmp(first, REGION)) {
		fprintf(stderr, "the first region in dmem.capacity is not %s\n", REGION);
		return 2;
	}
	join(path, root, "cgroup.subtree_control");
	if (put(path, "+dmem")) {
		fprintf(stderr, "cannot enable dmem\n");
		return 2;
	}
	printf("1..4\n");
	report(1, "dmem.max", test_max());
	report(2, "dmem.min", test_protection("dmem.min"));
	report(3, "dmem.low", test_protection("dmem.low"));
	report(4, "byte granularity", test_byte_granularity());
	return failures ? 1 : 0;
}
