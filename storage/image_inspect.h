/* storage/image_inspect.h - what an image file really is, read from its first bytes.
 *
 * A cloud agent must not trust the format a user declares: a "raw" image holding a qcow2
 * header, or a qcow2 image naming a backing file or an external data file, would make
 * QEMU read files of the host.  Inspection is pure (bytes in, facts out), unit-tested and
 * fuzzed; the policy that refuses what is unsafe is vn_image_check. */
#pragma once

#include <glib.h>

typedef enum {
    VN_IMAGE_FORMAT_RAW, /* nothing recognised: plain bytes */
    VN_IMAGE_FORMAT_QCOW2,
    VN_IMAGE_FORMAT_QED,
    VN_IMAGE_FORMAT_VMDK,
    VN_IMAGE_FORMAT_VHDX,
    VN_IMAGE_FORMAT_VPC,
    VN_IMAGE_FORMAT_VDI,
    VN_IMAGE_FORMAT_LUKS,
    VN_IMAGE_FORMAT_LAST
} VnImageFormat;

/* Bytes to read from the start of a file for vn_image_inspect. */
#define VN_IMAGE_HEADER_BYTES (64 * 1024)

typedef struct {
    VnImageFormat format;
    guint64 virtual_size; /* qcow2: from the header; raw: the file size */
    guint32 qcow2_version;
    guint32 cluster_bits;
    guint64 incompatible_features;
    gboolean has_backing_file;
    gboolean has_data_file;
    gboolean encrypted;
    gboolean corrupt;
} VnImageInfo;

const char *vn_image_format_name(VnImageFormat f);

/* Inspects @len bytes read from the start of a file of @file_size bytes.  Fails only when
 * a qcow2 header is inconsistent (truncated, impossible sizes). */
gboolean vn_image_inspect(const guint8 *data, gsize len, guint64 file_size, VnImageInfo *out,
                          GError **error);

/* The policy: the image must be what was declared ("qcow2" or "raw"), must have no backing
 * file, no external data file, no encryption, no unknown incompatible features, and a
 * virtual size within @max_virtual_size.  VN_STOR_ERROR_UNSAFE / _TOO_LARGE. */
gboolean vn_image_check(const VnImageInfo *info, const char *declared_format,
                        guint64 max_virtual_size, GError **error);

/* The backing file name in qcow2 header bytes, or NULL when there is none (or the bytes
 * are not a qcow2 header).  Caller frees. */
char *vn_image_backing_name(const guint8 *data, gsize len);

/* Reads the header of @path (at most VN_IMAGE_HEADER_BYTES) and inspects it. */
gboolean vn_image_inspect_file(const char *path, VnImageInfo *out, GError **error);

/* The backing file named in the qcow2 header of @path, or NULL when it names none (error
 * unset) or cannot be read.  Caller frees. */
char *vn_image_backing_file(const char *path, GError **error);
