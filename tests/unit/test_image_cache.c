/* Unit tests of storage/image_cache against an in-process HTTP server: verification, one
 * download for concurrent callers, failures that leave nothing, aging. */
#include "tests/unit/testutil.h"

#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <utime.h>

#include "storage/image_cache.h"
#include "storage/stor_error.h"

typedef struct {
    char *root; /* served files */
    char *cache_dir;
    VnTestHttp *http;
    char *sha; /* of good.qcow2 */
    guint64 size;
} Fixture;

static int setup(void **state)
{
    Fixture *f = g_new0(Fixture, 1);
    g_autofree char *good = NULL;
    g_autofree char *cmd = NULL;
    g_autofree char *evil = NULL;

    f->root = vn_test_tmpdir();
    f->cache_dir = g_build_filename(f->root, "cache", NULL);
    good = g_build_filename(f->root, "good.qcow2", NULL);
    cmd = g_strdup_printf("qemu-img create -q -f qcow2 %s 16M", good);
    assert_true(vn_test_run(cmd));
    f->sha = vn_test_sha256_file(good);
    struct stat st;
    stat(good, &st);
    f->size = (guint64)st.st_size;
    evil = g_build_filename(f->root, "evil.qcow2", NULL);
    g_free(cmd);
    cmd = g_strdup_printf("qemu-img create -q -f qcow2 -F raw -b /etc/hostname %s 1M", evil);
    assert_true(vn_test_run(cmd));
    f->http = vn_test_http_start(f->root, 150);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;

    vn_test_http_stop(f->http);
    vn_test_rmtree(f->root);
    g_free(f->root);
    g_free(f->cache_dir);
    g_free(f->sha);
    g_free(f);
    return 0;
}

static VnImageCache *cache_new_aged(Fixture *f, guint64 max, int min_age_s)
{
    VnImageCacheConfig cfg = { max, 30, 10, NULL, min_age_s };
    g_autoptr(GError) err = NULL;
    VnImageCache *c;

    vn_test_rmtree(f->cache_dir);
    c = vn_image_cache_new(f->cache_dir, &cfg, &err);
    assert_non_null(c);
    return c;
}

static VnImageCache *cache_new(Fixture *f, guint64 max)
{
    return cache_new_aged(f, max, 0);
}

static char *url(Fixture *f, const char *name)
{
    return g_strdup_printf("http://127.0.0.1:%d/%s", vn_test_http_port(f->http), name);
}

/* Nothing but the cache's lock files may be left. */
static void assert_cache_clean(Fixture *f)
{
    g_autoptr(GDir) d = g_dir_open(f->cache_dir, 0, NULL);
    const char *n;

    /* nothing at all: no partial download, no info file, and no lock file either */
    while (d && (n = g_dir_read_name(d)))
        fail_msg("leftover in the cache: %s", n);
}

static void test_download_verified_once(void **state)
{
    Fixture *f = *state;
    g_autoptr(VnImageCache) c = cache_new(f, 1 << 30);
    g_autofree char *u = url(f, "good.qcow2");
    VnImageSource src = { "img-1", u, f->sha, "qcow2", f->size };
    g_autoptr(GError) err = NULL;
    g_autofree char *p1 = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
    g_autofree char *p2 = NULL;
    g_autofree char *sha = NULL;

    if (!p1)
        fail_msg("%s", err->message);
    sha = vn_test_sha256_file(p1);
    assert_string_equal(sha, f->sha);
    /* the second use is served from the cache */
    p2 = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
    assert_string_equal(p1, p2);
    assert_int_equal(vn_test_http_count(f->http, "/good.qcow2"), 1);
    assert_int_equal(vn_image_cache_download_count(c), 1);
    vn_image_cache_release(c, "img-1");
    vn_image_cache_release(c, "img-1");
    /* the same id with another checksum is not the cached image */
    VnImageSource other = src;
    other.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    g_autofree char *p3 = vn_image_cache_acquire(c, &other, NULL, NULL, NULL, &err);
    assert_null(p3);
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_CHECKSUM));
}

typedef struct {
    VnImageCache *c;
    VnImageSource *src;
    char *path;
    GError *err;
} Worker;

static gpointer acquire_thread(gpointer data)
{
    Worker *w = data;

    w->path = vn_image_cache_acquire(w->c, w->src, NULL, NULL, NULL, &w->err);
    return NULL;
}

static void test_concurrent_callers_share_one_download(void **state)
{
    Fixture *f = *state;
    g_autoptr(VnImageCache) c = cache_new(f, 1 << 30);
    g_autofree char *u = url(f, "good.qcow2");
    VnImageSource src = { "img-shared", u, f->sha, "qcow2", f->size };
    Worker w[10];
    GThread *t[10];
    guint before = vn_test_http_count(f->http, "/good.qcow2");

    for (int i = 0; i < 10; i++) {
        w[i] = (Worker){ c, &src, NULL, NULL };
        t[i] = g_thread_new("acquire", acquire_thread, &w[i]);
    }
    for (int i = 0; i < 10; i++) {
        g_thread_join(t[i]);
        assert_null(w[i].err);
        assert_string_equal(w[i].path, w[0].path);
    }
    for (int i = 0; i < 10; i++)
        g_free(w[i].path);
    assert_int_equal(vn_test_http_count(f->http, "/good.qcow2") - before, 1);
}

static void test_failures_leave_nothing(void **state)
{
    Fixture *f = *state;
    g_autoptr(VnImageCache) c = cache_new(f, 1 << 30);
    g_autofree char *good = url(f, "good.qcow2");
    g_autofree char *missing = url(f, "missing.qcow2");
    g_autofree char *evil = url(f, "evil.qcow2");
    g_autofree char *evil_path = g_build_filename(f->root, "evil.qcow2", NULL);
    g_autofree char *evil_sha = vn_test_sha256_file(evil_path);
    struct {
        VnImageSource src;
        int code;
        const char *needle;
    } cases[] = {
        { { "bad-sum", good, "1111111111111111111111111111111111111111111111111111111111111111",
            "qcow2", 0 },
          VN_STOR_ERROR_CHECKSUM,
          "has sha256" },
        { { "bad-size", good, f->sha, "qcow2", f->size + 1 }, VN_STOR_ERROR_CHECKSUM, "bytes" },
        { { "missing", missing, f->sha, "qcow2", 0 }, VN_STOR_ERROR_DOWNLOAD, "HTTP 404" },
        { { "unreachable", "http://127.0.0.1:1/x", f->sha, "qcow2", 0 },
          VN_STOR_ERROR_DOWNLOAD,
          "fetching" },
        { { "evil", evil, evil_sha, "qcow2", 0 }, VN_STOR_ERROR_UNSAFE, "backing file" },
        { { "as-raw", good, f->sha, "raw", 0 }, VN_STOR_ERROR_UNSAFE, "declared raw" },
    };

    for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *p = vn_image_cache_acquire(c, &cases[i].src, NULL, NULL, NULL, &err);
        assert_null(p);
        assert_true(g_error_matches(err, VN_STOR_ERROR, cases[i].code));
        if (!strstr(err->message, cases[i].needle))
            fail_msg("case %zu: '%s' lacks '%s'", i, err->message, cases[i].needle);
    }
    assert_cache_clean(f);
    /* a download larger than the limit stops early */
    g_autoptr(VnImageCache) small = cache_new(f, 4096);
    VnImageSource big = { "big", good, f->sha, "qcow2", 0 };
    g_autoptr(GError) err = NULL;
    g_autofree char *p = vn_image_cache_acquire(small, &big, NULL, NULL, NULL, &err);
    assert_null(p);
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_TOO_LARGE));
    assert_cache_clean(f);
}

/* download_timeout and max_image_size_gb bound the whole download, all attempts together
 * (each attempt used to get the full allowance, three times over). */
static void test_download_budget(void **state)
{
    Fixture *f = *state;
    g_autofree char *drop = url(f, "drop/good.qcow2");
    g_autofree char *trickle = url(f, "trickle/good.qcow2");
    g_autoptr(GError) err = NULL;

    (void)state;
    {
        /* every connection drops half-way: transient, so it is tried again, but the tries
         * together receive at most max_image_size */
        g_autoptr(VnImageCache) c = cache_new(f, f->size);
        VnImageSource src = { "dropping", drop, f->sha, "qcow2", 0 };
        guint64 before = vn_test_http_bytes(f->http);
        g_autofree char *p = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
        assert_null(p);
        assert_non_null(err);
        guint64 sent = vn_test_http_bytes(f->http) - before;
        if (sent > f->size)
            fail_msg("%" G_GUINT64_FORMAT " bytes fetched for a limit of %" G_GUINT64_FORMAT, sent,
                     f->size);
        assert_true(vn_test_http_count(f->http, "/drop/good.qcow2") >= 2); /* it did retry */
        g_clear_error(&err);
        assert_cache_clean(f);
    }
    {
        /* a byte per 100 ms: cut when download_timeout (2 s) is spent, with no new try */
        VnImageCacheConfig cfg = { 1 << 30, 2, 60, NULL, 0 };
        g_autoptr(VnImageCache) c = NULL;
        VnImageSource src = { "trickling", trickle, f->sha, "qcow2", 0 };
        vn_test_rmtree(f->cache_dir);
        c = vn_image_cache_new(f->cache_dir, &cfg, &err);
        assert_non_null(c);
        gint64 t0 = g_get_monotonic_time();
        g_autofree char *p = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
        double took = (g_get_monotonic_time() - t0) / 1e6;
        assert_null(p);
        assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT));
        assert_non_null(strstr(err->message, "download_timeout"));
        if (took > 3.9) /* three tries would take more than 6 s */
            fail_msg("the trickling download took %.1f s for a 2 s limit", took);
        assert_int_equal(vn_test_http_count(f->http, "/trickle/good.qcow2"), 1);
        assert_cache_clean(f);
    }
}

static void test_cancel(void **state)
{
    Fixture *f = *state;
    g_autoptr(VnImageCache) c = cache_new(f, 1 << 30);
    g_autofree char *u = url(f, "good.qcow2");
    VnImageSource src = { "cancelled", u, f->sha, "qcow2", 0 };
    g_autoptr(GCancellable) cancel = g_cancellable_new();
    g_autoptr(GError) err = NULL;
    g_autofree char *p = NULL;

    g_cancellable_cancel(cancel);
    p = vn_image_cache_acquire(c, &src, cancel, NULL, NULL, &err);
    assert_null(p);
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED));
    assert_cache_clean(f);
}

static void age(const char *path, gint64 seconds)
{
    struct utimbuf t;

    t.actime = t.modtime = (time_t)(g_get_real_time() / G_USEC_PER_SEC - seconds);
    assert_int_equal(utime(path, &t), 0);
}

/* Takes the cross-process lock of the base at @base as another host would; returns its fd. */
static int hold_base_lock(const char *base)
{
    g_autofree char *path = g_strconcat(base, ".lock", NULL);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(flock(fd, LOCK_EX), 0);
    return fd;
}

static void drop_base_lock(const char *base, int fd)
{
    g_autofree char *path = g_strconcat(base, ".lock", NULL);

    g_unlink(path);
    close(fd);
}

/* Acquires @src while another holds the base's lock: only a lease can serve it (the check
 * under the lock would wait, and is cancelled at once). */
static char *acquire_while_locked(VnImageCache *c, const VnImageSource *src, GError **err)
{
    g_autoptr(GCancellable) cancel = g_cancellable_new();

    g_cancellable_cancel(cancel);
    return vn_image_cache_acquire(c, src, cancel, NULL, NULL, err);
}

/* A base checked under its lock is used again without the lock for a while (a tenth of
 * aging's minimum age, at most a minute), as long as it is the same file, unchanged, and
 * the request names the same image; without a minimum age, every use is checked. */
static void test_checked_base_leased(void **state)
{
    Fixture *f = *state;
    g_autofree char *u = url(f, "good.qcow2");
    VnImageSource src = { "leased", u, f->sha, "qcow2", f->size };
    VnImageSource other = src;
    g_autoptr(GError) err = NULL;
    guint before = vn_test_http_count(f->http, "/good.qcow2");

    other.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
    {
        g_autoptr(VnImageCache) c = cache_new_aged(f, 1 << 30, 3600);
        g_autofree char *p = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
        g_autofree char *again = NULL;
        g_autofree char *wrong = NULL;
        g_autofree char *changed = NULL;
        g_autofree char *rechecked = NULL;
        int fd;

        if (!p)
            fail_msg("%s", err->message);
        fd = hold_base_lock(p);
        again = acquire_while_locked(c, &src, &err);
        if (!again)
            fail_msg("a base checked a moment ago was checked again: %s", err->message);
        assert_string_equal(again, p);
        assert_int_equal(vn_image_cache_holds(c), 2);
        /* another checksum for the same image is never served by the lease */
        wrong = acquire_while_locked(c, &other, &err);
        assert_null(wrong);
        g_clear_error(&err);
        /* a base changed since (touched by another host) is checked again */
        age(p, 10);
        changed = acquire_while_locked(c, &src, &err);
        assert_null(changed);
        assert_true(g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED));
        g_clear_error(&err);
        drop_base_lock(p, fd);
        rechecked = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
        assert_non_null(rechecked);
        assert_int_equal(vn_image_cache_holds(c), 3);
        assert_int_equal(vn_test_http_count(f->http, "/good.qcow2") - before, 1);
    }
    {
        g_autoptr(VnImageCache) c = cache_new_aged(f, 1 << 30, 0);
        g_autofree char *p = vn_image_cache_acquire(c, &src, NULL, NULL, NULL, &err);
        g_autofree char *again = NULL;
        int fd;

        assert_non_null(p);
        fd = hold_base_lock(p);
        again = acquire_while_locked(c, &src, &err);
        assert_null(again);
        assert_true(g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED));
        drop_base_lock(p, fd);
        assert_int_equal(vn_image_cache_holds(c), 1);
    }
}

static void test_aging(void **state)
{
    Fixture *f = *state;
    g_autoptr(VnImageCache) c = cache_new(f, 1 << 30);
    g_autofree char *u = url(f, "good.qcow2");
    VnImageSource a = { "a", u, f->sha, "qcow2", 0 };
    VnImageSource b = { "b", u, f->sha, "qcow2", 0 };
    VnImageSource d = { "d", u, f->sha, "qcow2", 0 };
    VnImageSource held = { "held", u, f->sha, "qcow2", 0 };
    g_autoptr(GError) err = NULL;
    g_autofree char *pa = vn_image_cache_acquire(c, &a, NULL, NULL, NULL, &err);
    g_autofree char *pb = vn_image_cache_acquire(c, &b, NULL, NULL, NULL, &err);
    g_autofree char *pd = vn_image_cache_acquire(c, &d, NULL, NULL, NULL, &err);
    g_autofree char *ph = vn_image_cache_acquire(c, &held, NULL, NULL, NULL, &err);
    g_autoptr(GHashTable) in_use = g_hash_table_new(g_str_hash, g_str_equal);
    VnImageAgeReport r;

    vn_image_cache_release(c, "a");
    vn_image_cache_release(c, "b");
    vn_image_cache_release(c, "d");
    age(pa, 7200);
    age(pb, 7200);
    age(ph, 7200);
    /* pd is young; pb is named by a disk; ph is held by a build */
    g_hash_table_add(in_use, pb);
    assert_true(vn_image_cache_age(c, in_use, 3600, &r, &err));
    assert_int_equal(r.removed, 1);
    assert_false(g_file_test(pa, G_FILE_TEST_EXISTS));
    assert_true(g_file_test(pb, G_FILE_TEST_EXISTS));
    assert_true(g_file_test(pd, G_FILE_TEST_EXISTS));
    assert_true(g_file_test(ph, G_FILE_TEST_EXISTS));
    assert_int_equal(r.kept_in_use, 2);
    assert_int_equal(r.kept_young, 1);
    assert_true(vn_image_cache_usage(c) > 0);
    vn_image_cache_release(c, "held");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_download_verified_once),
        cmocka_unit_test(test_concurrent_callers_share_one_download),
        cmocka_unit_test(test_failures_leave_nothing),
        cmocka_unit_test(test_download_budget),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_aging),
        cmocka_unit_test(test_checked_base_leased),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
