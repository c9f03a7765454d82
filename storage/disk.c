/* storage/disk.c - instance disks (see disk.h). */
#include <errno.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "storage/disk.h"
#include "storage/runner.h"
#include "storage/image_inspect.h"
#include "storage/stor_error.h"

/* qemu-img create on a local or NFS-backed folder takes milliseconds; a run this long means
 * a hung mount or device, and the worker it pins is freed by killing it. */
#define QEMU_IMG_TIMEOUT_S 120

static gboolean qemu_img(const char *const *argv, GCancellable *cancel, GError **error)
{
    g_autoptr(GPtrArray) args = g_ptr_array_new();

    g_ptr_array_add(args, (gpointer) "qemu-img");
    for (const char *const *a = argv; *a; a++)
        g_ptr_array_add(args, (gpointer)*a);
    g_ptr_array_add(args, NULL);
    return vn_stor_run((const char *const *)args->pdata, QEMU_IMG_TIMEOUT_S, cancel, NULL, error);
}

/* A guest's disk is its own: 0600, whatever the process umask (libvirt gives it to the
 * guest's identity while the guest runs). */
static gboolean make_private(const char *path, GError **error)
{
    if (chmod(path, 0600) == 0)
        return TRUE;
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "chmod 0600 '%s': %s", path,
                g_strerror(errno));
    return FALSE;
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
    g_autofree char *size_text = NULL;

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
    size_text = g_strdup_printf("%" G_GUINT64_FORMAT, size);
    const char *argv[] = { "create", "-q", "-f", "qcow2",   "-F", base_format,
                           "-b",     base, path, size_text, NULL };
    return qemu_img(argv, cancel, error) && make_private(path, error);
}

gboolean vn_disk_create_blank(const char *path, guint64 size, GCancellable *cancel, GError **error)
{
    g_autofree char *size_text = g_strdup_printf("%" G_GUINT64_FORMAT, size);
    const char *argv[] = { "create", "-q", "-f", "qcow2", path, size_text, NULL };

    return qemu_img(argv, cancel, error) && make_private(path, error);
}

guint64 vn_disk_allocated(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (guint64)st.st_blocks * 512 : 0;
}

char *vn_disk_backing_file(const char *path, GError **error)
{
    gsize n = 0;
    g_autofree guint8 *buf = vn_image_read_header(path, &n, NULL, error);

    return buf ? vn_image_backing_name(buf, n) : NULL;
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
