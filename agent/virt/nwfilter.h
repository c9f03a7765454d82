/* agent/virt/nwfilter.h - a guest port's security filter as a libvirt nwfilter, one per
 * port ("virtnode-port-<port id>"), built with libxml2 from the port's security-group
 * rules.
 *
 * It includes libvirt's clean-traffic (no MAC, IP or ARP spoofing: the guest may send
 * only from the MAC and the addresses its interface passes as $MAC and $IP), drops DHCP
 * offers from the guest, and, as Neutron's security groups do, allows only what the rules
 * allow in each direction, statefully: the replies to allowed traffic pass back.  Rules
 * change on a running guest by redefining the filter (libvirt re-applies it at once). */
#pragma once

#include <glib.h>

#include "agent/virt/conn.h"

#define VN_NWFILTER_PREFIX "virtnode-port-"

/* The filter's name for @port_id.  Caller frees. */
char *vn_nwfilter_name(const char *port_id);

/* The filter XML for @port_id with @rules (VnSgRule*, from api/port.h).  Pure. */
char *vn_nwfilter_xml(const char *port_id, const GPtrArray *rules, GError **error);

/* Defines (or redefines) the filter of @port_id. */
gboolean vn_nwfilter_define(VnVirtConn *c, const char *port_id, const GPtrArray *rules,
                            GError **error);

/* Removes the filter of @port_id; no error when it does not exist.  libvirt refuses while
 * a running guest still uses it (the caller removes the interface first). */
gboolean vn_nwfilter_undefine(VnVirtConn *c, const char *port_id, GError **error);

/* The port ids of every filter this agent defined (NULL-terminated). */
char **vn_nwfilter_list(VnVirtConn *c, GError **error);
