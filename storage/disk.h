/* storage/disk.h - instance disks: qcow2 overlays on cached bases (thin provisioning),
 * blank ephemeral and swap disks, and what a disk file says about itself.
 *
 * Disks are written in-process (qcow2.h: the layout qemu-img create gives them, without a
 * process per disk); the qcow2 header is read directly, with the same checks as images. */
#pragma once

#include <gio/gio.h>

/* Creates a qcow2 overlay at @path whose backing file is @base (of @base_format, pinned in
 * the header), with a virtual size of @size bytes (0: the base's), mode 0600.  The overlay
 * is never smaller than the base: VN_STOR_ERROR_INVALID then.  The file is written by a
 * thread of the disk writers' pool, given up on when @cancel (may be NULL) fires
 * (VN_STOR_ERROR_CANCELLED) or after 120 s (VN_STOR_ERROR_TIMEOUT): a hung mount pins that
 * thread, never the caller, and the next disk is written by another.  The pool keeps its
 * threads between disks. */
gboolean vn_disk_create_overlay(const char *path, const char *base, const char *base_format,
                                guint64 size, GCancellable *cancel, GError **error);

/* Creates a blank qcow2 disk of @size bytes, mode 0600; cancel and time limit as above. */
gboolean vn_disk_create_blank(const char *path, guint64 size, GCancellable *cancel, GError **error);

/* The virtual size of @path (qcow2 header, or the file size of a raw file). */
gboolean vn_disk_virtual_size(const char *path, guint64 *out, GError **error);

/* Bytes @path occupies on disk now. */
guint64 vn_disk_allocated(const char *path);

/* The backing file named by the qcow2 header of @path, or NULL (no backing file, or not
 * qcow2).  Caller frees. */
char *vn_disk_backing_file(const char *path, GError **error);

/* What writes a disk's file: vn_qcow2_create unless a test set another (NULL: back to it).
 * Set before any disk is written, or while none is. */
typedef gboolean (*VnDiskWriter)(const char *path, guint64 size, const char *backing,
                                 const char *backing_format, GError **error);
void vn_disk_set_writer(VnDiskWriter writer);

/* Removes @dir and everything in it; no error when it does not exist. */
gboolean vn_disk_remove_tree(const char *dir, GError **error);
