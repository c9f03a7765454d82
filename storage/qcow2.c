/* storage/qcow2.c - empty qcow2 images written in-process (see qcow2.h).  Layout reference:
 * QEMU's docs/interop/qcow2.txt. */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "storage/qcow2.h"
#include "storage/stor_error.h"

#define CLUSTER_BITS    16
#define CLUSTER_SIZE    (1u << CLUSTER_BITS)
#define HEADER_LENGTH   112 /* version 3 with its compression type byte, padded to 8 */
#define REFCOUNT_ORDER  4   /* 16-bit refcounts, as qemu-img makes them */
#define EXT_END         0x00000000u
#define EXT_BACKING_FMT 0xe2792acau
#define BACKING_MAX     1023 /* QEMU refuses longer backing file names */

/* Clusters: 0 the header, 1 the refcount table, 2 the refcount block, 3.. the L1 table. */
#define RT_CLUSTER 1
#define RB_CLUSTER 2
#define L1_CLUSTER 3

static void put32(guint8 *p, guint32 v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void put64(guint8 *p, guint64 v)
{
    put32(p, v >> 32);
    put32(p + 4, (guint32)v);
}

static gboolean io_error(GError **error, const char *what, const char *path)
{
    g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "%s '%s': %s", what, path,
                g_strerror(errno));
    return FALSE;
}

static gboolean pwrite_all(int fd, const guint8 *buf, gsize len, off_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return FALSE;
        buf += n;
        len -= (gsize)n;
        off += n;
    }
    return TRUE;
}

/* The header cluster's meaningful bytes: the header, its extensions, the backing name.
 * Returns their length. */
static gsize header(guint8 *h, guint64 size, guint32 l1_entries, const char *backing,
                    const char *backing_format)
{
    gsize off = HEADER_LENGTH;

    put32(h, 0x514649fbu); /* "QFI\xfb" */
    put32(h + 4, 3);
    put32(h + 20, CLUSTER_BITS);
    put64(h + 24, size);
    put32(h + 36, l1_entries);
    put64(h + 40, (guint64)L1_CLUSTER * CLUSTER_SIZE);
    put64(h + 48, (guint64)RT_CLUSTER * CLUSTER_SIZE);
    put32(h + 56, 1); /* refcount table clusters */
    put32(h + 96, REFCOUNT_ORDER);
    put32(h + 100, HEADER_LENGTH);
    /* crypt method, snapshots, feature bits and compression type (zlib) stay 0 */
    if (backing_format) {
        gsize n = strlen(backing_format);
        put32(h + off, EXT_BACKING_FMT);
        put32(h + off + 4, (guint32)n);
        memcpy(h + off + 8, backing_format, n);
        off += 8 + ((n + 7) & ~(gsize)7);
    }
    put32(h + off, EXT_END);
    put32(h + off + 4, 0);
    off += 8;
    if (backing) {
        gsize n = strlen(backing);
        put64(h + 8, off);
        put32(h + 16, (guint32)n);
        memcpy(h + off, backing, n);
        off += n;
    }
    return off;
}

gboolean vn_qcow2_create(const char *path, guint64 size, const char *backing,
                         const char *backing_format, GError **error)
{
    /* one L2 table maps CLUSTER_SIZE / 8 clusters */
    const guint64 per_l2 = (guint64)CLUSTER_SIZE / 8 * CLUSTER_SIZE;
    guint64 l1_entries;
    guint64 l1_clusters;
    guint64 clusters;
    g_autofree guint8 *h = g_malloc0(CLUSTER_SIZE);
    g_autofree guint8 *rb = NULL;
    guint8 rt[8];
    gsize hlen;
    int fd;

    if (size == 0) {
        g_set_error_literal(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                            "a disk of 0 bytes cannot be made");
        return FALSE;
    }
    size = (size + 511) & ~(guint64)511; /* whole sectors, as qemu-img rounds */
    l1_entries = (size + per_l2 - 1) / per_l2;
    l1_clusters = (l1_entries * 8 + CLUSTER_SIZE - 1) / CLUSTER_SIZE;
    clusters = L1_CLUSTER + MAX(l1_clusters, 1);
    /* one refcount block of 16-bit counts covers the metadata up to 2 GiB of file, and
     * an L1 table of 1 cluster maps 4 TiB; beyond either, qemu-img's layout differs */
    if (l1_clusters > 1) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                    "a disk of %" G_GUINT64_FORMAT " bytes is larger than the 4 TiB supported",
                    size);
        return FALSE;
    }
    if (backing &&
        (strlen(backing) > BACKING_MAX || !backing_format || strlen(backing_format) > 16)) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID,
                    "backing file '%s' (format %s): a name of at most %d bytes and a format "
                    "are required",
                    backing, backing_format ? backing_format : "none", BACKING_MAX);
        return FALSE;
    }
    hlen = header(h, size, (guint32)l1_entries, backing, backing ? backing_format : NULL);
    put64(rt, (guint64)RB_CLUSTER * CLUSTER_SIZE);
    rb = g_malloc0(clusters * 2);
    for (guint64 i = 0; i < clusters; i++)
        rb[i * 2 + 1] = 1; /* big-endian 1 */

    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return io_error(error, "creating", path);
    /* the L1 table and the rest of every cluster are holes: zeros; the mode whatever the
     * umask */
    if (fchmod(fd, 0600) < 0 || ftruncate(fd, (off_t)(clusters * CLUSTER_SIZE)) < 0 ||
        !pwrite_all(fd, h, hlen, 0) ||
        !pwrite_all(fd, rt, sizeof(rt), (off_t)RT_CLUSTER * CLUSTER_SIZE) ||
        !pwrite_all(fd, rb, clusters * 2, (off_t)RB_CLUSTER * CLUSTER_SIZE) || fdatasync(fd) < 0) {
        io_error(error, "writing", path);
        close(fd);
        g_unlink(path);
        return FALSE;
    }
    if (close(fd) < 0) {
        io_error(error, "closing", path);
        g_unlink(path);
        return FALSE;
    }
    return TRUE;
}
