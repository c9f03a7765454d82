/* network/bridge.c - bridges and uplinks through netlink (see bridge.h). */
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/link/bridge.h>
#include <netlink/route/link/vlan.h>

#include "network/bridge.h"

#define ALIAS_PREFIX "virtnode:"
#define NAME_MAX_LEN 14 /* Nova's NIC_NAME_LEN; IFNAMSIZ - 1 is 15 */

typedef struct rtnl_link VnNlLink;
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnNlLink, rtnl_link_put)

GQuark vn_net_error_quark(void)
{
    return g_quark_from_static_string("vn-net-error");
}

struct _VnNetHost {
    /* immutable after vn_net_host_new */
    GHashTable *mappings; /* physnet -> interface */
    int default_mtu;

    /* under @lock (every netlink exchange too: one socket) */
    GMutex lock;
    struct nl_sock *sk;
    GHashTable *uses; /* network id -> set of holders (the ports that use it) */
};

/* ------------------------------------------------------------------ names */

static char *device_name(const char *prefix, const char *id)
{
    GString *s = g_string_new(prefix);

    for (const char *p = id; *p && s->len < NAME_MAX_LEN; p++) {
        if (*p != '-')
            g_string_append_c(s, *p);
    }
    return g_string_free(s, FALSE);
}

char *vn_net_bridge_name(const char *network_id)
{
    return device_name("brq", network_id);
}

char *vn_net_tap_name(const char *port_id)
{
    return device_name("tap", port_id);
}

char *vn_net_vlan_name(const char *interface, int vlan)
{
    char *n = g_strdup_printf("%s.%d", interface, vlan);

    if (strlen(n) < IFNAMSIZ)
        return n;
    g_free(n);
    n = g_strdup_printf("vl%d-%s", vlan, interface);
    n[IFNAMSIZ - 1] = '\0';
    return n;
}

/* ------------------------------------------------------------------ netlink helpers */

static gboolean nl_fail(GError **error, int err, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static gboolean nl_fail(GError **error, int err, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *what = NULL;

    va_start(ap, fmt);
    what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_NETLINK, "%s: %s", what, nl_geterror(err));
    return FALSE;
}

/* The link named @name, or NULL (errors other than "no such device" set @error). */
static struct rtnl_link *link_get(VnNetHost *h, const char *name, GError **error)
{
    struct rtnl_link *l = NULL;
    int err = rtnl_link_get_kernel(h->sk, 0, name, &l);

    if (err < 0 && err != -NLE_OBJ_NOTFOUND && err != -NLE_NODEV)
        nl_fail(error, err, "reading link '%s'", name);
    return err < 0 ? NULL : l;
}

static gboolean ours(struct rtnl_link *l, const char *network_id)
{
    const char *alias = rtnl_link_get_ifalias(l);

    if (!alias || !g_str_has_prefix(alias, ALIAS_PREFIX))
        return FALSE;
    return !network_id || strcmp(alias + strlen(ALIAS_PREFIX), network_id) == 0;
}

/* Applies the changes in @want to @cur. */
static gboolean link_change(VnNetHost *h, struct rtnl_link *cur, struct rtnl_link *want,
                            const char *what, GError **error)
{
    int err = rtnl_link_change(h->sk, cur, want, 0);

    return err >= 0 || nl_fail(error, err, "%s '%s'", what, rtnl_link_get_name(cur));
}

/* Marks @l ours for @network_id (the kernel ignores an alias given at creation). */
static gboolean set_alias(VnNetHost *h, struct rtnl_link *l, const char *alias, GError **error)
{
    g_autoptr(VnNlLink) want = rtnl_link_alloc();

    rtnl_link_set_ifalias(want, alias);
    return link_change(h, l, want, "marking", error);
}

static void disable_ipv6(const char *name)
{
    g_autofree char *path = g_strdup_printf("/proc/sys/net/ipv6/conf/%s/disable_ipv6", name);
    FILE *f = fopen(path, "w");

    if (!f)
        return; /* no IPv6 on this host: nothing to disable */
    fputs("1\n", f);
    fclose(f);
}

/* The link @name of @network_id: adopted when it is ours, made from @tmpl (then marked
 * ours) when missing, refused when someone else's.  @what names it in messages. */
static struct rtnl_link *link_ensure(VnNetHost *h, const char *name, const char *network_id,
                                     struct rtnl_link *tmpl, const char *what, GError **error)
{
    g_autofree char *alias = g_strconcat(ALIAS_PREFIX, network_id, NULL);
    struct rtnl_link *cur = link_get(h, name, error);
    int err;

    if (!cur && error && *error)
        return NULL;
    if (cur && !ours(cur, network_id)) {
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_CONFLICT,
                    "a device named '%s' exists and was not made by virtnode for network %s", name,
                    network_id);
        rtnl_link_put(cur);
        return NULL;
    }
    if (!cur) {
        rtnl_link_set_name(tmpl, name);
        err = rtnl_link_add(h->sk, tmpl, NLM_F_CREATE | NLM_F_EXCL);
        if (err < 0) {
            nl_fail(error, err, "creating %s '%s'", what, name);
            return NULL;
        }
        cur = link_get(h, name, error);
        if (!cur)
            return NULL;
        if (!set_alias(h, cur, alias, error)) {
            rtnl_link_delete(h->sk, cur);
            rtnl_link_put(cur);
            return NULL;
        }
        g_info("network %s: %s %s made", network_id, what, name);
    }
    disable_ipv6(name);
    return cur;
}

/* Makes the bridge @name for @network_id with @mtu, or adopts ours. */
static struct rtnl_link *bridge_ensure(VnNetHost *h, const char *name, const char *network_id,
                                       int mtu, GError **error)
{
    g_autoptr(VnNlLink) tmpl = rtnl_link_alloc();

    rtnl_link_set_type(tmpl, "bridge");
    rtnl_link_set_mtu(tmpl, (unsigned)mtu);
    return link_ensure(h, name, network_id, tmpl, "bridge", error);
}

/* The VLAN sub-interface @name of @parent for @vlan: made (ours) or adopted. */
static struct rtnl_link *vlan_ensure(VnNetHost *h, struct rtnl_link *parent, const char *name,
                                     int vlan, const char *network_id, int mtu, GError **error)
{
    g_autoptr(VnNlLink) tmpl = rtnl_link_vlan_alloc();

    rtnl_link_set_link(tmpl, rtnl_link_get_ifindex(parent));
    rtnl_link_vlan_set_id(tmpl, vlan);
    rtnl_link_set_mtu(tmpl, (unsigned)mtu);
    return link_ensure(h, name, network_id, tmpl, "VLAN sub-interface", error);
}

/* The bridge's MTU and state, set once its uplink is on it: the kernel lowers a bridge's
 * MTU to its ports' unless it was set explicitly, afterwards. */
static gboolean bridge_finish(VnNetHost *h, const char *name, int mtu, GError **error)
{
    g_autoptr(VnNlLink) cur = link_get(h, name, error);
    g_autoptr(VnNlLink) want = NULL;

    if (!cur)
        return FALSE;
    if (rtnl_link_get_mtu(cur) == (unsigned)mtu && (rtnl_link_get_flags(cur) & IFF_UP))
        return TRUE;
    want = rtnl_link_alloc();
    rtnl_link_set_mtu(want, (unsigned)mtu);
    rtnl_link_set_flags(want, IFF_UP);
    return link_change(h, cur, want, "setting up bridge", error);
}

/* Puts @uplink under @bridge and brings it up. */
static gboolean uplink_attach(VnNetHost *h, struct rtnl_link *bridge, struct rtnl_link *uplink,
                              GError **error)
{
    g_autoptr(VnNlLink) want = rtnl_link_alloc();
    int master = rtnl_link_get_master(uplink);

    if (master && master != rtnl_link_get_ifindex(bridge)) {
        char other[IF_NAMESIZE] = "?";
        if_indextoname((unsigned)master, other);
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_CONFLICT,
                    "'%s' already belongs to bridge '%s'", rtnl_link_get_name(uplink), other);
        return FALSE;
    }
    if (!master) {
        int err = rtnl_link_enslave(h->sk, bridge, uplink);
        if (err < 0)
            return nl_fail(error, err, "adding '%s' to bridge '%s'", rtnl_link_get_name(uplink),
                           rtnl_link_get_name(bridge));
    }
    if (!(rtnl_link_get_flags(uplink) & IFF_UP)) {
        rtnl_link_set_flags(want, IFF_UP);
        return link_change(h, uplink, want, "bringing up", error);
    }
    return TRUE;
}

/* Ports on @bridge other than its uplink (our VLAN sub-interface, or the mapped physical
 * interface of a flat network): guests' taps, or anything someone else put there. */
static guint other_ports(VnNetHost *h, struct rtnl_link *bridge)
{
    struct nl_cache *cache = NULL;
    guint n = 0;
    int idx = rtnl_link_get_ifindex(bridge);
    g_autoptr(GList) uplinks = g_hash_table_get_values(h->mappings);

    if (rtnl_link_alloc_cache(h->sk, AF_UNSPEC, &cache) < 0)
        return G_MAXUINT; /* unknown: count it as used */
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        struct rtnl_link *l = (struct rtnl_link *)o;
        gboolean uplink = ours(l, NULL);
        if (rtnl_link_get_master(l) != idx)
            continue;
        for (GList *u = uplinks; !uplink && u; u = u->next)
            uplink = g_strcmp0(rtnl_link_get_name(l), u->data) == 0;
        if (!uplink)
            n++;
    }
    nl_cache_free(cache);
    return n;
}

/* Removes the bridge @name (ours) and the VLAN sub-interfaces of ours under it; with the
 * lock held.  A flat network's physical interface is only released. */
static void bridge_remove(VnNetHost *h, struct rtnl_link *bridge)
{
    struct nl_cache *cache = NULL;
    int idx = rtnl_link_get_ifindex(bridge);
    g_autofree char *name = g_strdup(rtnl_link_get_name(bridge));
    int err;

    if (rtnl_link_alloc_cache(h->sk, AF_UNSPEC, &cache) >= 0) {
        for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
            struct rtnl_link *l = (struct rtnl_link *)o;
            if (rtnl_link_get_master(l) != idx)
                continue;
            if (ours(l, NULL)) {
                if ((err = rtnl_link_delete(h->sk, l)) < 0)
                    g_warning("removing '%s': %s", rtnl_link_get_name(l), nl_geterror(err));
            } else if ((err = rtnl_link_release(h->sk, l)) < 0) {
                g_warning("releasing '%s' from '%s': %s", rtnl_link_get_name(l), name,
                          nl_geterror(err));
            }
        }
        nl_cache_free(cache);
    }
    if ((err = rtnl_link_delete(h->sk, bridge)) < 0)
        g_warning("removing bridge '%s': %s", name, nl_geterror(err));
    else
        g_info("bridge %s removed", name);
}

/* ------------------------------------------------------------------ the host */

VnNetHost *vn_net_host_new(char **mappings, int default_mtu, GError **error)
{
    g_autoptr(VnNetHost) h = g_new0(VnNetHost, 1);
    int err;

    g_mutex_init(&h->lock);
    h->mappings = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    h->uses =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)g_hash_table_unref);
    h->default_mtu = default_mtu > 0 ? default_mtu : 1500;
    for (char **m = mappings; m && *m; m++) {
        const char *colon = strchr(*m, ':');
        g_autofree char *physnet = colon ? g_strndup(*m, colon - *m) : NULL;
        const char *iface = colon ? colon + 1 : NULL;
        if (!physnet || !*physnet || !iface || !*iface || strlen(iface) >= IFNAMSIZ ||
            strchr(iface, '/') || strchr(iface, ':')) {
            g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                        "physical_interface_mappings: '%s' is not physnet:interface", *m);
            return NULL;
        }
        if (g_hash_table_contains(h->mappings, physnet)) {
            g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                        "physical_interface_mappings: '%s' is mapped twice", physnet);
            return NULL;
        }
        g_hash_table_insert(h->mappings, g_steal_pointer(&physnet), g_strdup(iface));
    }
    h->sk = nl_socket_alloc();
    if (!h->sk || (err = nl_connect(h->sk, NETLINK_ROUTE)) < 0) {
        nl_fail(error, h->sk ? err : -NLE_NOMEM, "opening a netlink socket");
        return NULL;
    }
    return g_steal_pointer(&h);
}

void vn_net_host_free(VnNetHost *h)
{
    if (!h)
        return;
    if (h->sk)
        nl_socket_free(h->sk);
    g_clear_pointer(&h->mappings, g_hash_table_unref);
    g_clear_pointer(&h->uses, g_hash_table_unref);
    g_mutex_clear(&h->lock);
    g_free(h);
}

static int seg_mtu(VnNetHost *h, const VnNetSegment *seg)
{
    return seg->mtu > 0 ? seg->mtu : h->default_mtu;
}

/* The physical interface of @seg, checked; with the lock held. */
static struct rtnl_link *physical(VnNetHost *h, const VnNetSegment *seg, GError **error)
{
    const char *iface = g_hash_table_lookup(h->mappings, seg->physical_network);
    struct rtnl_link *l;
    int mtu = seg_mtu(h, seg);

    if (!iface) {
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                    "physical network '%s' is not in this host's "
                    "[network] physical_interface_mappings",
                    seg->physical_network);
        return NULL;
    }
    l = link_get(h, iface, error);
    if (!l) {
        if (!*error)
            g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                        "interface '%s' of physical network '%s' does not exist", iface,
                        seg->physical_network);
        return NULL;
    }
    if ((int)rtnl_link_get_mtu(l) < mtu) {
        g_set_error(error, VN_NET_ERROR, VN_NET_ERROR_INVALID,
                    "MTU %d is above the %u of interface '%s' (physical network '%s')", mtu,
                    rtnl_link_get_mtu(l), iface, seg->physical_network);
        rtnl_link_put(l);
        return NULL;
    }
    return l;
}

gboolean vn_net_check(VnNetHost *h, const VnNetSegment *seg, GError **error)
{
    struct rtnl_link *l;

    g_mutex_lock(&h->lock);
    l = physical(h, seg, error);
    g_mutex_unlock(&h->lock);
    if (l)
        rtnl_link_put(l);
    return l != NULL;
}

/* The uplink of @seg under @bridge: the physical interface itself (flat) or its VLAN
 * sub-interface (vlan); with the lock held. */
static gboolean uplink_ensure(VnNetHost *h, const VnNetSegment *seg, struct rtnl_link *bridge,
                              GError **error)
{
    g_autoptr(VnNlLink) phys = physical(h, seg, error);
    g_autoptr(VnNlLink) vlan = NULL;
    g_autoptr(VnNlLink) want = NULL;

    if (!phys)
        return FALSE;
    if (!seg->vlan)
        return uplink_attach(h, bridge, phys, error);
    g_autofree char *vname = vn_net_vlan_name(rtnl_link_get_name(phys), seg->vlan);
    if (!(vlan = vlan_ensure(h, phys, vname, seg->vlan, seg->network_id, seg_mtu(h, seg), error)))
        return FALSE;
    if (!(rtnl_link_get_flags(phys) & IFF_UP)) {
        want = rtnl_link_alloc();
        rtnl_link_set_flags(want, IFF_UP);
        if (!link_change(h, phys, want, "bringing up", error))
            return FALSE;
    }
    return uplink_attach(h, bridge, vlan, error);
}

char *vn_net_acquire(VnNetHost *h, const VnNetSegment *seg, const char *holder, GError **error)
{
    g_autofree char *name = vn_net_bridge_name(seg->network_id);
    g_autoptr(VnNlLink) before = NULL;
    g_autoptr(VnNlLink) bridge = NULL;
    g_autoptr(VnNlLink) phys = NULL;
    gboolean ok;

    g_mutex_lock(&h->lock);
    phys = physical(h, seg, error);
    before = phys ? link_get(h, name, NULL) : NULL;
    bridge = phys ? bridge_ensure(h, name, seg->network_id, seg_mtu(h, seg), error) : NULL;
    ok = bridge && uplink_ensure(h, seg, bridge, error) &&
         bridge_finish(h, name, seg_mtu(h, seg), error);
    if (ok) {
        GHashTable *set = g_hash_table_lookup(h->uses, seg->network_id);
        if (!set) {
            set = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
            g_hash_table_insert(h->uses, g_strdup(seg->network_id), set);
        }
        g_hash_table_add(set, g_strdup(holder));
    } else if (bridge && !before && !g_hash_table_lookup(h->uses, seg->network_id)) {
        /* a bridge this call made is not left behind half set up */
        bridge_remove(h, bridge);
    }
    g_mutex_unlock(&h->lock);
    if (!ok) {
        g_prefix_error(error, "network %s: ", seg->network_id);
        return NULL;
    }
    return g_steal_pointer(&name);
}

/* Removes the bridge of @network_id when nothing uses it; with the lock held. */
static gboolean remove_if_unused(VnNetHost *h, const char *network_id)
{
    g_autofree char *name = vn_net_bridge_name(network_id);
    g_autoptr(VnNlLink) bridge = link_get(h, name, NULL);
    guint others;

    if (!bridge || !ours(bridge, network_id) || g_hash_table_lookup(h->uses, network_id))
        return FALSE;
    others = other_ports(h, bridge);
    if (others) {
        g_info("bridge %s of network %s still has %u ports: kept", name, network_id, others);
        return FALSE;
    }
    bridge_remove(h, bridge);
    return TRUE;
}

void vn_net_release(VnNetHost *h, const char *network_id, const char *holder)
{
    GHashTable *set;

    g_mutex_lock(&h->lock);
    set = g_hash_table_lookup(h->uses, network_id);
    if (set) {
        g_hash_table_remove(set, holder);
        if (g_hash_table_size(set) == 0)
            g_hash_table_remove(h->uses, network_id);
    }
    remove_if_unused(h, network_id);
    g_mutex_unlock(&h->lock);
}

guint vn_net_host_reconcile(VnNetHost *h)
{
    struct nl_cache *cache = NULL;
    g_autoptr(GPtrArray) networks = g_ptr_array_new_with_free_func(g_free);
    guint removed = 0;

    g_mutex_lock(&h->lock);
    if (rtnl_link_alloc_cache(h->sk, AF_UNSPEC, &cache) < 0) {
        g_mutex_unlock(&h->lock);
        return 0;
    }
    for (struct nl_object *o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        struct rtnl_link *l = (struct rtnl_link *)o;
        const char *type = rtnl_link_get_type(l);
        if (ours(l, NULL) && type && strcmp(type, "bridge") == 0)
            g_ptr_array_add(networks, g_strdup(rtnl_link_get_ifalias(l) + strlen(ALIAS_PREFIX)));
    }
    nl_cache_free(cache);
    for (guint i = 0; i < networks->len; i++)
        removed += remove_if_unused(h, g_ptr_array_index(networks, i)) ? 1 : 0;
    g_mutex_unlock(&h->lock);
    return removed;
}

guint vn_net_uses(VnNetHost *h, const char *network_id)
{
    GHashTable *set;
    guint n;

    g_mutex_lock(&h->lock);
    set = g_hash_table_lookup(h->uses, network_id);
    n = set ? g_hash_table_size(set) : 0;
    g_mutex_unlock(&h->lock);
    return n;
}
