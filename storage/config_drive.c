/* storage/config_drive.c - the config drive image (see config_drive.h). */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include <glib/gstdio.h>

#include "storage/config_drive.h"
#include "storage/disk.h"
#include "storage/runner.h"
#include "storage/stor_error.h"

#define GENISOIMAGE_TIMEOUT_S 60

static gboolean path_ok(const char *rel)
{
    g_auto(GStrv) parts = g_strsplit(rel, "/", -1);

    if (!*rel || g_path_is_absolute(rel))
        return FALSE;
    for (char **p = parts; *p; p++) {
        if (!**p || strcmp(*p, ".") == 0 || strcmp(*p, "..") == 0)
            return FALSE;
    }
    return TRUE;
}

/* Writes @files under @dir. */
static gboolean write_tree(const char *dir, GHashTable *files, GError **error)
{
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, files);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        g_autofree char *path = NULL;
        g_autofree char *parent = NULL;
        gsize len = 0;
        const char *data;
        if (!path_ok(k)) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                        "config drive: '%s' is not a relative path", (const char *)k);
            return FALSE;
        }
        path = g_build_filename(dir, k, NULL);
        parent = g_path_get_dirname(path);
        data = g_bytes_get_data(v, &len);
        if (g_mkdir_with_parents(parent, 0700) < 0) {
            g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating '%s': %s", parent,
                        g_strerror(errno));
            return FALSE;
        }
        if (!g_file_set_contents_full(path, data ? data : "", (gssize)len, G_FILE_SET_CONTENTS_NONE,
                                      0600, error))
            return FALSE;
    }
    return TRUE;
}

gboolean vn_config_drive_make(const char *iso, GHashTable *files, GCancellable *cancel,
                              GError **error)
{
    g_autofree char *parent = g_path_get_dirname(iso);
    g_autofree char *tmpl = g_build_filename(parent, ".config-drive-XXXXXX", NULL);
    g_autofree char *part = g_strconcat(iso, ".part", NULL);
    g_autoptr(GError) rm = NULL;
    gboolean ok;

    if (!g_mkdtemp_full(tmpl, 0700)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "creating '%s': %s", tmpl,
                    g_strerror(errno));
        return FALSE;
    }
    const char *argv[] = { "genisoimage",
                           "-quiet",
                           "-o",
                           part,
                           "-V",
                           "config-2",
                           "-J",
                           "-r",
                           "-l",
                           "-ldots",
                           "-allow-lowercase",
                           "-allow-multidot",
                           tmpl,
                           NULL };
    ok = write_tree(tmpl, files, error) &&
         vn_stor_run(argv, GENISOIMAGE_TIMEOUT_S, cancel, NULL, error);
    if (ok && (chmod(part, 0600) < 0 || g_rename(part, iso) < 0)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "installing '%s': %s", iso,
                    g_strerror(errno));
        ok = FALSE;
    }
    if (!ok)
        g_unlink(part);
    if (!vn_disk_remove_tree(tmpl, &rm))
        g_warning("config drive: %s", rm->message);
    return ok;
}
