/* network/port.h - names and addresses of guest network ports: MAC addresses (validated,
 * normalised, or derived from a port id in OpenStack's fa:16:3e range) and Linux device
 * names for taps and bridges (at most 14 characters, as Nova's NIC_NAME_LEN).  Pure
 * functions: the bridge and tap plumbing builds on them. */
#pragma once

#include <glib.h>

#define VN_NET_ERROR (vn_net_error_quark())
GQuark vn_net_error_quark(void);

typedef enum { VN_NET_ERROR_INVALID, VN_NET_ERROR_LAST } VnNetErrorCode;

#define VN_NET_DEVICE_NAME_MAX 14

/* "aa:bb:cc:dd:ee:ff" in lower case from any of xx:xx.., xx-xx.., or 12 hex digits; the
 * address must be unicast.  Caller frees. */
char *vn_net_mac_normalize(const char *text, GError **error);

/* A stable, locally administered unicast MAC for @port_id (fa:16:3e:xx:xx:xx). */
char *vn_net_mac_for_port(const char *port_id);

/* "<prefix><first characters of the id without dashes>", at most 14 characters. */
char *vn_net_device_name(const char *prefix, const char *id);
