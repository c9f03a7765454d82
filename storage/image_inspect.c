/* storage/image_inspect.c - image format detection and the qcow2 header (see
 * image_inspect.h).  Layout references: QEMU's docs/interop/qcow2.txt. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/image_inspect.h"
#include "storage/stor_error.h"

#define QCOW2_MAGIC                0x514649fbu /* "QFI\xfb" */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN       G_GUINT64_CONSTANT(0x1f)
#define QCOW2_EXT_END              0x00000000u
#define QCOW2_EXT_DATA_FILE        0x44415441u
#define QCOW2_EXT_CRYPTO           0x0537be77u

GQuark vn_stor_error_quark(void)
{
    return g_quark_from_static_string("vn-stor-error");
}

static const char *const names[VN_IMAGE_FORMAT_LAST] = {
    "raw", "qcow2", "qed", "vmdk", "vhdx", "vpc", "vdi", "luks",
};

const char *vn_image_format_name(VnImageFormat f)
{
    return f < VN_IMAGE_FORMAT_LAST ? names[f] : "unknown";
}

static guint32 be32(const guint8 *p)
{
    return ((guint32)p[0] << 24) | ((guint32)p[1] << 16) | ((guint32)p[2] << 8) | p[3];
}

static guint64 be64(const guint8 *p)
{
    return ((guint64)be32(p) << 32) | be32(p + 4);
}

static guint32 le32(const guint8 *p)
{
    return ((guint32)p[3] << 24) | ((guint32)p[2] << 16) | ((guint32)p[1] << 8) | p[0];
}

static gboolean bad_header(GError **error, const char *what)
{
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE, "invalid qcow2 header: %s", what);
    return FALSE;
}

/* Walks the header extensions from @off; notes a data file or encryption header. */
static gboolean qcow2_extensions(const guint8 *d, gsize len, gsize off, VnImageInfo *out,
                                 GError **error)
{
    for (int n = 0; n < 1024; n++) {
        if (off + 8 > len)
            return bad_header(error, "header extensions run past the inspected bytes");
        guint32 type = be32(d + off);
        guint32 elen = be32(d + off + 4);
        if (type == QCOW2_EXT_END)
            return TRUE;
        if (type == QCOW2_EXT_DATA_FILE)
            out->has_data_file = TRUE;
        if (type == QCOW2_EXT_CRYPTO)
            out->encrypted = TRUE;
        gsize padded = ((gsize)elen + 7) & ~(gsize)7;
        if (elen > len || off + 8 + padded > len)
            return bad_header(error, "a header extension runs past the inspected bytes");
        off += 8 + padded;
    }
    return bad_header(error, "too many header extensions");
}

static gboolean inspect_qcow2(const guint8 *d, gsize len, VnImageInfo *out, GError **error)
{
    gsize ext_off;

    if (len < 72)
        return bad_header(error, "truncated");
    out->qcow2_version = be32(d + 4);
    if (out->qcow2_version != 2 && out->qcow2_version != 3)
        return bad_header(error, "unknown version");
    guint64 backing_off = be64(d + 8);
    guint32 backing_len = be32(d + 16);
    out->cluster_bits = be32(d + 20);
    out->virtual_size = be64(d + 24);
    out->encrypted = be32(d + 32) != 0;
    out->has_backing_file = backing_off != 0 || backing_len != 0;
    if (out->cluster_bits < 9 || out->cluster_bits > 21)
        return bad_header(error, "cluster size out of range");
    if (out->virtual_size > (G_GUINT64_CONSTANT(1) << 62))
        return bad_header(error, "virtual size out of range");
    if (out->qcow2_version == 2) {
        ext_off = 72;
    } else {
        if (len < 104)
            return bad_header(error, "truncated version 3 header");
        out->incompatible_features = be64(d + 72);
        guint32 header_len = be32(d + 100);
        if (header_len < 104 || header_len > len || header_len % 8 != 0)
            return bad_header(error, "header length out of range");
        ext_off = header_len;
        if (out->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
            out->has_data_file = TRUE;
        if (out->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
            out->corrupt = TRUE;
    }
    return qcow2_extensions(d, len, ext_off, out, error);
}

gboolean vn_image_inspect(const guint8 *d, gsize len, guint64 file_size, VnImageInfo *out,
                          GError **error)
{
    memset(out, 0, sizeof(*out));
    out->format = VN_IMAGE_FORMAT_RAW;
    out->virtual_size = file_size;
    if (len >= 4 && be32(d) == QCOW2_MAGIC) {
        out->format = VN_IMAGE_FORMAT_QCOW2;
        return inspect_qcow2(d, len, out, error);
    }
    if (len >= 4 && memcmp(d, "QED\0", 4) == 0)
        out->format = VN_IMAGE_FORMAT_QED;
    else if (len >= 4 && memcmp(d, "KDMV", 4) == 0)
        out->format = VN_IMAGE_FORMAT_VMDK;
    else if (len >= 21 && memcmp(d, "# Disk DescriptorFile", 21) == 0)
        out->format = VN_IMAGE_FORMAT_VMDK;
    else if (len >= 8 && memcmp(d, "vhdxfile", 8) == 0)
        out->format = VN_IMAGE_FORMAT_VHDX;
    else if (len >= 8 && memcmp(d, "conectix", 8) == 0)
        out->format = VN_IMAGE_FORMAT_VPC;
    else if (len >= 0x44 && le32(d + 0x40) == 0xbeda107fu)
        out->format = VN_IMAGE_FORMAT_VDI;
    else if (len >= 6 && memcmp(d, "LUKS\xba\xbe", 6) == 0)
        out->format = VN_IMAGE_FORMAT_LUKS;
    return TRUE;
}

gboolean vn_image_check(const VnImageInfo *info, const char *declared, guint64 max_virtual,
                        GError **error)
{
    const char *actual = vn_image_format_name(info->format);

    if (g_strcmp0(declared, actual) != 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the image was declared %s but its content is %s", declared, actual);
        return FALSE;
    }
    if (info->has_backing_file) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the qcow2 image names a backing file: refused");
        return FALSE;
    }
    if (info->has_data_file) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the qcow2 image uses an external data file: refused");
        return FALSE;
    }
    if (info->encrypted) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the qcow2 image is encrypted: refused");
        return FALSE;
    }
    if (info->corrupt) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the qcow2 image is marked corrupt: refused");
        return FALSE;
    }
    if (info->incompatible_features & ~QCOW2_INCOMPAT_KNOWN) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_UNSAFE,
                    "the qcow2 image has unknown incompatible features 0x%" G_GINT64_MODIFIER
                    "x: refused",
                    (guint64)(info->incompatible_features & ~QCOW2_INCOMPAT_KNOWN));
        return FALSE;
    }
    if (info->virtual_size == 0 || info->virtual_size > max_virtual) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_TOO_LARGE,
                    "the image's virtual size of %" G_GUINT64_FORMAT
                    " bytes is outside (0, %" G_GUINT64_FORMAT "]",
                    info->virtual_size, max_virtual);
        return FALSE;
    }
    return TRUE;
}

char *vn_image_backing_name(const guint8 *d, gsize len)
{
    guint64 off;
    guint32 n;

    if (len < 20 || be32(d) != QCOW2_MAGIC)
        return NULL;
    off = be64(d + 8);
    n = be32(d + 16);
    if (off == 0 || n == 0 || n > 1023 || off > len || n > len - off)
        return NULL;
    if (memchr(d + off, '\0', n))
        return NULL;
    return g_strndup((const char *)d + off, n);
}

/* What the agent's own disks need: a qcow2 header with its extensions and backing name
 * end well within the first page.  The whole window is read only when the page is not
 * enough, so that a disk's size or backing file costs one small read. */
#define HEADER_PROBE_BYTES 4096

/* The first @max bytes (or fewer) of @path, their number in *len and the file's size in
 * *file_size.  Caller frees. */
static guint8 *read_prefix(const char *path, gsize max, gsize *len, guint64 *file_size,
                           GError **error)
{
    g_autofree guint8 *buf = g_malloc(max);
    struct stat st;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "opening '%s': %s", path,
                    g_strerror(e));
        return NULL;
    }
    n = pread(fd, buf, max, 0);
    close(fd);
    if (n < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "reading '%s': %s", path,
                    g_strerror(errno));
        return NULL;
    }
    *len = (gsize)n;
    *file_size = (guint64)st.st_size;
    return g_steal_pointer(&buf);
}

gboolean vn_image_inspect_file(const char *path, VnImageInfo *out, GError **error)
{
    gsize n = 0;
    guint64 size = 0;
    g_autofree guint8 *buf = read_prefix(path, HEADER_PROBE_BYTES, &n, &size, error);

    if (!buf)
        return FALSE;
    /* a header inspected whole within the page reads the same in the whole window */
    if (vn_image_inspect(buf, n, size, out, NULL))
        return TRUE;
    if (n == HEADER_PROBE_BYTES) {
        g_free(buf);
        buf = read_prefix(path, VN_IMAGE_HEADER_BYTES, &n, &size, error);
        if (!buf)
            return FALSE;
    }
    return vn_image_inspect(buf, n, size, out, error);
}

char *vn_image_backing_file(const char *path, GError **error)
{
    gsize n = 0;
    guint64 size = 0;
    g_autofree guint8 *buf = read_prefix(path, HEADER_PROBE_BYTES, &n, &size, error);

    if (!buf)
        return NULL;
    /* a qcow2 header naming a backing file past the page */
    if (n == HEADER_PROBE_BYTES && be32(buf) == QCOW2_MAGIC &&
        be64(buf + 8) + be32(buf + 16) > HEADER_PROBE_BYTES) {
        g_free(buf);
        buf = read_prefix(path, VN_IMAGE_HEADER_BYTES, &n, &size, error);
        if (!buf)
            return NULL;
    }
    return vn_image_backing_name(buf, n);
}
