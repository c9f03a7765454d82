/* agent/virt/secret.h - a volume's CHAP password in libvirt's secret store, where QEMU's
 * iSCSI initiator reads it (<auth><secret type='iscsi' usage='…'/>).  One secret per
 * volume, named by its usage "virtnode-volume-<volume id>".  Not private: the source host
 * of a live migration reads it back to hand it to the destination (libvirt's secret API
 * is open to root only, as the agent). */
#pragma once

#include <glib.h>

#include "agent/virt/conn.h"

#define VN_SECRET_USAGE_PREFIX "virtnode-volume-"

/* The usage name of @volume_id's secret.  Caller frees. */
char *vn_secret_usage(const char *volume_id);

/* Defines (or redefines) @volume_id's secret with @value. */
gboolean vn_secret_define(VnVirtConn *c, const char *volume_id, const char *value, GError **error);

/* The value of @volume_id's secret, or NULL (none, or unreadable).  Caller frees (and
 * should clear). */
char *vn_secret_get(VnVirtConn *c, const char *volume_id);

/* TRUE when @volume_id's secret exists. */
gboolean vn_secret_exists(VnVirtConn *c, const char *volume_id);

/* Removes @volume_id's secret; no error when it does not exist. */
gboolean vn_secret_undefine(VnVirtConn *c, const char *volume_id, GError **error);

/* The volume ids of every secret this agent defined (NULL-terminated).  Caller frees. */
char **vn_secret_list(VnVirtConn *c, GError **error);
