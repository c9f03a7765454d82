/* storage/config_drive.h - the config drive: an ISO 9660 image labelled "config-2" holding
 * the files a guest reads at boot (openstack/latest/meta_data.json, network_data.json,
 * user_data), as OpenStack guests expect it.  Made with Debian's genisoimage through the
 * argv runner; the files' contents come from the agent. */
#pragma once

#include <gio/gio.h>

/* Writes the image @iso (0600) from @files: relative path ("openstack/latest/x.json") ->
 * GBytes content.  Paths are checked (no "..", no absolute path).  Nothing is left at
 * @iso on failure. */
gboolean vn_config_drive_make(const char *iso, GHashTable *files, GCancellable *cancel,
                              GError **error);
