/* storage/disk.c - instance disks (see disk.h). */
#include <errno.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "storage/disk.h"
#include "storage/image_inspect.h"
#include "storage/qcow2.h"
#include "storage/stor_error.h"

/* Writing a disk on a local or NFS-backed folder takes milliseconds; a write this long means
 * a hung mount or device. */
#define CREATE_TIMEOUT_S 120

/* One disk being written by a thread of the writers' pool, so that a hung mount pins that
 * thread rather than the caller.  Shared by the two until both let go (ref, atomic); the
 * rest is immutable but for done, ok and error, under lock. */
typedef struct {
    gint ref;
    char *path;
    char *backing; /* NULL: a blank disk */
    char *backing_format;
    guint64 size;
    GMutex lock;
    GCond cond;
    gboolean done;
    gboolean ok;
    GError *error;
} Create;

static void create_unref(Create *c)
{
    if (!g_atomic_int_dec_and_test(&c->ref))
        return;
    g_free(c->path);
    g_free(c->backing);
    g_free(c->backing_format);
    g_clear_error(&c->error);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
    g_free(c);
}

/* Set by tests only, before any disk is written or while none is (atomic). */
static VnDiskWriter writer = vn_qcow2_create;

void vn_disk_set_writer(VnDiskWriter w)
{
    g_atomic_pointer_set(&writer, w ? w : vn_qcow2_create);
}

static void create_task(gpointer data, gpointer unused)
{
    Create *c = data;
    VnDiskWriter write = g_atomic_pointer_get(&writer);
    GError *err = NULL;
    gboolean ok = write(c->path, c->size, c->backing, c->backing_format, &err);

    (void)unused;
    g_mutex_lock(&c->lock);
    c->ok = ok;
    c->error = err;
    c->done = TRUE;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    create_unref(c);
}

/* The writers: without a limit, so that a disk never waits behind one pinned by a hung mount
 * (a task finding no idle thread of the pool starts one), and shared with GLib's other
 * pools, so that the thread a disk was written by is kept for the next one instead of
 * being made and ended for each.  Made once, never freed. */
static GThreadPool *writers(void)
{
    static gsize once;
    static GThreadPool *pool;

    if (g_once_init_enter(&once)) {
        pool = g_thread_pool_new(create_task, NULL, -1, FALSE, NULL);
        g_once_init_leave(&once, 1);
    }
    return pool;
}

/* vn_qcow2_create, given up on when @cancel fires or after CREATE_TIMEOUT_S. */
static gboolean create_disk(const char *path, guint64 size, const char *backing,
                            const char *backing_format, GCancellable *cancel, GError **error)
{
    Create *c = g_new0(Create, 1);
    gint64 end = g_get_monotonic_time() + CREATE_TIMEOUT_S * G_TIME_SPAN_SECOND;
    gboolean ok = FALSE;

    c->ref = 2;
    c->path = g_strdup(path);
    c->backing = g_strdup(backing);
    c->backing_format = g_strdup(backing_format);
    c->size = size;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    if (!g_thread_pool_push(writers(), c, error)) {
        create_unref(c); /* the task's reference: it never ran */
        create_unref(c);
        return FALSE;
    }
    g_mutex_lock(&c->lock);
    while (!c->done && g_get_monotonic_time() < end && !g_cancellable_is_cancelled(cancel))
        g_cond_wait_until(&c->cond, &c->lock,
                          MIN(end, g_get_monotonic_time() + G_TIME_SPAN_SECOND / 10));
    if (c->done) {
        ok = c->ok;
        if (!ok)
            g_propagate_error(error, g_steal_pointer(&c->error));
    } else if (g_cancellable_is_cancelled(cancel)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_CANCELLED, "writing '%s': cancelled", path);
    } else {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TIMEOUT,
                    "writing '%s' took more than %d s: is its file system hung?", path,
                    CREATE_TIMEOUT_S);
    }
    g_mutex_unlock(&c->lock);
    create_unref(c);
    return ok;
}

gboolean vn_disk_virtual_size(const char *path, guint64 *out, GError **error)
{
    VnImageInfo info;

    if (!vn_image_inspect_file(path, &info, error))
        return FALSE;
    *out = info.virtual_size;
    return TRUE;
}

gboolean vn_disk_create_overlay(const char *path, const char *base, const char *base_format,
                                guint64 size, GCancellable *cancel, GError **error)
{
    guint64 base_size = 0;
    if (!vn_disk_virtual_size(base, &base_size, error))
        return FALSE;
    if (size == 0)
        size = base_size;
    if (size < base_size) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                    "the disk (%" G_GUINT64_FORMAT
                    " bytes) would be smaller than its image (%" G_GUINT64_FORMAT " bytes)",
                    size, base_size);
        return FALSE;
    }
    return create_disk(path, size, base, base_format, cancel, error);
}

gboolean vn_disk_create_blank(const char *path, guint64 size, GCancellable *cancel, GError **error)
{
    return create_disk(path, size, NULL, NULL, cancel, error);
}

guint64 vn_disk_allocated(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (guint64)st.st_blocks * 512 : 0;
}

char *vn_disk_backing_file(const char *path, GError **error)
{
    return vn_image_backing_file(path, error);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

gboolean vn_disk_remove_tree(const char *dir, GError **error)
{
    if (!g_file_test(dir, G_FILE_TEST_EXISTS))
        return TRUE;
    if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "removing '%s': %s", dir,
                    g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}
