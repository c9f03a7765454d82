/* network/bridge.h - the host side of guest networks, through netlink (libnl-route-3): one
 * Linux bridge per network ("brq" + the network id), with its uplink — the physical
 * interface the network's physical network maps to ([network]
 * physical_interface_mappings), or for a VLAN network that interface's 802.1Q
 * sub-interface, made here — its MTU set and IPv6 off on it.
 *
 * What this module makes carries an interface alias "virtnode:<network id>" (kept by the
 * kernel across agent restarts): that is its record of ownership.  It never changes or
 * removes a link without that alias, and it removes a bridge only when nobody holds a
 * use of the network and no other port is on it.  Uses are held in memory by name (the
 * agent's port ids, so taking or dropping one twice changes nothing): the agent takes
 * one per guest port (also for every port of every guest at start) and drops it when the
 * port goes; vn_net_host_reconcile then removes bridges nobody uses.
 *
 * Guests' taps are made by libvirt (<interface type='bridge'>): this module returns the
 * names, agent/virt renders the XML. */
#pragma once

#include <glib.h>

#define VN_NET_ERROR (vn_net_error_quark())
GQuark vn_net_error_quark(void);

typedef enum {
    VN_NET_ERROR_INVALID,  /* a port the host cannot serve (unknown physnet, MTU too big) */
    VN_NET_ERROR_NETLINK,  /* the kernel refused (the message says what) */
    VN_NET_ERROR_CONFLICT, /* a device of that name exists and is not ours */
    VN_NET_ERROR_LAST
} VnNetErrorCode;

typedef struct _VnNetHost VnNetHost;

/* A network as far as the host is concerned. */
typedef struct {
    const char *network_id;
    const char *physical_network;
    int vlan; /* 1-4094 for a VLAN network, 0 for a flat one */
    int mtu;  /* 0: the host's default */
} VnNetSegment;

/* @mappings: "physnet:interface" entries (NULL-terminated; validated here); @default_mtu
 * for networks that state none. */
VnNetHost *vn_net_host_new(char **mappings, int default_mtu, GError **error);
void vn_net_host_free(VnNetHost *h);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnNetHost, vn_net_host_free)

/* Checks, touching nothing, that the host can serve @seg: its physical network is mapped,
 * the interface exists, the MTU is not above the interface's. VN_NET_ERROR_INVALID. */
gboolean vn_net_check(VnNetHost *h, const VnNetSegment *seg, GError **error);

/* Makes (or adopts, or repairs) the bridge and uplink of @seg and records @holder's use
 * of it (a second call for the same holder changes nothing).  Returns the bridge's name
 * (caller frees) or NULL, nothing left behind. */
char *vn_net_acquire(VnNetHost *h, const VnNetSegment *seg, const char *holder, GError **error);

/* Drops @holder's use of @network_id (none held: nothing to drop); with no use left and
 * no other port on the bridge, the bridge and the VLAN sub-interface made for it are
 * removed.  Never fails: what cannot be removed now is logged and left to the next
 * reconcile. */
void vn_net_release(VnNetHost *h, const char *network_id, const char *holder);

/* Removes the bridges (and VLAN sub-interfaces) this module made that hold no use and
 * carry no port: what a crash or a half-done plug left.  Returns how many. */
guint vn_net_host_reconcile(VnNetHost *h);

/* Uses held of @network_id (tests, metrics). */
guint vn_net_uses(VnNetHost *h, const char *network_id);

/* The names this module gives: bridge "brq<id>", tap "tap<id>" (at most 14 characters,
 * dashes dropped, as Nova's NIC_NAME_LEN), VLAN sub-interface "<iface>.<vlan>" (or
 * "vl<vlan>-<iface start>" when that is longer than the kernel allows).  Caller frees. */
char *vn_net_bridge_name(const char *network_id);
char *vn_net_tap_name(const char *port_id);
char *vn_net_vlan_name(const char *interface, int vlan);
