/* Unit tests of storage/image_inspect and storage/disk: what an image really is, and the
 * policy that refuses unsafe ones.  Real qcow2 files are made with qemu-img. */
#include "tests/unit/testutil.h"

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/disk.h"
#include "storage/image_inspect.h"
#include "storage/qcow2.h"
#include "storage/stor_error.h"

#define GIB (G_GUINT64_CONSTANT(1) << 30)

static void inspect_file(const char *path, VnImageInfo *info)
{
    g_autoptr(GError) err = NULL;

    if (!vn_image_inspect_file(path, info, &err))
        fail_msg("%s: %s", path, err->message);
}

static void test_plain_qcow2(void **state)
{
    g_autofree char *p = g_build_filename(vn_test_dir(), "plain.qcow2", NULL);
    g_autofree char *cmd = g_strdup_printf("qemu-img create -q -f qcow2 %s 64M", p);
    g_autoptr(GError) err = NULL;
    VnImageInfo i;

    (void)state;
    assert_true(vn_test_run(cmd));
    inspect_file(p, &i);
    assert_int_equal(i.format, VN_IMAGE_FORMAT_QCOW2);
    assert_int_equal(i.virtual_size, 64 << 20);
    assert_int_equal(i.qcow2_version, 3);
    assert_false(i.has_backing_file);
    assert_false(i.has_data_file);
    assert_true(vn_image_check(&i, "qcow2", GIB, &err));
    /* declared raw but really qcow2: refused */
    assert_false(vn_image_check(&i, "raw", GIB, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE));
    assert_non_null(strstr(err->message, "declared raw but its content is qcow2"));
    g_clear_error(&err);
    /* too large for the limit */
    assert_false(vn_image_check(&i, "qcow2", 32 << 20, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_TOO_LARGE));
}

static void test_backing_file_refused(void **state)
{
    g_autofree char *p = g_build_filename(vn_test_dir(), "evil.qcow2", NULL);
    g_autofree char *cmd =
        g_strdup_printf("qemu-img create -q -f qcow2 -F raw -b /etc/passwd %s 1M", p);
    g_autoptr(GError) err = NULL;
    g_autofree char *backing = NULL;
    VnImageInfo i;

    (void)state;
    assert_true(vn_test_run(cmd));
    inspect_file(p, &i);
    assert_true(i.has_backing_file);
    assert_false(vn_image_check(&i, "qcow2", GIB, &err));
    assert_non_null(strstr(err->message, "backing file"));
    backing = vn_disk_backing_file(p, &err);
    assert_string_equal(backing, "/etc/passwd");
}

static void test_data_file_refused(void **state)
{
    g_autofree char *p = g_build_filename(vn_test_dir(), "data.qcow2", NULL);
    g_autofree char *d = g_build_filename(vn_test_dir(), "data.raw", NULL);
    g_autofree char *cmd =
        g_strdup_printf("qemu-img create -q -f qcow2 -o data_file=%s %s 1M", d, p);
    g_autoptr(GError) err = NULL;
    VnImageInfo i;

    (void)state;
    assert_true(vn_test_run(cmd));
    inspect_file(p, &i);
    assert_true(i.has_data_file);
    assert_false(vn_image_check(&i, "qcow2", GIB, &err));
    assert_non_null(strstr(err->message, "external data file"));
}

static void test_encrypted_refused(void **state)
{
    g_autofree char *p = g_build_filename(vn_test_dir(), "enc.qcow2", NULL);
    g_autofree char *cmd = g_strdup_printf(
        "qemu-img create -q --object secret,id=s0,data=abc -f qcow2 -o encrypt.format=luks,"
        "encrypt.key-secret=s0 %s 1M",
        p);
    g_autoptr(GError) err = NULL;
    VnImageInfo i;

    (void)state;
    assert_true(vn_test_run(cmd));
    inspect_file(p, &i);
    assert_true(i.encrypted);
    assert_false(vn_image_check(&i, "qcow2", GIB, &err));
}

static guint8 *header_v3(gsize *len)
{
    guint8 *h = g_malloc0(4096);

    memcpy(h, "QFI\xfb", 4);
    h[7] = 3;     /* version */
    h[23] = 16;   /* cluster bits */
    h[28] = 0x10; /* virtual size 256 MiB (big-endian bytes 24-31) */
    h[103] = 104; /* header length */
    *len = 4096;
    return h;
}

static void test_crafted_headers(void **state)
{
    g_autoptr(GError) err = NULL;
    gsize len;
    g_autofree guint8 *h = header_v3(&len);
    VnImageInfo i;

    (void)state;
    assert_true(vn_image_inspect(h, len, len, &i, &err));
    assert_int_equal(i.format, VN_IMAGE_FORMAT_QCOW2);
    /* an unknown incompatible feature bit */
    h[79] = 0x80;
    assert_true(vn_image_inspect(h, len, len, &i, &err));
    assert_false(vn_image_check(&i, "qcow2", G_MAXUINT64, &err));
    assert_non_null(strstr(err->message, "unknown incompatible features"));
    g_clear_error(&err);
    h[79] = 0;
    /* the corrupt bit */
    h[79] = 0x02;
    assert_true(vn_image_inspect(h, len, len, &i, &err));
    assert_true(i.corrupt);
    h[79] = 0;
    /* a header extension that runs past the data */
    h[104] = 0x12;
    h[111] = 0xff;
    h[110] = 0xff;
    assert_false(vn_image_inspect(h, len, len, &i, &err));
    g_clear_error(&err);
    h[104] = h[110] = h[111] = 0;
    /* truncated headers */
    assert_false(vn_image_inspect(h, 50, 50, &i, &err));
    g_clear_error(&err);
    assert_false(vn_image_inspect(h, 90, 90, &i, &err));
    g_clear_error(&err);
    /* an absurd header length */
    h[103] = 3;
    assert_false(vn_image_inspect(h, len, len, &i, &err));
    g_clear_error(&err);
    /* cluster bits out of range */
    h[103] = 104;
    h[23] = 40;
    assert_false(vn_image_inspect(h, len, len, &i, &err));
}

static void put_be32(guint8 *p, guint32 v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

/* A header read from a file is read past its first page when it goes on past it: an
 * external data file named by an extension after a long one, and a backing file named
 * past the page, are found as in the whole window; an extension running past the window
 * still fails. */
static void test_header_past_first_page(void **state)
{
    g_autofree char *p = g_build_filename(vn_test_dir(), "long.qcow2", NULL);
    g_autoptr(GError) err = NULL;
    g_autofree char *backing = NULL;
    gsize len;
    g_autofree guint8 *h = header_v3(&len);
    guint8 *f = g_malloc0(VN_IMAGE_HEADER_BYTES);
    VnImageInfo i;

    (void)state;
    memcpy(f, h, len);
    put_be32(f + 104, 0x12345678); /* an unknown extension of 6000 bytes */
    put_be32(f + 108, 6000);
    put_be32(f + 112 + 6000, 0x44415441); /* then the data file extension */
    put_be32(f + 116 + 6000, 8);
    memcpy(f + 120 + 6000, "data.raw", 8);
    /* (the end marker follows: zeros) */
    f[14] = 0x30; /* backing file at 12288 (bytes 8-15), 8 bytes long (16-19) */
    f[19] = 8;
    memcpy(f + 0x3000, "base.img", 8);
    assert_true(g_file_set_contents(p, (const char *)f, VN_IMAGE_HEADER_BYTES, &err));
    inspect_file(p, &i);
    assert_int_equal(i.format, VN_IMAGE_FORMAT_QCOW2);
    assert_true(i.has_data_file);
    assert_true(i.has_backing_file);
    backing = vn_disk_backing_file(p, &err);
    assert_string_equal(backing, "base.img");

    /* an extension that runs past the whole window */
    put_be32(f + 108, VN_IMAGE_HEADER_BYTES);
    assert_true(g_file_set_contents(p, (const char *)f, VN_IMAGE_HEADER_BYTES, &err));
    assert_false(vn_image_inspect_file(p, &i, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE));
    g_free(f);
}

static void test_other_formats_detected(void **state)
{
    static const struct {
        const char *magic;
        gsize at;
        VnImageFormat f;
    } cases[] = {
        { "KDMV", 0, VN_IMAGE_FORMAT_VMDK },
        { "# Disk DescriptorFile", 0, VN_IMAGE_FORMAT_VMDK },
        { "vhdxfile", 0, VN_IMAGE_FORMAT_VHDX },
        { "conectix", 0, VN_IMAGE_FORMAT_VPC },
        { "QED", 0, VN_IMAGE_FORMAT_QED },
        { "LUKS\xba\xbe", 0, VN_IMAGE_FORMAT_LUKS },
        { "\x7f\x10\xda\xbe", 0x40, VN_IMAGE_FORMAT_VDI },
    };
    guint8 buf[512];
    VnImageInfo i;
    g_autoptr(GError) err = NULL;

    (void)state;
    for (gsize c = 0; c < G_N_ELEMENTS(cases); c++) {
        memset(buf, 0, sizeof(buf));
        memcpy(buf + cases[c].at, cases[c].magic, strlen(cases[c].magic) + 1);
        assert_true(vn_image_inspect(buf, sizeof(buf), sizeof(buf), &i, &err));
        assert_int_equal(i.format, cases[c].f);
        assert_false(vn_image_check(&i, "raw", G_MAXUINT64, &err));
        g_clear_error(&err);
    }
    memset(buf, 0x55, sizeof(buf));
    assert_true(vn_image_inspect(buf, sizeof(buf), 1 << 20, &i, &err));
    assert_int_equal(i.format, VN_IMAGE_FORMAT_RAW);
    assert_int_equal(i.virtual_size, 1 << 20);
    assert_true(vn_image_check(&i, "raw", G_MAXUINT64, &err));
}

static void test_overlay(void **state)
{
    g_autofree char *base = g_build_filename(vn_test_dir(), "base.qcow2", NULL);
    g_autofree char *over = g_build_filename(vn_test_dir(), "overlay", NULL);
    g_autofree char *small = g_build_filename(vn_test_dir(), "small", NULL);
    g_autofree char *cmd = g_strdup_printf("qemu-img create -q -f qcow2 %s 64M", base);
    g_autoptr(GError) err = NULL;
    g_autofree char *backing = NULL;
    guint64 size = 0;

    struct stat st;

    (void)state;
    assert_true(vn_test_run(cmd));
    umask(022); /* the modes below hold whatever the process umask */
    assert_true(vn_disk_create_overlay(over, base, "qcow2", GIB, NULL, &err));
    assert_int_equal(stat(over, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_true(vn_disk_virtual_size(over, &size, &err));
    assert_int_equal(size, GIB);
    backing = vn_disk_backing_file(over, &err);
    assert_string_equal(backing, base);
    assert_true(vn_disk_allocated(over) < 1 << 20); /* thin */
    /* an overlay smaller than its base is refused, and nothing is made */
    assert_false(vn_disk_create_overlay(small, base, "qcow2", 1 << 20, NULL, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_INVALID));
    assert_false(g_file_test(small, G_FILE_TEST_EXISTS));
    g_clear_error(&err);
    assert_true(vn_disk_create_blank(small, 8 << 20, NULL, &err));
    assert_int_equal(stat(small, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_true(vn_disk_virtual_size(small, &size, &err));
    assert_int_equal(size, 8 << 20);
    g_autofree char *none = vn_disk_backing_file(small, &err);
    assert_null(none);
}

/* The disks written in-process are qcow2 as QEMU reads it: qemu-img check finds nothing
 * wrong, before and after QEMU writes into them, they read as their base (the same
 * contents as an overlay qemu-img makes), and sizes round and stop as qemu-img's do. */
/* Runs the command printf'd from @fmt, as vn_test_run (no shell). */
static gboolean run_f(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static gboolean run_f(const char *fmt, ...)
{
    va_list ap;
    g_autofree char *cmd = NULL;

    va_start(ap, fmt);
    cmd = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    return vn_test_run(cmd);
}

static void test_disks_are_qemus(void **state)
{
    const char *d = vn_test_dir();
    g_autofree char *base = g_build_filename(d, "q-base.qcow2", NULL);
    g_autofree char *mine = g_build_filename(d, "q-mine", NULL);
    g_autofree char *theirs = g_build_filename(d, "q-theirs", NULL);
    g_autoptr(GError) err = NULL;
    guint64 size = 0;

    (void)state;
    assert_true(run_f("qemu-img create -q -f qcow2 %s 64M", base));
    assert_true(run_f("qemu-io -c 'write -q -P 0x5a 1M 2M' %s", base));
    assert_true(vn_disk_create_overlay(mine, base, "qcow2", GIB, NULL, &err));
    assert_true(run_f("qemu-img create -q -f qcow2 -F qcow2 -b %s %s 1G", base, theirs));
    assert_true(run_f("qemu-img check -q %s", mine));
    assert_true(run_f("qemu-img compare -q %s %s", mine, theirs));
    /* QEMU writes into it (past an L2 table's 512 MiB too), then reads back what it wrote
     * and what the base holds (qemu-io fails on a pattern that does not match) */
    assert_true(
        run_f("qemu-io -c 'write -q -P 0xa5 0 64k' -c 'write -q -P 0xc3 600M 1M' %s", mine));
    assert_true(run_f("qemu-io -c 'read -q -P 0xa5 0 64k' -c 'read -q -P 0x5a 1M 2M' "
                      "-c 'read -q -P 0xc3 600M 1M' -c 'read -q -P 0 700M 1M' %s",
                      mine));
    assert_false(run_f("qemu-io -c 'read -q -P 0x77 0 64k' %s", mine)); /* it can fail */
    assert_true(run_f("qemu-img check -q %s", mine));

    /* sizes: rounded up to a sector; an L1 table of more than one entry; 4 TiB at most */
    const guint64 sizes[] = { 1000, (512ull << 20) + 1, 3ull << 40, 4ull << 40 };
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        g_autofree char *p = g_strdup_printf("%s/q-size-%u", d, i);
        assert_true(vn_disk_create_blank(p, sizes[i], NULL, &err));
        assert_true(vn_disk_virtual_size(p, &size, &err));
        assert_int_equal(size, (sizes[i] + 511) / 512 * 512);
        assert_true(run_f("qemu-img check -q %s", p));
    }
    g_autofree char *big = g_build_filename(d, "q-big", NULL);
    assert_false(vn_disk_create_blank(big, (4ull << 40) + 512, NULL, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_INVALID));
    assert_false(g_file_test(big, G_FILE_TEST_EXISTS));
    g_clear_error(&err);
    /* an existing file is never overwritten */
    assert_false(vn_disk_create_blank(mine, GIB, NULL, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_IO));
    assert_true(run_f("qemu-io -c 'read -q -P 0xa5 0 64k' %s", mine));
}

/* A cancelled caller (a delete during the build) stops waiting: the worker is freed. */
static void test_disk_cancelled(void **state)
{
    g_autofree char *path = g_build_filename(vn_test_dir(), "cancelled", NULL);
    g_autoptr(GCancellable) cancel = g_cancellable_new();
    g_autoptr(GError) err = NULL;

    (void)state;
    g_cancellable_cancel(cancel);
    assert_false(vn_disk_create_blank(path, 8 << 20, cancel, &err));
    assert_true(g_error_matches(err, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED));
}

/* The writers' threads: which wrote each disk, and one writer held until released. */
static GMutex writers_lock;
static GCond writers_cond;
static GHashTable *writer_tids; /* under writers_lock */
static gboolean writer_held;    /* under writers_lock: a disk whose name starts "hung" waits */
static guint writes_finished;   /* under writers_lock */

static gboolean recording_writer(const char *path, guint64 size, const char *backing,
                                 const char *backing_format, GError **error)
{
    g_autofree char *name = g_path_get_basename(path);

    g_mutex_lock(&writers_lock);
    g_hash_table_add(writer_tids, GINT_TO_POINTER(gettid()));
    while (writer_held && g_str_has_prefix(name, "hung"))
        g_cond_wait(&writers_cond, &writers_lock);
    g_mutex_unlock(&writers_lock);
    gboolean ok = vn_qcow2_create(path, size, backing, backing_format, error);
    g_mutex_lock(&writers_lock);
    writes_finished++;
    g_cond_broadcast(&writers_cond);
    g_mutex_unlock(&writers_lock);
    return ok;
}

/* Disks written one after another reuse the writers' threads instead of making one each. */
static void test_disk_writers_kept(void **state)
{
    (void)state;
    writer_tids = g_hash_table_new(NULL, NULL);
    vn_disk_set_writer(recording_writer);
    for (int i = 0; i < 20; i++) {
        g_autofree char *name = g_strdup_printf("kept%d", i);
        g_autofree char *p = g_build_filename(vn_test_dir(), name, NULL);
        g_autoptr(GError) err = NULL;
        assert_true(vn_disk_create_blank(p, 8 << 20, NULL, &err));
    }
    vn_disk_set_writer(NULL);
    /* a thread may start while the one before goes back to wait: a few, not twenty */
    assert_in_range(g_hash_table_size(writer_tids), 1, 4);
    g_hash_table_destroy(writer_tids);
}

typedef struct {
    GCancellable *cancel;
    gboolean ok;
    GError *error;
} HungCall;

static gpointer hung_call(gpointer data)
{
    HungCall *h = data;
    g_autofree char *p = g_build_filename(vn_test_dir(), "hung", NULL);

    h->ok = vn_disk_create_blank(p, 8 << 20, h->cancel, &h->error);
    return NULL;
}

/* Cancels a call still running after 20 s, unless told it ended (writers_lock, done). */
typedef struct {
    GCancellable *cancel;
    gboolean done;
} Bound;

static gpointer cancel_later(gpointer data)
{
    Bound *b = data;
    gint64 end = g_get_monotonic_time() + 20 * G_TIME_SPAN_SECOND;

    g_mutex_lock(&writers_lock);
    while (!b->done && g_cond_wait_until(&writers_cond, &writers_lock, end))
        ;
    if (!b->done)
        g_cancellable_cancel(b->cancel);
    g_mutex_unlock(&writers_lock);
    return NULL;
}

/* A write pinned by a hung file system holds one thread: the next disk is written by another
 * at once, and the caller of the pinned one is freed by its cancel. */
static void test_disk_hung_writer_pins_one_thread(void **state)
{
    HungCall h = { .cancel = g_cancellable_new() };
    g_autofree char *next = g_build_filename(vn_test_dir(), "next", NULL);
    g_autoptr(GCancellable) bound_cancel = g_cancellable_new();
    Bound bound = { .cancel = bound_cancel };
    g_autoptr(GError) err = NULL;
    VnImageInfo i;

    (void)state;
    writer_tids = g_hash_table_new(NULL, NULL);
    writer_held = TRUE;
    vn_disk_set_writer(recording_writer);
    GThread *caller = g_thread_new("hung-caller", hung_call, &h);
    g_usleep(G_USEC_PER_SEC / 5);
    /* bounded, so that a writer queued behind the hung one fails here rather than in 120 s */
    GThread *bounder = g_thread_new("bound", cancel_later, &bound);
    gboolean ok = vn_disk_create_blank(next, 8 << 20, bound_cancel, &err);
    g_mutex_lock(&writers_lock);
    bound.done = TRUE;
    g_cond_broadcast(&writers_cond);
    g_mutex_unlock(&writers_lock);
    g_thread_join(bounder);
    if (!ok)
        fail_msg("the next disk: %s", err->message);
    inspect_file(next, &i);
    assert_int_equal(i.virtual_size, 8 << 20);

    g_cancellable_cancel(h.cancel);
    g_thread_join(caller);
    assert_false(h.ok);
    assert_true(g_error_matches(h.error, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED));

    /* the released writer ends its write before the test's folder goes */
    g_mutex_lock(&writers_lock);
    guint finished = writes_finished;
    writer_held = FALSE;
    g_cond_broadcast(&writers_cond);
    while (writes_finished == finished)
        g_cond_wait(&writers_cond, &writers_lock);
    g_mutex_unlock(&writers_lock);
    vn_disk_set_writer(NULL);
    g_hash_table_destroy(writer_tids);
    g_clear_error(&h.error);
    g_object_unref(h.cancel);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_qcow2),
        cmocka_unit_test(test_backing_file_refused),
        cmocka_unit_test(test_data_file_refused),
        cmocka_unit_test(test_encrypted_refused),
        cmocka_unit_test(test_crafted_headers),
        cmocka_unit_test(test_other_formats_detected),
        cmocka_unit_test(test_overlay),
        cmocka_unit_test(test_disk_cancelled),
        cmocka_unit_test(test_disks_are_qemus),
        cmocka_unit_test(test_header_past_first_page),
        cmocka_unit_test(test_disk_writers_kept),
        cmocka_unit_test(test_disk_hung_writer_pins_one_thread),
    };
    return cmocka_run_group_tests(tests, vn_test_dir_setup, vn_test_dir_teardown);
}
