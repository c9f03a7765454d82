/* Unit tests of network/bridge against the real kernel: the binary moves itself into a
 * network namespace of its own (unshare, as root), where a veth pair stands in for the
 * physical interface.  Names, bridges made, shared, adopted, repaired and removed, links
 * that are not ours left alone, and the checks before anything is made.  (VLAN
 * sub-interfaces need 8021q, which this kernel lacks: they run inside the TCG VM of
 * tests/vm.) */
#include "tests/unit/testutil.h"

#include <net/if.h>
#include <sched.h>
#include <string.h>

#include <json-c/json.h>

#include "api/json.h"
#include "network/bridge.h"

static gboolean in_netns;

static char *sh(const char *cmd)
{
    g_autofree char *out = NULL;
    g_autofree char *full = g_strdup_printf("sh -c '%s' 2>&1", cmd);
    int status = 0;

    g_spawn_command_line_sync(full, &out, NULL, &status, NULL);
    return g_steal_pointer(&out);
}

static gboolean exists(const char *dev)
{
    return if_nametoindex(dev) != 0;
}

/* `ip -j -d link show dev @dev` (sysfs shows the namespace it was mounted in, not this
 * one's); NULL when there is no such device. */
static json_object *link_info(const char *dev)
{
    g_autofree char *cmd = g_strdup_printf("ip -j -d link show dev %s", dev);
    g_autofree char *out = sh(cmd);
    json_object *a = json_tokener_parse(out);
    json_object *l = a && json_object_is_type(a, json_type_array) && json_object_array_length(a)
                         ? json_object_get(json_object_array_get_idx(a, 0))
                         : NULL;

    json_object_put(a);
    return l;
}

static char *master_of(const char *dev)
{
    g_autoptr(json_object) l = link_info(dev);
    json_object *m = l ? json_object_object_get(l, "master") : NULL;

    return m ? g_strdup(json_object_get_string(m)) : NULL;
}

static int mtu_of(const char *dev)
{
    g_autoptr(json_object) l = link_info(dev);

    return l ? json_object_get_int(json_object_object_get(l, "mtu")) : -1;
}

static void test_names(void **state)
{
    g_autofree char *b = vn_net_bridge_name("7d1f8e2c-3b4a-4c5d-9e6f-1a2b3c4d5e6f");
    g_autofree char *t = vn_net_tap_name("0e3f6b5a-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
    g_autofree char *v = vn_net_vlan_name("eth1", 100);
    g_autofree char *lv = vn_net_vlan_name("enp129s0f1np1", 4094);

    (void)state;
    assert_string_equal(b, "brq7d1f8e2c3b4");
    assert_string_equal(t, "tap0e3f6b5a1c2");
    assert_true(strlen(b) <= 14 && strlen(t) <= 14);
    assert_string_equal(v, "eth1.100");
    assert_true(strlen(lv) < IFNAMSIZ);
    assert_true(g_str_has_prefix(lv, "vl4094-"));
}

static void test_mappings(void **state)
{
    g_autoptr(GError) err = NULL;
    char *bad[] = { (char *)"physnet1", NULL };
    char *twice[] = { (char *)"p:eth0", (char *)"p:eth1", NULL };

    (void)state;
    assert_null(vn_net_host_new(bad, 1500, &err));
    assert_non_null(strstr(err->message, "physnet:interface"));
    g_clear_error(&err);
    assert_null(vn_net_host_new(twice, 1500, &err));
    assert_non_null(strstr(err->message, "mapped twice"));
}

static void test_bridges(void **state)
{
    char *maps[] = { (char *)"physnet1:vnphys0", (char *)"physnet2:vnphys2", NULL };
    g_autoptr(GError) err = NULL;
    g_autoptr(VnNetHost) h = NULL;
    VnNetSegment flat = { "net-a-0001", "physnet1", 0, 1400 };
    VnNetSegment other = { "net-b-0002", "physnet1", 0, 0 };
    VnNetSegment unknown = { "net-c", "physnet9", 0, 0 };
    VnNetSegment huge = { "net-d", "physnet1", 0, 9000 };
    g_autofree char *br = NULL;

    (void)state;
    if (!in_netns)
        skip();
    g_free(sh("ip link add vnphys0 mtu 1500 type veth peer name vnpeer0"));
    g_free(sh("ip link add vnphys2 type veth peer name vnpeer2"));
    h = vn_net_host_new(maps, 1500, &err);
    assert_non_null(h);

    /* the checks refuse before anything is made */
    assert_false(vn_net_check(h, &unknown, &err));
    assert_true(g_error_matches(err, VN_NET_ERROR, VN_NET_ERROR_INVALID));
    assert_non_null(strstr(err->message, "physnet9"));
    g_clear_error(&err);
    assert_false(vn_net_check(h, &huge, &err));
    assert_non_null(strstr(err->message, "MTU 9000"));
    g_clear_error(&err);
    assert_null(vn_net_acquire(h, &huge, "p0", &err));
    g_clear_error(&err);
    assert_false(exists("brqnetd"));

    /* made, with its MTU, IPv6 off, the uplink under it; a second use shares it */
    br = vn_net_acquire(h, &flat, "p1", &err);
    if (!br)
        fail_msg("%s", err->message);
    assert_string_equal(br, "brqneta0001");
    assert_true(exists(br));
    assert_int_equal(mtu_of(br), 1400);
    g_autofree char *m = master_of("vnphys0");
    assert_string_equal(m, br);
    g_autofree char *v6 = NULL;
    if (g_file_get_contents("/proc/sys/net/ipv6/conf/brqneta0001/disable_ipv6", &v6, NULL, NULL))
        assert_int_equal(atoi(v6), 1);
    g_autofree char *br2 = vn_net_acquire(h, &flat, "p2", &err);
    if (!br2)
        fail_msg("second use: %s", err->message);
    assert_string_equal(br2, br);
    assert_int_equal(vn_net_uses(h, "net-a-0001"), 2);
    /* the same holder again: no second use */
    g_autofree char *br2b = vn_net_acquire(h, &flat, "p2", &err);
    assert_non_null(br2b);
    assert_string_equal(br2b, br);
    assert_int_equal(vn_net_uses(h, "net-a-0001"), 2);

    /* the same physical interface cannot serve a second flat network */
    assert_null(vn_net_acquire(h, &other, "p3", &err));
    assert_true(g_error_matches(err, VN_NET_ERROR, VN_NET_ERROR_CONFLICT));
    g_clear_error(&err);
    assert_false(exists("brqnetb0002"));

    /* a guest's tap on the bridge keeps it while the agent's uses are gone */
    g_free(sh("ip tuntap add dev vntap0 mode tap && ip link set vntap0 master brqneta0001"));
    vn_net_release(h, "net-a-0001", "p1");
    vn_net_release(h, "net-a-0001", "p1"); /* twice: no effect */
    assert_int_equal(vn_net_uses(h, "net-a-0001"), 1);
    assert_true(exists(br));
    vn_net_release(h, "net-a-0001", "p2");
    assert_true(exists(br)); /* the tap is still on it */
    g_free(sh("ip link del vntap0"));
    assert_int_equal(vn_net_host_reconcile(h), 1);
    assert_false(exists(br));
    assert_true(exists("vnphys0")); /* the physical interface is only released */
    g_autofree char *m2 = master_of("vnphys0");
    assert_null(m2);

    /* a bridge that is not ours is never touched, and blocks the name */
    g_free(sh("ip link add brqneta0001 type bridge"));
    assert_null(vn_net_acquire(h, &flat, "p1", &err));
    assert_true(g_error_matches(err, VN_NET_ERROR, VN_NET_ERROR_CONFLICT));
    g_clear_error(&err);
    assert_int_equal(vn_net_host_reconcile(h), 0);
    assert_true(exists("brqneta0001"));
    g_free(sh("ip link del brqneta0001"));

    /* a bridge of ours from an earlier life, MTU drifted: adopted and repaired */
    g_free(sh("ip link add brqneta0001 mtu 1300 type bridge && "
              "ip link set brqneta0001 alias virtnode:net-a-0001"));
    g_autofree char *br3 = vn_net_acquire(h, &flat, "p1", &err);
    assert_non_null(br3);
    assert_int_equal(mtu_of("brqneta0001"), 1400);
    vn_net_release(h, "net-a-0001", "p1");
    assert_false(exists("brqneta0001"));
    /* one left by a crash with no use: removed by the reconcile */
    g_free(sh("ip link add brqneta0001 type bridge && "
              "ip link set brqneta0001 alias virtnode:net-a-0001"));
    assert_int_equal(vn_net_host_reconcile(h), 1);
    assert_false(exists("brqneta0001"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_mappings),
        cmocka_unit_test(test_bridges),
    };

    /* a network namespace of this process's own: nothing here touches the host's */
    in_netns = unshare(CLONE_NEWNET) == 0;
    if (in_netns)
        g_free(sh("ip link set lo up"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}
