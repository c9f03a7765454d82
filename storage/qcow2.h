/* storage/qcow2.h - empty qcow2 images written in-process: an instance's overlay on its
 * cached base, or a blank disk.
 *
 * The file is what `qemu-img create -f qcow2` makes (version 3, 64 KiB clusters, 16-bit
 * refcounts, lazy refcounts off): a header cluster with the backing file's name and
 * format, a refcount table, one refcount block and an empty L1 table, the data all
 * unallocated.  Writing it takes four writes and one fdatasync, where qemu-img costs a
 * process start and five flushes: it is the largest part of a build the agent itself
 * does. */
#pragma once

#include <glib.h>

/* Creates @path (which must not exist), mode 0600, a qcow2 image of @size bytes (rounded up
 * to whole 512-byte sectors; at most 4 TiB) whose reads come from @backing (may be NULL: a blank
 * disk) of @backing_format (pinned in the header, as libvirt requires).  Durable when it
 * returns TRUE; nothing is left behind when it fails (VN_STOR_ERROR_INVALID for a size or
 * name it cannot write, VN_STOR_ERROR_IO for the file system). */
gboolean vn_qcow2_create(const char *path, guint64 size, const char *backing,
                         const char *backing_format, GError **error);
