/* agent/virt/transfer.h - files sent into a folder of another host over the libvirt
 * connection the agents already use for migrations (libvirt storage streams: a transient
 * directory pool over the folder, one volume upload per file).  No other channel between
 * hosts (no ssh keys) is needed. */
#pragma once

#include <gio/gio.h>

typedef void (*VnTransferProgress)(guint64 done, guint64 total, gpointer user_data);

/* Sends the files @names (NULL-terminated, plain names) of @from_dir into the existing
 * folder @to_dir of the host libvirt @uri reaches, byte for byte.  A file of that name
 * there already is an error. */
gboolean vn_transfer_files(const char *uri, const char *from_dir, const char *to_dir,
                           const char *const *names, GCancellable *cancel,
                           VnTransferProgress progress, gpointer user_data, GError **error);
