/* agent/virt/transfer.c - files sent into a folder of another host over its libvirt
 * connection (see transfer.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libvirt/virterror.h>

#include "agent/virt/domain_xml.h"
#include "agent/virt/transfer.h"
#include "agent/virt/virt.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virStoragePool, virStoragePoolFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virStorageVol, virStorageVolFree)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(virStream, virStreamFree)

typedef struct {
    int fd;
    int err;
    guint64 sent;
    guint64 before; /* bytes of the earlier files */
    guint64 total;
    GCancellable *cancel;
    VnTransferProgress progress;
    gpointer user_data;
} Source;

static int on_read(virStreamPtr st, char *buf, size_t n, void *opaque)
{
    Source *s = opaque;
    ssize_t got;

    (void)st;
    if (g_cancellable_is_cancelled(s->cancel)) {
        s->err = ECANCELED;
        return -1;
    }
    do {
        got = read(s->fd, buf, n);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        s->err = errno;
        return -1;
    }
    s->sent += (guint64)got;
    if (s->progress)
        s->progress(s->before + s->sent, s->total, s->user_data);
    return (int)got;
}

/* One file into @pool as volume @name: created at its size, then written by the stream. */
static gboolean send_file(virConnectPtr conn, virStoragePoolPtr pool, const char *path,
                          const char *name, Source *s, GError **error)
{
    g_autoptr(virStorageVol) vol = NULL;
    g_autoptr(virStream) st = NULL;
    g_autofree char *xml = NULL;
    struct stat sb;

    s->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &sb) < 0) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_OPERATION, "reading %s: %s", path,
                    g_strerror(errno));
        goto fail;
    }
    xml = vn_raw_volume_xml(name, (guint64)sb.st_size);
    vol = virStorageVolCreateXML(pool, xml, 0);
    st = vol ? virStreamNew(conn, 0) : NULL;
    if (!st) {
        vn_virt_error(error, "creating %s on the destination", name);
        goto fail;
    }
    s->sent = 0;
    if (virStorageVolUpload(vol, st, 0, (unsigned long long)sb.st_size, 0) < 0) {
        vn_virt_error(error, "sending %s", name);
        goto fail;
    }
    if (virStreamSendAll(st, on_read, s) < 0) {
        if (s->err)
            g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_OPERATION, "sending %s: %s", path,
                        g_strerror(s->err));
        else
            vn_virt_error(error, "sending %s", name);
        virStreamAbort(st);
        goto fail;
    }
    if (virStreamFinish(st) < 0) {
        vn_virt_error(error, "finishing %s", name);
        goto fail;
    }
    close(s->fd);
    s->fd = -1;
    s->before += s->sent;
    return TRUE;
fail:
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    return FALSE;
}

gboolean vn_transfer_files(const char *uri, const char *from_dir, const char *to_dir,
                           const char *const *names, GCancellable *cancel,
                           VnTransferProgress progress, gpointer user_data, GError **error)
{
    g_autoptr(virConnect) conn = virConnectOpen(uri);
    g_autoptr(virStoragePool) pool = NULL;
    g_autofree char *rnd = g_uuid_string_random();
    g_autofree char *name = g_strdup_printf("vn-transfer-%.8s", rnd);
    g_autofree char *xml = vn_dir_pool_xml(name, to_dir);
    Source s = { .fd = -1, .cancel = cancel, .progress = progress, .user_data = user_data };
    gboolean ok = TRUE;

    if (!conn)
        return vn_virt_error(error, "connecting to %s", uri);
    for (const char *const *n = names; *n; n++) {
        g_autofree char *p = g_build_filename(from_dir, *n, NULL);
        struct stat sb;
        if (stat(p, &sb) == 0)
            s.total += (guint64)sb.st_size;
    }
    /* a transient pool over the destination folder: gone with this call, its files stay */
    pool = virStoragePoolCreateXML(conn, xml, 0);
    if (!pool)
        return vn_virt_error(error, "opening %s on the destination", to_dir);
    for (const char *const *n = names; ok && *n; n++) {
        g_autofree char *p = g_build_filename(from_dir, *n, NULL);
        ok = send_file(conn, pool, p, *n, &s, error);
    }
    if (virStoragePoolDestroy(pool) < 0)
        g_warning("closing the transfer pool on %s: %s", uri, virGetLastErrorMessage());
    return ok;
}
